"""Export from the embedded SQLite store: the Python encoders, unchanged but for CSV formula
neutralisation (the same rule the PostgreSQL COPY path applies in SQL)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from activity_logging.export import FORMULA_PREFIXES, encode_csv, encode_jsonl, export_activities
from activity_logging.export_pg import TEXT_COLUMNS
from activity_logging.schema import COLUMNS
from tests.crud_rows import make_rows, reference, seed


def _export(db: str, fmt: str) -> tuple[bytes, int]:
    out = io.BytesIO()
    result = asyncio.run(export_activities(db, out, fmt=fmt, progress=False, batch_size=7))
    return out.getvalue(), result.rows


def _cells(row: dict[str, Any]) -> list[str]:
    """A row as csv.writer writes it today: NULL empty, JSON compact, times isoformat()."""
    cells = []
    for c in COLUMNS:
        v = row[c]
        if v is None:
            cells.append("")
        elif c in ("changes", "metadata"):
            cells.append(json.dumps(v, separators=(",", ":")))
        elif c == "timestamp":
            cells.append(v.isoformat())
        else:
            cells.append(str(v))
    return cells


def test_sqlite_csv_is_the_python_encoding_with_crlf_and_compact_json(db: str) -> None:
    rows = make_rows(40)
    asyncio.run(seed(db, rows))
    data, count = _export(db, "csv")
    assert count == 40
    want = [list(COLUMNS)] + [_cells(r) for r in reference(rows, desc=False)]
    expected = io.StringIO(newline="")
    csv.writer(expected).writerows(want)
    assert data == expected.getvalue().encode()
    assert data.count(b"\r\n") == 41


def test_sqlite_jsonl_is_one_object_per_row_in_time_order(db: str) -> None:
    rows = make_rows(40)
    asyncio.run(seed(db, rows))
    data, count = _export(db, "jsonl")
    got = [json.loads(line) for line in data.splitlines()]
    assert count == len(got) == 40
    assert [list(g) for g in got] == [list(COLUMNS)] * 40
    assert [g["id"] for g in got] == [str(r["id"]) for r in reference(rows, desc=False)]


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
def test_sqlite_csv_neutralises_each_formula_character_in_every_text_column(
    db: str, prefix: str
) -> None:
    row = make_rows(1)[0]
    for column in TEXT_COLUMNS:
        row[column] = prefix + "HYPERLINK(\"http://x\")"
    asyncio.run(seed(db, [row]))
    data, _ = _export(db, "csv")
    header, values = list(csv.reader(io.StringIO(data.decode(), newline="")))
    cells = dict(zip(header, values, strict=True))
    for column in TEXT_COLUMNS:
        assert cells[column] == "'" + prefix + "HYPERLINK(\"http://x\")", column
    jsonl, _ = _export(db, "jsonl")
    assert json.loads(jsonl)["description"] == prefix + "HYPERLINK(\"http://x\")"


def test_csv_leaves_other_texts_and_non_text_columns_alone() -> None:
    row = make_rows(1)[0]
    row["description"] = "a = b, -1 later"
    row["user_agent"] = "'already quoted"
    row["activity_type"] = ""
    row["metadata"] = {"v": "=1"}
    row["process_id"] = -1
    encoded = encode_csv([tuple(row.values())]).decode()
    cells = dict(zip(COLUMNS, next(csv.reader(io.StringIO(encoded, newline=""))), strict=True))
    assert cells["description"] == "a = b, -1 later"
    assert cells["user_agent"] == "'already quoted"
    assert cells["activity_type"] == ""
    assert cells["metadata"] == '{"v":"=1"}'
    assert cells["process_id"] == "-1"
    assert json.loads(encode_jsonl([tuple(row.values())]))["metadata"] == {"v": "=1"}


def test_formula_prefixes_are_the_documented_six() -> None:
    assert FORMULA_PREFIXES == ("=", "+", "-", "@", "\t", "\r")
    assert "ip_address" not in TEXT_COLUMNS and "id" not in TEXT_COLUMNS


def test_sqlite_export_to_a_file_through_the_cli_is_unchanged(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from activity_logging.cli import main

    rows = make_rows(12)
    asyncio.run(seed(db, rows))
    target = tmp_path / "out.csv"
    assert main(["export", "--database-url", db, "--format", "csv", "-o", str(target),
                 "--no-progress"]) == 0
    assert "exported 12 rows as csv" in capsys.readouterr().err
    assert target.read_bytes() == _export(db, "csv")[0]
