"""Terminal output never carries a stored or remote value's control characters.

``cli_render.printable`` is the one escaping function; these tests pin what it escapes,
what it leaves alone, and that each verb's terminal output goes through it.
"""

from __future__ import annotations

import pytest

from activity_logging.cli_render import printable

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
