"""Export of 100,000 PostgreSQL rows matches the table row for row, as JSON lines and CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import asyncpg
import pytest

from activity_logging.cli import main
from activity_logging.schema import COLUMNS
from tests.crud_rows import BASE, seed, seed_sql

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
                ["" if v is None else
                 json.dumps(v, separators=(",", ":")) if c in ("changes", "metadata") else str(v)
                 for c, v in zip(COLUMNS, row, strict=True)]
                for row in want
            ]
            assert got_rows == as_text


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
