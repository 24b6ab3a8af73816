"""Retention on the embedded SQLite store: batched cleanup removes exactly the expired rows."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from activity_logging.exceptions import ConfigurationError
from activity_logging.retention import cleanup, run_cleanup, vacuum
from tests.crud_rows import BASE, make_rows, seed

NOW = BASE + timedelta(days=200)


def _ids_in(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM activity_logs")}


@pytest.mark.anyio
async def test_cleanup_deletes_exactly_the_expired_rows_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    url = f"sqlite:///{path}"
    rows = make_rows(150, step=timedelta(days=1, hours=1))  # ~156 days, ties included
    await seed(url, rows)
    cutoff = NOW - timedelta(days=90)
    expired = [r for r in rows if r["timestamp"] < cutoff]
    kept = {r["id"].hex for r in rows if r["timestamp"] >= cutoff}
    assert expired
    assert kept

    result = await cleanup(url, retention_days=90, batch_size=7, now=NOW)

    assert result.cutoff == cutoff
    assert result.deleted_rows == len(expired)
    assert result.batches == len(expired) // 7 + 1
    assert _ids_in(path) == kept
    again = await cleanup(url, retention_days=90, batch_size=7, now=NOW)
    assert again.deleted_rows == 0
    assert _ids_in(path) == kept


@pytest.mark.anyio
async def test_retention_days_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.db"
    url = f"sqlite:///{path}"
    rows = make_rows(40, step=timedelta(days=1))
    await seed(url, rows)
    monkeypatch.setenv("ACTIVITY_LOG_RETENTION_DAYS", "180")
    result = await cleanup(url, now=NOW)
    assert result.retention_days == 180
    assert _ids_in(path) == {r["id"].hex for r in rows if r["timestamp"] >= NOW - timedelta(180)}
    monkeypatch.setenv("ACTIVITY_LOG_RETENTION_DAYS", "ninety")
    with pytest.raises(ConfigurationError, match="ACTIVITY_LOG_RETENTION_DAYS"):
        await cleanup(url, now=NOW)


@pytest.mark.anyio
async def test_vacuum_runs_outside_a_transaction_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    url = f"sqlite:///{path}"
    rows = make_rows(30)
    await seed(url, rows)
    result = await vacuum(url)
    assert result.statement == "VACUUM; ANALYZE"
    assert _ids_in(path) == {r["id"].hex for r in rows}
    with contextlib.closing(sqlite3.connect(path)) as conn:  # ANALYZE ran: sqlite_stat1 now exists
        assert conn.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0] > 0


def test_blocking_wrapper_works_without_a_running_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    asyncio.run(seed(url, make_rows(10, step=timedelta(days=30))))
    result = run_cleanup(url, retention_days=100, now=NOW)
    assert result.deleted_rows == sum(
        1 for r in make_rows(10, step=timedelta(days=30)) if r["timestamp"] < NOW - timedelta(100))
    assert result.deleted_rows > 0


@pytest.mark.anyio
async def test_dry_run_counts_what_a_run_would_delete_and_deletes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    url = f"sqlite:///{path}"
    rows = make_rows(60, step=timedelta(days=3))
    await seed(url, rows)
    cutoff = NOW - timedelta(days=90)
    expired = sum(1 for r in rows if r["timestamp"] < cutoff)
    assert 0 < expired < len(rows)

    preview = await cleanup(url, retention_days=90, now=NOW, dry_run=True)

    assert (preview.dry_run, preview.deleted_rows, preview.batches) == (True, expired, 0)
    assert preview.to_dict()["dry_run"] is True
    assert _ids_in(path) == {r["id"].hex for r in rows}
    done = await cleanup(url, retention_days=90, now=NOW)
    assert (done.dry_run, done.deleted_rows) == (False, preview.deleted_rows)


@pytest.mark.anyio
async def test_progress_is_reported_per_batch_against_the_total(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    rows = make_rows(50, step=timedelta(days=4))
    await seed(url, rows)
    expired = sum(1 for r in rows if r["timestamp"] < NOW - timedelta(days=90))
    seen: list[tuple[int, int | None]] = []

    result = await cleanup(url, retention_days=90, now=NOW, batch_size=4,
                           on_progress=lambda done, total: seen.append((done, total)))

    assert seen[0] == (0, expired)
    assert seen[-1] == (expired, expired)
    assert len(seen) == result.batches + 1
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
