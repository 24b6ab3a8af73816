"""Export from PostgreSQL (the COPY path, ``export_pg``): the table row for row, the Python
encoders' content for every filter, order, no rows, formula neutralisation, write errors."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import asyncpg
import pytest

from activity_logging.cli import main
from activity_logging.crud import ActivityFilter, activity_log_crud
from activity_logging.db import read_connection
from activity_logging.exceptions import StoreUnavailableError
from activity_logging.export import encode_csv, encode_jsonl, export_activities
from activity_logging.export_pg import TEXT_COLUMNS
from activity_logging.schema import COLUMNS
from tests.crud_rows import BASE, make_rows, seed, seed_sql

pytestmark = pytest.mark.integration

N = 100_000


def _expected(value: Any, column: str) -> Any:
    """A table value as the export writes it (before CSV turns everything into text)."""
    if value is None:
        return None
    if column == "id" or column == "ip_address":
        return str(value)
    if column == "timestamp":
        return value.isoformat()
    if column in ("changes", "metadata"):
        return json.loads(value)
    return value


@pytest.mark.anyio
async def test_export_100k_rows_matches_the_table_in_both_formats(
    pg_url: str, pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
    try:
        await seed_sql(conn, N, step=timedelta(seconds=3))
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        table = await conn.fetch(f'SELECT {cols} FROM activity_logs ORDER BY "timestamp", id')
    finally:
        await conn.close()
    assert len(table) == N
    want = [[_expected(row[c], c) for c in COLUMNS] for row in table]
    del table
    assert len({row[0] for row in want}) == N  # row for row then means each row exactly once

    for fmt in ("jsonl", "csv"):
        path = tmp_path / f"export.{fmt}"
        argv = ["export", "--database-url", pg_url, "--schema", pg_schema, "--format", fmt,
                "-o", str(path), "--no-progress", "--batch-size", "7000"]
        code = await anyio.to_thread.run_sync(main, argv)
        assert code == 0
        assert f"exported {N} rows" in capsys.readouterr().err
        text = path.read_text(encoding="utf-8")
        if fmt == "jsonl":
            got = [[rec[c] for c in COLUMNS] for rec in map(json.loads, text.splitlines())]
            assert got == want
        else:
            reader = csv.reader(io.StringIO(text, newline=""))
            assert next(reader) == list(COLUMNS)
            got_rows = list(reader)
            assert len(got_rows) == N
            as_text = [
                [None if v is None else v if c in ("changes", "metadata") else str(v)
                 for c, v in zip(COLUMNS, row, strict=True)]
                for row in want
            ]
            # JSON cells are jsonb's text ({"a": 1}): compared as values
            assert [[json.loads(v) if c in ("changes", "metadata") and v else v or None
                     for c, v in zip(COLUMNS, row, strict=True)]
                    for row in got_rows] == as_text


@pytest.mark.anyio
async def test_export_window_and_filters_select_exactly_the_matching_rows(
    pg_url: str, pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
    try:
        await seed_sql(conn, 5000, step=timedelta(minutes=1), actors=7)
        want = [str(r["id"]) for r in await conn.fetch(
            "SELECT id FROM activity_logs WHERE actor_id = 'agent-3' AND severity = 'error' "
            "AND \"timestamp\" >= $1 AND \"timestamp\" < $2 ORDER BY \"timestamp\", id",
            BASE + timedelta(hours=10), BASE + timedelta(hours=40))]
    finally:
        await conn.close()
    path = tmp_path / "w.jsonl"
    code = await anyio.to_thread.run_sync(main, [
        "export", "--database-url", pg_url, "--schema", pg_schema, "-o", str(path),
        "--since", (BASE + timedelta(hours=10)).isoformat(),
        "--until", (BASE + timedelta(hours=40)).isoformat(),
        "--actor-id", "agent-3", "--severity", "error"])
    capsys.readouterr()
    assert code == 0
    got = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert want
    assert got == want
    assert datetime.fromisoformat(json.loads(path.read_text().splitlines()[0])["timestamp"]) >= (
        BASE + timedelta(hours=10))


# --- the COPY path against the Python encoders, on the same rows ------------------------------

FORMULAS = ("=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx")


def _odd_rows() -> list[dict[str, Any]]:
    """Rows with the values encoders disagree on: quotes, commas, newlines, backslashes, unicode,
    empty texts, whole seconds, IPv6, nested JSON with escapes, and each formula character."""
    rows = make_rows(60)
    for i, row in enumerate(rows):
        row["timestamp"] = row["timestamp"] + timedelta(microseconds=(i * 12_345) % 1_000_000
                                                        if i % 3 else 0)
        row["description"] = ["say \"hi\", then\nleave", "back\\slash\\n", "ünï😀 100%", "",
                              FORMULAS[i % len(FORMULAS)], None][i % 6]
        row["user_agent"] = FORMULAS[i % len(FORMULAS)] if i % 2 else "Mozilla/5.0 (X11)"
        row["ip_address"] = ["10.0.0.1", "2001:db8::1", None][i % 3]
        row["metadata"] = {"quote": 'a"b', "nl": "x\ny", "bs": "c:\\d", "n": [1, 2.5, None],
                           "u": "é", "deep": {"k": True}}
    return rows


async def _reference(url: str, schema: str, fmt: str, filters: ActivityFilter | None) -> bytes:
    """Today's Python path: the server-side cursor and ``export.encode_*`` on the same rows."""
    parts = [encode_csv([], header=True)] if fmt == "csv" else []
    encode = encode_jsonl if fmt == "jsonl" else encode_csv
    async with read_connection(url, schema=schema) as conn:
        async for batch in activity_log_crud.iter_batches(conn, filters, batch_size=1000):
            parts.append(encode(batch))
    return b"".join(parts)


async def _copy_export(url: str, schema: str, fmt: str,
                       filters: ActivityFilter | None = None) -> tuple[bytes, int]:
    out = io.BytesIO()
    result = await export_activities(url, out, fmt=fmt, filters=filters, schema=schema,
                                     progress=False)
    return out.getvalue(), result.rows


def _parsed(data: bytes, fmt: str) -> list[Any]:
    """The values, with the JSON cells parsed (the COPY path writes jsonb's spacing)."""
    text = data.decode("utf-8")
    if fmt == "jsonl":
        return [list(json.loads(line).items()) for line in text.splitlines()]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return [rows[0]] + [
        [json.loads(v) if c in ("changes", "metadata") and v else v
         for c, v in zip(COLUMNS, row, strict=True)] for row in rows[1:]]


FILTERS = [
    None,
    ActivityFilter(start=BASE + timedelta(hours=2), end=BASE + timedelta(hours=9)),
    ActivityFilter(end=(BASE + timedelta(hours=3)).replace(tzinfo=None)),  # naive is UTC
    ActivityFilter(activity_type=("call_created",)),
    ActivityFilter(activity_type=("call_created", "agent_login")),
    ActivityFilter(actor_type="agent", actor_id="a1"),
    ActivityFilter(target_type="call", target_id="c2"),
    ActivityFilter(request_id="req-3"),
    ActivityFilter(severity=("error", "warning")),
    ActivityFilter(text="SLASH\\"),
    ActivityFilter(text="%"),
    ActivityFilter(producer_id="prod-a", severity=("info",), activity_type=("call_ended",)),
    ActivityFilter(actor_id="'; DROP TABLE activity_logs; --"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_copy_export_has_the_python_encoders_content_for_every_filter(
    pg_url: str, pg_schema: str, fmt: str
) -> None:
    rows = _odd_rows()
    await seed(pg_url, rows, schema=pg_schema)
    counts: list[int] = []
    for filters in FILTERS:
        want = _parsed(await _reference(pg_url, pg_schema, fmt, filters), fmt)
        got, count = await _copy_export(pg_url, pg_schema, fmt, filters)
        assert _parsed(got, fmt) == want, filters
        assert count == len(want) - (fmt == "csv")
        counts.append(count)
    assert counts[0] == len(rows) and counts[-1] == 0
    assert all(0 < n < len(rows) for n in counts[1:-1]), str(counts)
    everything = _parsed((await _copy_export(pg_url, pg_schema, "jsonl"))[0], "jsonl")
    assert [dict(r)["id"] for r in everything] == [str(r["id"]) for r in sorted(
        rows, key=lambda r: (r["timestamp"], r["id"]))]  # (timestamp, id) order, ties included


@pytest.mark.anyio
async def test_copy_export_writes_timestamps_as_python_isoformat(pg_url: str, pg_schema: str
                                                                 ) -> None:
    rows = make_rows(3)
    rows[0]["timestamp"] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows[1]["timestamp"] = datetime(2026, 1, 2, 3, 4, 6, 120_000, tzinfo=UTC)
    rows[2]["timestamp"] = datetime(2026, 1, 2, 3, 4, 7, 5, tzinfo=UTC)
    await seed(pg_url, rows, schema=pg_schema)
    got, _ = await _copy_export(pg_url, pg_schema, "jsonl")
    assert [json.loads(line)["timestamp"] for line in got.splitlines()] == [
        "2026-01-02T03:04:05+00:00", "2026-01-02T03:04:06.120000+00:00",
        "2026-01-02T03:04:07.000005+00:00"]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_copy_export_of_no_rows_is_empty_or_just_the_header(
    pg_url: str, pg_schema: str, fmt: str
) -> None:
    await seed(pg_url, make_rows(5), schema=pg_schema)
    got, count = await _copy_export(pg_url, pg_schema, fmt, ActivityFilter(actor_id="nobody"))
    assert count == 0
    assert got == (b"" if fmt == "jsonl" else ",".join(COLUMNS).encode() + b"\n")


@pytest.mark.anyio
@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
async def test_copy_csv_neutralises_each_formula_character_in_every_text_column(
    pg_url: str, pg_schema: str, prefix: str
) -> None:
    row = make_rows(1)[0]
    text_columns = sorted(TEXT_COLUMNS)
    for column in text_columns:
        row[column] = prefix + "cmd|' /C calc'!A0"
    await seed(pg_url, [row], schema=pg_schema)
    got, _ = await _copy_export(pg_url, pg_schema, "csv")
    header, values = list(csv.reader(io.StringIO(got.decode(), newline="")))
    cells = dict(zip(header, values, strict=True))
    for column in text_columns:
        assert cells[column] == "'" + prefix + "cmd|' /C calc'!A0", column
    assert cells["metadata"] == json.dumps(row["metadata"])  # JSON cells are left alone
    jsonl, _ = await _copy_export(pg_url, pg_schema, "jsonl")
    assert json.loads(jsonl)["user_agent"] == prefix + "cmd|' /C calc'!A0"  # JSON lines too
    ref = await _reference(pg_url, pg_schema, "csv", None)
    assert _parsed(got, "csv") == _parsed(ref, "csv")  # the SQLite encoder does the same


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_copy_export_write_error_passes_through_as_it_is(
    pg_url: str, pg_schema: str, fmt: str
) -> None:
    await seed(pg_url, make_rows(50), schema=pg_schema)
    with pytest.raises(OSError, match="No space left") as exc:
        await export_activities(pg_url, _FullDisk(), fmt=fmt, schema=pg_schema,  # type: ignore[arg-type]
                                progress=False)
    assert not isinstance(exc.value, StoreUnavailableError)
    assert exc.value.errno == errno.ENOSPC


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_copy_export_to_a_full_disk_exits_1_naming_the_output(
    pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(pg_url, make_rows(50), schema=pg_schema))
    code = main(["export", "--database-url", pg_url, "--schema", pg_schema, "-o", "/dev/full",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot reach" not in err
    assert "cannot write" in err and "/dev/full" in err


def test_copy_export_to_a_closed_stdout_is_quiet(pg_url: str, pg_schema: str) -> None:
    asyncio.run(seed(pg_url, make_rows(2000), schema=pg_schema))
    with subprocess.Popen(
        [sys.executable, "-m", "activity_logging", "export", "--database-url", pg_url,
         "--schema", pg_schema],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2],
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 141
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "cannot reach" not in err


@pytest.mark.anyio
async def test_copy_export_progress_reaches_the_row_count(pg_url: str, pg_schema: str) -> None:
    await seed(pg_url, make_rows(300), schema=pg_schema)
    stream = io.StringIO()
    result = await export_activities(pg_url, io.BytesIO(), schema=pg_schema, progress=True,
                                     progress_stream=stream)
    assert result.rows == 300
    last = stream.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("[" + "#" * 30 + "] 300/300 rows 100.0%")
    assert last.endswith(" rows/s\n")
