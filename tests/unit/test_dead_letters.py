"""Dead letters on the embedded store: written durably and idempotently, bounded, read by the CLI."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from activity_logging import dead_letters
from activity_logging.db import init_db, read_connection
from activity_logging.dead_letters import DeadLetter, DeadLetterWriter
from activity_logging.entry_limits import MAX_EXCERPT_BYTES
from activity_logging.worker import ActivityWorker
from activity_logging.worker_stream import _Batch, _Reject
from tests.cli_run import run


def letter(i: int, *, reason: str = "malformed", age_days: float = 0, **kw: Any) -> DeadLetter:
    return DeadLetter(
        reason=reason, source_stream="s", source_id=f"{i}-0", position=kw.pop("position", 0),
        error=kw.pop("error", f"EntryFormatError: bad {i}"), attempts=1,
        record=kw.pop("record", orjson.dumps({"id": f"r{i}"}).decode()), record_bytes=20,
        record_sha256="0" * 64, record_id=f"r{i}", consumer="w1",
        dead_at=datetime.now(UTC) - timedelta(days=age_days), **kw)


async def _count(url: str) -> int:
    async with read_connection(url) as conn:
        return await dead_letters.count(conn)


def test_written_letters_are_kept_once_and_the_table_made_when_missing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dl.db'}"

    async def go() -> tuple[int, int, int]:
        writer = DeadLetterWriter(url)
        try:
            first = await writer.write([letter(1), letter(2), letter(2, position=1)])
            again = await writer.write([letter(1), letter(2)])  # a retry after a failed XACK
        finally:
            await writer.close()
        return first, again, await _count(url)

    assert asyncio.run(go()) == (3, 0, 3)


def test_an_error_and_an_excerpt_are_bounded_and_nul_free(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dl.db'}"
    long = letter(1, error="x\x00" * 100_000, record="y" * 1_000_000)

    async def go() -> dict[str, Any] | None:
        writer = DeadLetterWriter(url)
        try:
            await writer.write([long])
        finally:
            await writer.close()
        async with read_connection(url) as conn:
            (row,) = await dead_letters.fetch(conn)
            return await dead_letters.get(conn, row["id"])

    got = asyncio.run(go())
    assert got is not None
    assert len(got["error"]) == dead_letters.MAX_ERROR_CHARS and "\x00" not in got["error"]
    assert len(got["record"]) == MAX_EXCERPT_BYTES


def test_purge_deletes_by_age_then_keeps_the_newest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dl.db'}"

    async def go() -> tuple[int, int, list[str]]:
        writer = DeadLetterWriter(url, max_age_days=1e5)  # no purge of its own here
        try:
            await writer.write([letter(i, age_days=40 if i < 3 else 0) for i in range(10)])
        finally:
            await writer.close()
        async with read_connection(url) as conn:
            by_age = await dead_letters.purge(conn, older_than=timedelta(days=30))
        async with read_connection(url) as conn:
            by_count = await dead_letters.purge(conn, keep=4)
        async with read_connection(url) as conn:
            left = [row["source_id"] for row in await dead_letters.fetch(conn)]
        return by_age, by_count, left

    assert asyncio.run(go()) == (3, 3, ["9-0", "8-0", "7-0", "6-0"])


def test_the_writer_bounds_the_table_itself_when_it_may(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dl.db'}"

    async def go() -> int:
        writer = DeadLetterWriter(url, max_rows=5, purge_interval=0)
        try:
            for i in range(12):
                await writer.write([letter(i)])
        finally:
            await writer.close()
        return await _count(url)

    assert asyncio.run(go()) == 5


def test_init_db_creates_the_dead_letter_table(tmp_path: Path) -> None:
    path = tmp_path / "init.db"
    asyncio.run(init_db(f"sqlite:///{path}"))
    conn = sqlite3.connect(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"activity_logs", dead_letters.DEAD_LETTER_TABLE} <= tables


@pytest.fixture
def letters_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    asyncio.run(init_db(url))

    async def fill() -> None:
        writer = DeadLetterWriter(url, max_age_days=1e5)  # no purge of its own here
        try:
            await writer.write([letter(i, reason="oversized" if i % 2 else "malformed",
                                       age_days=60 if i == 0 else 0,
                                       record="\x1b]0;owned\x07" if i == 3 else "{}")
                                for i in range(6)])
        finally:
            await writer.close()

    asyncio.run(fill())
    return url


def test_cli_lists_counts_shows_and_purges(letters_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["dead-letters", "count", "--database-url", letters_db, "--json"], capsys)
    assert (code, orjson.loads(out)) == (0, {"count": 6})

    code, out, err = run(["dead-letters", "list", "--database-url", letters_db, "--json",
                          "--reason", "oversized"], capsys)
    listed = orjson.loads(out)
    assert code == 0 and [r["source_id"] for r in listed] == ["5-0", "3-0", "1-0"]
    assert all("record" not in r for r in listed)

    code, out, err = run(["dead-letters", "list", "--database-url", letters_db, "--limit", "2"],
                         capsys)
    assert code == 0 and "REASON" in out and "more: --before-id" in err

    shown_id = next(r["id"] for r in listed if r["source_id"] == "3-0")
    code, out, _ = run(["dead-letters", "show", str(shown_id), "--database-url", letters_db],
                       capsys)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "owned" in out
    code, out, _ = run(["dead-letters", "show", str(shown_id), "--database-url", letters_db,
                        "--json"], capsys)
    assert orjson.loads(out)["record"] == "\x1b]0;owned\x07"  # JSON carries it escaped, intact

    code, _, err = run(["dead-letters", "show", "999", "--database-url", letters_db], capsys)
    assert code == 1 and "no dead letter" in err

    code, out, _ = run(["dead-letters", "purge", "--database-url", letters_db, "--json"], capsys)
    assert (code, orjson.loads(out)) == (0, {"deleted": 1})  # the one 60 days old (default 30)
    code, out, _ = run(["dead-letters", "purge", "--database-url", letters_db, "--keep", "2",
                        "--older-than", "1000d", "--json"], capsys)
    assert (code, orjson.loads(out)) == (0, {"deleted": 3})
    code, _, err = run(["dead-letters", "purge", "--database-url", letters_db,
                        "--older-than", "2999-01-01"], capsys)
    assert code == 2 and "future" in err


def test_cli_on_a_missing_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["dead-letters", "count", "--database-url",
                        f"sqlite:///{tmp_path / 'nope.db'}"], capsys)
    assert code == 1 and "does not exist" in err


class _FlakyWriter(DeadLetterWriter):
    """Fails ``failures`` times (the database away), then keeps what it is given."""

    def __init__(self, failures: int) -> None:
        super().__init__("sqlite:///unused.db")
        self.failures = failures
        self.kept: list[DeadLetter] = []

    async def write(self, letters: Sequence[DeadLetter]) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("server closed the connection")
        self.kept += letters
        return len(letters)


@pytest.mark.anyio
async def test_dead_letters_are_retried_until_written_never_dropped() -> None:
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s")
    flaky = _FlakyWriter(failures=2)
    worker.dead_letter_writer = flaky
    batch = _Batch(worker.shards[0], ids=[b"1-0"], rejects=[
        _Reject(0, b'{"id": "x"}', "EntryFormatError: x", 1, reason="malformed", position=0)])
    await worker._write_dead_letters(batch)
    assert [letter.source_id for letter in flaky.kept] == ["1-0"]
    assert worker.stats()["retried"] == 2 and worker.stats()["dead_lettered"] == 1
