"""Query latency and plans on a 1,000,000-row PostgreSQL table (not a test: run by hand).

    .venv/bin/python benchmarks/bench_queries.py [--rows 1000000] [--runs 30] [--keep SCHEMA]

Seeds a private schema with ``generate_series`` (rows spread over 90 days, 500 actors),
ANALYZEs it, then for each query of ``activity_log_crud`` prints the median and p95 latency
of the real call (SQLAlchemy AsyncSession over asyncpg) and the essence of its
``EXPLAIN (ANALYZE, BUFFERS)`` plan. The schema is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activity_logging.crud import ActivityFilter, activity_log_crud, build_select
from activity_logging.db import create_async_engine_for, init_db
from tests.crud_rows import BASE, seed_sql

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPAN = timedelta(days=90)


async def explain(conn: asyncpg.Connection, stmt: Any, dialect: Any) -> list[str]:
    compiled = stmt.compile(dialect=dialect)
    params = compiled.construct_params()
    args = [params[name] for name in compiled.positiontup]
    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), *args)
    return [r[0] for r in plan]


def essence(plan: list[str]) -> list[str]:
    keep = ("Scan", "Index Cond", "Filter", "Sort", "Limit", "Aggregate", "Execution Time",
            "Rows Removed", "Buffers", "Heap Fetches", "Recheck")
    return [line for line in plan if any(k in line for k in keep)][:14]


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float, int]:
    samples = []
    n = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await fn()
        samples.append((time.perf_counter() - t0) * 1000)
        n = len(result) if isinstance(result, list) else 1
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", help="reuse/keep this schema (seeded once)")
    args = parser.parse_args()
    schema = args.keep or f"bench_q_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await init_db(PG_URL, schema=schema)
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    engine = create_async_engine_for(PG_URL, schema=schema)
    try:
        if await conn.fetchval("SELECT count(*) FROM activity_logs") < args.rows:
            t0 = time.perf_counter()
            step = SPAN / args.rows
            await seed_sql(conn, args.rows, step=step, actors=500)
            await conn.execute("ANALYZE activity_logs")
            print(f"seeded {args.rows:,} rows in {time.perf_counter() - t0:.1f} s "
                  f"(schema {schema})")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('activity_logs'))")
        print(f"table + indexes: {size}; PostgreSQL "
              f"{await conn.fetchval('SHOW server_version')}\n")
        day = BASE + timedelta(days=45)
        deep = BASE + SPAN / 2  # a cursor half-way down: ~500,000 rows deep
        deep_cursor = None
        async with AsyncSession(engine) as db:
            first = await activity_log_crud.get_activities_by_date_range(
                db, deep, deep + timedelta(minutes=5), limit=1)
            deep_cursor = first[0].cursor
        cases: list[tuple[str, Any, Callable[[AsyncSession], Awaitable[Any]]]] = [
            ("recent 100",
             build_select(ActivityFilter(), limit=101),
             lambda db: activity_log_crud.get_recent_activities(db, limit=100)),
            ("recent 100, page ~500k rows deep (keyset)",
             build_select(ActivityFilter(), cursor=deep_cursor, limit=101),
             lambda db: activity_log_crud.get_recent_activities(db, limit=100, cursor=deep_cursor)),
            ("one day + one actor (type+id)",
             build_select(ActivityFilter.build(start=day, end=day + timedelta(days=1),
                                               actor_type="agent", actor_id="agent-42"),
                          limit=1001),
             lambda db: activity_log_crud.get_activities_by_date_range(
                 db, day, day + timedelta(days=1), actor_type="agent", actor_id="agent-42")),
            ("one day + actor_id only",
             build_select(ActivityFilter.build(start=day, end=day + timedelta(days=1),
                                               actor_id="agent-42"), limit=1001),
             lambda db: activity_log_crud.get_activities_by_date_range(
                 db, day, day + timedelta(days=1), actor_id="agent-42")),
            ("one day + activity_type, first 100",
             build_select(ActivityFilter.build(start=day, end=day + timedelta(days=1),
                                               activity_type="call_created"), limit=101),
             lambda db: activity_log_crud.get_activities_by_date_range(
                 db, day, day + timedelta(days=1), activity_type="call_created", limit=100)),
            ("target (type+id), recent 100",
             build_select(ActivityFilter.build(target_type="call", target_id="call-777"),
                          limit=101),
             lambda db: activity_log_crud.get_recent_activities(
                 db, target_type="call", target_id="call-777")),
            ("request_id",
             build_select(ActivityFilter.build(request_id="req-123456"), limit=101),
             lambda db: activity_log_crud.get_recent_activities(db, request_id="req-123456")),
            ("severity=critical, recent 100",
             build_select(ActivityFilter.build(severity="critical"), limit=101),
             lambda db: activity_log_crud.get_recent_activities(db, severity="critical")),
            ("text in one day",
             build_select(ActivityFilter.build(start=day, end=day + timedelta(days=1),
                                               text="refund"), limit=1001),
             lambda db: activity_log_crud.get_activities_by_date_range(
                 db, day, day + timedelta(days=1), text="refund")),
        ]
        for name, stmt, call in cases:
            async with AsyncSession(engine) as db:
                med, p95, n = await timed(lambda call=call, db=db: call(db), args.runs)  # type: ignore[misc]
            print(f"## {name}: median {med:.2f} ms, p95 {p95:.2f} ms, {n} rows")
            for line in essence(await explain(conn, stmt, engine.dialect)):
                print("    " + line.strip())
            print()
        async with AsyncSession(engine) as db:
            med, p95, _ = await timed(
                lambda: activity_log_crud.get_activity_summary(db, days=30, now=BASE + SPAN),
                max(3, args.runs // 10))
        print(f"## summary, 30 days (~333k rows): median {med:.1f} ms, p95 {p95:.1f} ms")
    finally:
        await engine.dispose()
        await conn.close()
        if not args.keep:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
