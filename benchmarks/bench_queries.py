"""Query latency and plans on a 1,000,000-row PostgreSQL table (not a test: run by hand).

    .venv/bin/python benchmarks/bench_queries.py [--rows 1000000] [--runs 30] [--keep SCHEMA]
    .venv/bin/python benchmarks/bench_queries.py --text-search [--text-rows 200000]
        [--insert-rows 100000] [--runs 30]
    .venv/bin/python benchmarks/bench_queries.py --summary-only [--rows 10000000] [--lean]

Seeds a private schema with ``generate_series`` (rows spread over 90 days, 500 actors),
ANALYZEs it, then for each query of ``activity_log_crud`` prints the median and p95 latency
of the real call (SQLAlchemy AsyncSession over asyncpg) and the essence of its
``EXPLAIN (ANALYZE, BUFFERS)`` plan. The schema is dropped at the end unless ``--keep``.

The 30-day summary is timed both ways side by side, alternating: counted from the rows of
the window (``crud.summary_from_rows``, what it did before the daily rollup) and read from
the rollup (``summary_from_rollup``, and ``get_activity_summary``, which picks it); the
results must be equal. Then ``rebuild_rollup`` of one day and of the whole table is timed.
``--summary-only`` skips the other queries; ``--lean`` seeds without the indexes neither
summary reads (a faster 10,000,000-row seed).

``--text-search`` runs the trigram-index case instead, side by side in one run: a rare word
(20 rows per 1,000,000) over the whole ``--text-rows`` table, no time window, without and
with the GIN trigram index (``db.ensure_text_index``), and the write path's cost of that
index: rows/s of ``store_pg.PostgresStore.insert_activities`` (COPY, batches of 1,000) into
an empty table without and with it.
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

from activity_logging.crud import ActivityFilter, activity_log_crud, as_utc, build_select
from activity_logging.db import create_async_engine_for, init_db, text_index_name
from activity_logging.rollup import rebuild_rollup, rollup_table_name
from activity_logging.store_pg import PostgresStore
from tests.crud_rows import BASE, make_rows, seed_sql

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPAN = timedelta(days=90)


async def explain(conn: asyncpg.Connection, stmt: Any, dialect: Any) -> list[str]:
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
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


RARE_WORD = "chargeback"


async def insert_rate(schema: str, rows: list[dict[str, Any]], *, trgm: bool) -> float:
    """Rows/s of ``PostgresStore.insert_activities`` into an empty table, with or without the
    trigram index (the other indexes always there)."""
    admin = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        await admin.execute("TRUNCATE activity_logs")
        if not trgm:
            await admin.execute(f'DROP INDEX IF EXISTS "{text_index_name()}"')
        else:
            await init_db(PG_URL, schema=schema)
        await admin.execute("CHECKPOINT")
    finally:
        await admin.close()
    store = PostgresStore(PG_URL, schema=schema)
    await store.connect()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), 1000):
            await store.insert_activities(rows[i:i + 1000])
        return len(rows) / (time.perf_counter() - t0)
    finally:
        await store.close()


async def text_search(args: argparse.Namespace) -> None:
    """The trigram-index case: read side without and with the index, then the write side."""
    schema = f"bench_trgm_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    engine = create_async_engine_for(PG_URL, schema=schema)
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        await init_db(PG_URL, schema=schema)
        await conn.execute(f'DROP INDEX "{text_index_name()}"')
        t0 = time.perf_counter()
        await seed_sql(conn, args.text_rows, step=SPAN / args.text_rows, actors=500)
        await conn.execute(
            f"UPDATE activity_logs SET description = description || ' {RARE_WORD} disputed' "
            "WHERE seq % 50000 = 7")
        await conn.execute("VACUUM ANALYZE activity_logs")
        print(f"seeded {args.text_rows:,} rows in {time.perf_counter() - t0:.1f} s "
              f"(schema {schema}); PostgreSQL {await conn.fetchval('SHOW server_version')}\n")
        for label in ("without the trigram index", "with the trigram index"):
            if label.startswith("with "):
                t0 = time.perf_counter()
                await init_db(PG_URL, schema=schema)  # the migration path: adds the index
                build = time.perf_counter() - t0
                size = await conn.fetchval(
                    f"SELECT pg_size_pretty(pg_relation_size('\"{text_index_name()}\"'))")
                await conn.execute("ANALYZE activity_logs")
                print(f"init-db added {text_index_name()} in {build:.1f} s ({size})")
            # The rare word, then a common one (1 row in 97): recent 100, no time window.
            for kind, word in (("rare word", RARE_WORD), ("common word", "refund")):
                stmt = build_select(ActivityFilter.build(text=word), limit=101)
                async with AsyncSession(engine) as db:
                    async def search(db: AsyncSession = db, word: str = word) -> Any:
                        return await activity_log_crud.get_recent_activities(
                            db, text=word, limit=100)

                    await search()  # warm the cache: both sides read from memory
                    med, p95, n = await timed(search, args.runs)
                print(f"## {kind} over {args.text_rows:,} rows, {label}: median {med:.2f} ms, "
                      f"p95 {p95:.2f} ms, {n} rows")
                for line in essence(await explain(conn, stmt, engine.dialect)):
                    print("    " + line.strip())
                print()
        rows = make_rows(args.insert_rows, step=timedelta(seconds=1))
        for row in rows:  # realistic descriptions: words, ids, numbers
            row["description"] = (f"call {row['seq']} transferred to agent-{row['seq'] % 500} "
                                  f"after {row['seq'] % 300} s, queue sales")
        rates: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(3):  # alternate, so drift hits both sides alike
            rates["without"].append(await insert_rate(schema, rows, trgm=False))
            rates["with"].append(await insert_rate(schema, rows, trgm=True))
        for side, got in rates.items():
            print(f"## insert_activities, {args.insert_rows:,} rows in batches of 1,000, {side} "
                  f"the trigram index: median {statistics.median(got):,.0f} rows/s "
                  f"(runs {', '.join(f'{r:,.0f}' for r in got)})")
    finally:
        await engine.dispose()
        await conn.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def lean_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the indexes neither summary path reads (``--lean``); returns their names."""
    names = [r["indexname"] for r in await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename = 'activity_logs' AND indexname NOT IN "
        "('activity_logs_pkey', 'ix_activity_logs_timestamp')")]
    for name in names:
        await conn.execute(f'DROP INDEX "{name}"')
    return names


async def summaries(conn: asyncpg.Connection, engine: Any, args: argparse.Namespace) -> None:
    """The 30-day summary side by side in one run: counted from the rows of the window (what
    ``get_activity_summary`` did before the rollup, and still does without one) and read from
    the daily rollup (``rollup.py``), alternating; the two must be equal."""
    now = BASE + SPAN
    first, last = (now - timedelta(days=29)).date(), now.date()
    in_window = await conn.fetchval(
        "SELECT count(*) FROM activity_logs WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2",
        as_utc(first), as_utc(last, end=True))
    groups = await conn.fetchval(
        f"SELECT count(*) FROM {rollup_table_name()} WHERE day BETWEEN $1 AND $2", first, last)
    runs = max(5, args.runs // 3)
    samples: dict[str, list[float]] = {"rows": [], "rollup": [], "get_activity_summary": []}
    results: dict[str, Any] = {}
    async with AsyncSession(engine) as db:
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "rows": lambda: activity_log_crud.summary_from_rows(db, first, last),
            "rollup": lambda: activity_log_crud.summary_from_rollup(db, first, last),
            "get_activity_summary": lambda: activity_log_crud.get_activity_summary(
                db, days=30, now=now),
        }
        for call in calls.values():
            await call()  # warm: both read from memory
        for _ in range(runs):
            for name, call in calls.items():
                t0 = time.perf_counter()
                results[name] = await call()
                samples[name].append((time.perf_counter() - t0) * 1000)
    assert results["rows"] == results["rollup"] == results["get_activity_summary"], results
    print(f"## summary, 30 days ({in_window:,} rows in the window, {groups:,} rollup rows), "
          f"{runs} runs each, alternating:")
    for name, got in samples.items():
        got.sort()
        print(f"    {name:>22}: median {statistics.median(got):.2f} ms, "
              f"p95 {got[int(len(got) * 0.95) - 1]:.2f} ms")
    for label, bounds in (("one day", {"first_day": last, "last_day": last}),
                          ("the whole table", {})):
        t0 = time.perf_counter()
        written = await rebuild_rollup(conn, **bounds)  # type: ignore[arg-type]
        print(f"## rebuild_rollup, {label}: {time.perf_counter() - t0:.2f} s "
              f"({written:,} rollup rows, writers held off meanwhile)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", help="reuse/keep this schema (seeded once)")
    parser.add_argument("--text-search", action="store_true",
                        help="run the trigram-index case (read and write side) only")
    parser.add_argument("--text-rows", type=int, default=200_000)
    parser.add_argument("--insert-rows", type=int, default=100_000)
    parser.add_argument("--summary-only", action="store_true",
                        help="time only the summary (from the rows, from the rollup)")
    parser.add_argument("--lean", action="store_true",
                        help="seed without the indexes the summary does not use (all but the "
                             "primary key and the timestamp index): a faster 10M-row seed")
    args = parser.parse_args()
    if args.text_search:
        await text_search(args)
        return
    schema = args.keep or f"bench_q_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await init_db(PG_URL, schema=schema)
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    engine = create_async_engine_for(PG_URL, schema=schema)
    try:
        if await conn.fetchval("SELECT count(*) FROM activity_logs") < args.rows:
            if args.lean:
                dropped = await lean_indexes(conn)
                print(f"--lean: seeded without {', '.join(dropped)}")
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
        for name, stmt, call in [] if args.summary_only else cases:
            async with AsyncSession(engine) as db:
                med, p95, n = await timed(lambda call=call, db=db: call(db), args.runs)  # type: ignore[misc]
            print(f"## {name}: median {med:.2f} ms, p95 {p95:.2f} ms, {n} rows")
            for line in essence(await explain(conn, stmt, engine.dialect)):
                print("    " + line.strip())
            print()
        await summaries(conn, engine, args)
    finally:
        await engine.dispose()
        await conn.close()
        if not args.keep:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
