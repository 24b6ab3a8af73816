"""Retention on PostgreSQL: plain table (batched delete) and monthly partitions (drop/detach)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from activity_logging.retention import cleanup, vacuum
from tests.crud_rows import make_rows, seed

pytestmark = pytest.mark.integration

START = datetime(2025, 11, 20, tzinfo=UTC)
NOW = datetime(2026, 4, 15, 12, tzinfo=UTC)
# 1 row every 9 hours from 2025-11-20 to ~2026-04-05: six calendar months, Nov..Apr.
ROWS = 370
STEP = timedelta(hours=9)


async def _fetch(pg_url: str, schema: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _stored_ids(pg_url: str, schema: str) -> set[Any]:
    return {r["id"] for r in await _fetch(pg_url, schema, "SELECT id FROM activity_logs")}


async def _partitions(pg_url: str, schema: str) -> list[str]:
    rows = await _fetch(
        pg_url, schema,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'activity_logs'::regclass ORDER BY 1")
    return [r["relname"] for r in rows]


@pytest.mark.anyio
async def test_plain_table_cleanup_deletes_exactly_the_expired_rows(
    pg_url: str, pg_schema: str
) -> None:
    rows = make_rows(ROWS, start=START, step=STEP)
    await seed(pg_url, rows, schema=pg_schema)
    cutoff = NOW - timedelta(days=90)
    expired = sum(1 for r in rows if r["timestamp"] < cutoff)
    assert 0 < expired < ROWS

    result = await cleanup(pg_url, schema=pg_schema, retention_days=90, batch_size=50, now=NOW)

    assert result.deleted_rows == expired
    assert result.batches == expired // 50 + 1
    assert result.dropped_partitions == []
    assert await _stored_ids(pg_url, pg_schema) == {
        r["id"] for r in rows if r["timestamp"] >= cutoff}


@pytest.mark.anyio
@pytest.mark.parametrize("detach", [False, True])
async def test_partitioned_cleanup_removes_whole_months_then_the_boundary_rows(
    pg_url: str, pg_schema: str, detach: bool
) -> None:
    rows = make_rows(ROWS, start=START, step=STEP)
    await seed(pg_url, rows, schema=pg_schema, partitioned=True)
    before = await _partitions(pg_url, pg_schema)
    assert "activity_logs_p202511" in before
    assert "activity_logs_p202604" in before
    cutoff = NOW - timedelta(days=90)  # 2026-01-15 12:00: Nov and Dec go whole, Jan in part

    result = await cleanup(pg_url, schema=pg_schema, retention_days=90, batch_size=1000,
                           detach=detach, now=NOW, months_ahead=3)

    removed = result.detached_partitions if detach else result.dropped_partitions
    assert removed == ["activity_logs_p202511", "activity_logs_p202512"]
    in_january_before_cutoff = sum(
        1 for r in rows if datetime(2026, 1, 1, tzinfo=UTC) <= r["timestamp"] < cutoff)
    assert in_january_before_cutoff > 0
    assert result.deleted_rows == in_january_before_cutoff
    assert await _stored_ids(pg_url, pg_schema) == {
        r["id"] for r in rows if r["timestamp"] >= cutoff}
    after = await _partitions(pg_url, pg_schema)
    assert "activity_logs_p202511" not in after
    assert "activity_logs_p202607" in after  # three months ahead of April
    leftover = await _fetch(pg_url, pg_schema,
                            "SELECT to_regclass('activity_logs_p202511') IS NOT NULL AS t")
    assert leftover[0]["t"] is detach  # detached partitions stay as tables, for archiving


@pytest.mark.anyio
async def test_partitioned_dry_run_lists_and_counts_and_changes_nothing(
    pg_url: str, pg_schema: str
) -> None:
    rows = make_rows(ROWS, start=START, step=STEP)
    await seed(pg_url, rows, schema=pg_schema, partitioned=True)
    before = await _partitions(pg_url, pg_schema)
    cutoff = NOW - timedelta(days=90)

    preview = await cleanup(pg_url, schema=pg_schema, retention_days=90, now=NOW,
                            months_ahead=3, dry_run=True)

    assert preview.dry_run is True
    assert preview.dropped_partitions == ["activity_logs_p202511", "activity_logs_p202512"]
    assert preview.deleted_rows == sum(1 for r in rows if r["timestamp"] < cutoff)
    assert preview.created_partitions == [
        p for p in ("activity_logs_p202604", "activity_logs_p202605", "activity_logs_p202606",
                    "activity_logs_p202607") if p not in before]
    assert await _partitions(pg_url, pg_schema) == before
    assert await _stored_ids(pg_url, pg_schema) == {r["id"] for r in rows}


@pytest.mark.anyio
async def test_vacuum_analyze_runs_outside_a_transaction(pg_url: str, pg_schema: str) -> None:
    await seed(pg_url, make_rows(50), schema=pg_schema)
    result = await vacuum(pg_url, schema=pg_schema)
    assert result.statement == 'VACUUM (ANALYZE) "activity_logs"'
    stats = await _fetch(
        pg_url, pg_schema,
        "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables "
        "WHERE relid = 'activity_logs'::regclass")
    assert stats[0]["last_vacuum"] is not None
    assert stats[0]["last_analyze"] is not None
