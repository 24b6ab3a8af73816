"""Terminal output never carries a stored or remote value's control characters.

``cli_render.printable`` is the one escaping function; these tests pin what it escapes,
what it leaves alone, and that each verb's terminal output goes through it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from activity_logging.cli_common import report_database_error
from activity_logging.cli_render import json_printable, printable, render_sequence_report
from activity_logging.crud import ProducerSequence
from tests.cli_run import run
from tests.crud_rows import make_rows, seed

#: One of each kind a terminal acts on or hides: CSI colour, OSC title, BEL, C1 CSI,
#: NUL, DEL, CR/LF/TAB, the bidi override/isolates/marks, separators, invisible formats.
HOSTILE = (
    "\x1b[31m", "\x1b]0;owned\x07", "\x07", "\x9b2J", "\x00", "\x7f", "\r", "\n", "\t",
    "\x85", "\u202e", "\u202a", "\u2066", "\u2069", "\u200e", "\u200f", "\u061c",
    "\u2028", "\u2029", "\u200b", "\u2060", "\ufeff", "\ufff9", "\ud800",
)


def _is_safe(text: str) -> bool:
    return all(
        not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E
             or 0x2066 <= ord(c) <= 0x2069 or c in "\u061c\u200b\u200e\u200f\u2028\u2029"
             "\u2060\ufeff\ufff9" or 0xD800 <= ord(c) <= 0xDFFF)
        for c in text
    )


@pytest.mark.parametrize("bad", HOSTILE)
def test_printable_escapes_each_dangerous_character(bad: str) -> None:
    out = printable(f"a{bad}b")
    assert _is_safe(out)
    assert out.startswith("a") and out.endswith("b") and "\\" in out


def test_printable_shows_the_escapes_readably() -> None:
    assert printable("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("x\u202eevil") == "x\\u202eevil"
    assert printable("\x9b\x7f") == "\\x9b\\x7f"


@pytest.mark.parametrize("text", [
    "", "plain ascii ~!@#$%^&*()", "héllo wörld", "日本語のテキスト", "Ωμέγα", "עברית",
    "العربية", "👨\u200d👩\u200d👧 family",
    "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "C:\\Users\\x", "non\xa0breaking",
])
def test_printable_leaves_ordinary_text_alone(text: str) -> None:
    assert printable(text) == text


def test_printable_returns_the_same_object_for_clean_ascii() -> None:
    text = "user:42 updated call 7"
    assert printable(text) is text


def test_printable_output_always_encodes() -> None:
    # A lone surrogate would make print() raise UnicodeEncodeError on a UTF-8 stdout.
    printable("x\udcff\ud800y").encode("utf-8")


# --- JSON output: the same value, nothing a terminal acts on --------------------------------

#: What JSON leaves raw in a string and a terminal may act on (C0 is JSON's own business).
RAW_IN_JSON = "\x7f\x85\x9b\u061c\u200b\u200e\u200f\u2028\u2029\u202a\u202e\u2060\u2066\u2069\ufeff"


def _json_is_safe(text: str) -> bool:
    return _is_safe(text.replace("\n", "")) and not any(c in text for c in RAW_IN_JSON)


_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
            | st.text(st.characters(exclude_categories=["Cs"])))


@given(st.recursive(
    _SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20))
@example({"\x7f": None})  # DEL is ASCII: the fast path once let it through raw
def test_json_printable_is_the_same_json(value: Any) -> None:
    for option in (0, orjson.OPT_INDENT_2):
        text = orjson.dumps(value, option=option).decode()
        safe = json_printable(text)
        assert json.loads(safe) == value
        assert _json_is_safe(safe)


def test_json_printable_escapes_what_orjson_leaves_raw() -> None:
    text = orjson.dumps({"k": f"a{RAW_IN_JSON}b\x1b"}).decode()
    assert any(c in text for c in RAW_IN_JSON)  # orjson leaves them raw
    safe = json_printable(text)
    assert _json_is_safe(safe)
    assert "\\u202e" in safe and "\\u009b" in safe and "\\u001b" in safe
    ascii_text = '{"a": 1}'
    assert json_printable(ascii_text) is ascii_text


# --- every verb's terminal output -------------------------------------------------------------

EVIL = "\x1b[31mred\x1b[0m\x07\x1b]0;title\x07\x9b2J\u202eevil\u2066x\u2069\r\nFAKE LINE\x7f"


def _hostile_rows() -> list[dict[str, Any]]:
    rows = make_rows(3)
    for r in rows:
        r.update(activity_type=f"t{EVIL}", description=f"d{EVIL}", actor_id=f"a{EVIL}",
                 target_id=f"c{EVIL}", user_agent=EVIL, producer_id=f"p{EVIL}",
                 changes={f"f{EVIL}": {"old": EVIL, "new": "x"}}, metadata={"m": EVIL})
    return rows


@pytest.fixture
def hostile_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    asyncio.run(seed(url, _hostile_rows()))
    return url


def _assert_terminal_safe(text: str) -> None:
    assert _is_safe(text.replace("\n", "")), repr(text)
    assert "\nFAKE LINE" not in text


@pytest.mark.parametrize("extra", [[], ["--show-changes"], ["--summary", "3650"]])
def test_query_table_escapes_stored_values(
    hostile_db: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["query", "--database-url", hostile_db, *extra], capsys)
    assert code == 0, err
    _assert_terminal_safe(out + err)
    assert "t\\x1b[31mred" in out
    if extra == ["--show-changes"]:  # the last column is never cut
        assert "\\u202eevil" in out


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_query_json_is_exact_and_terminal_safe(
    hostile_db: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["query", "--database-url", hostile_db, "--format", fmt], capsys)
    assert code == 0, err
    assert _json_is_safe(out)
    records = ([json.loads(line) for line in out.splitlines()] if fmt == "jsonl"
               else json.loads(out))
    assert len(records) == 3
    assert all(r["description"] == f"d{EVIL}" and r["actor_id"] == f"a{EVIL}" for r in records)


def test_query_summary_json_is_terminal_safe(
    hostile_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for fmt in ("json", "jsonl"):
        code, out, _ = run(["query", "--database-url", hostile_db, "--summary", "3650",
                            "--format", fmt], capsys)
        assert code == 0
        assert _json_is_safe(out)
        summary = json.loads(out.splitlines()[0] if fmt == "jsonl" else out)
        assert summary["by_type"] == {f"t{EVIL}": 3}


def test_verify_escapes_producer_ids(
    hostile_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _code, out, err = run(["verify", "--database-url", hostile_db], capsys)
    _assert_terminal_safe(out + err)
    assert "\\x1b[31mred" in out
    _code, out, err = run(["verify", "--database-url", hostile_db, "--json"], capsys)
    assert _json_is_safe(out)


def test_render_sequence_report_escapes_producer_ids() -> None:
    report = render_sequence_report(
        [ProducerSequence(f"p{EVIL}", rows=3, first_seq=1, last_seq=4, missing=1,
                          duplicates=0, gaps=[(2, 2)])], max_gaps=5)
    _assert_terminal_safe(report)
    assert report.splitlines()[1].startswith("p\\x1b[31mred")


def test_status_text_escapes_what_it_prints(
    hostile_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _code, out, err = run(["status", "--database-url", hostile_db], capsys)
    _assert_terminal_safe(out + err)


def test_a_database_error_line_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    code = report_database_error("query", sqlite3.OperationalError(f"near {EVIL}: syntax error"))
    err = capsys.readouterr().err
    assert code == 1
    _assert_terminal_safe(err)
    assert "near \\x1b[31mred" in err
