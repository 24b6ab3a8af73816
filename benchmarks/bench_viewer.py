"""Audit viewer page latency on a 1,000,000-row PostgreSQL table (not a test: run by hand).

    .venv/bin/python benchmarks/bench_viewer.py [--rows 1000000] [--runs 30] [--keep SCHEMA]

Seeds a private schema of the shared ``test`` database with ``generate_series`` (rows over
90 days, 500 actors, 50,000 targets, 4 rows per request id), ANALYZEs it, then requests each
page of ``create_viewer_app`` in-process (httpx over ASGI: the whole server side, query,
rendering and middleware, without a network) and prints the median and p95 latency, the
page size, the summary over the seeded window, and the export rate (through httpx, which
holds the whole body). The schema is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activity_logging.crud import ActivityCursor
from activity_logging.db import init_db
from activity_logging.viewer import create_viewer_app
from tests.crud_rows import BASE, seed_sql

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPAN = timedelta(days=90)
#: The issue's bound for the list and history pages, server side.
TARGET_MS = 100.0


async def timed(client: httpx.AsyncClient, path: str, runs: int) -> tuple[float, float, int, int]:
    """Median and p95 milliseconds of ``runs`` GETs (after one warm-up), bytes, status."""
    warm = await client.get(path)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        response = await client.get(path)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    return statistics.median(samples), p95, len(warm.content), response.status_code


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", help="reuse/keep this schema (seeded once)")
    args = parser.parse_args()
    schema = args.keep or f"bench_v_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    try:
        await init_db(PG_URL, schema=schema)
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
        try:
            if await conn.fetchval("SELECT count(*) FROM activity_logs") < args.rows:
                t0 = time.perf_counter()
                await seed_sql(conn, args.rows, step=SPAN / args.rows, actors=500)
                await conn.execute("ANALYZE activity_logs")
                print(f"seeded {args.rows:,} rows in {time.perf_counter() - t0:.1f} s (schema {schema})")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_total_relation_size('activity_logs'))")
            version = await conn.fetchval("SHOW server_version")
            middle = await conn.fetchrow(
                "SELECT id, timestamp, request_id FROM activity_logs WHERE timestamp >= $1 "
                "ORDER BY timestamp, id LIMIT 1", BASE + SPAN / 2)
            # The summary counts the last N days before today: cover the seeded rows.
            summary_days = max(1, min(366, (datetime.now(UTC).date() - BASE.date()).days + 1))
            in_window = await conn.fetchval(
                "SELECT count(*) FROM activity_logs WHERE timestamp >= $1",
                datetime.combine(datetime.now(UTC).date() - timedelta(days=summary_days - 1),
                                 datetime.min.time(), UTC))
        finally:
            await conn.close()
        print(f"table + indexes: {size}; PostgreSQL {version}; {args.runs} runs per page\n")

        app = create_viewer_app(database_url=PG_URL, schema=schema, authorize=lambda r: True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            first = (await client.get("/?limit=50")).text
            deep = "/?cursor=" + ActivityCursor(middle["timestamp"], middle["id"]).encode()
            day = (BASE + timedelta(days=45)).date()
            cases = [
                ("list, newest 50", "/", True),
                ("list, a page ~500,000 rows deep (keyset)", deep, True),
                ("list, actor filter", "/?actor_id=agent-42", True),
                ("list, severity=critical", "/?severity=critical", True),
                ("list, one day + type", f"/?since={day}&until={day + timedelta(days=1)}"
                                         "&activity_type=call_created", True),
                ("list, text 'refund' (no time bound)", "/?text=refund", False),
                ("target history (call-777)", "/target?target_type=call&target_id=call-777", True),
                ("actor timeline (agent-42)", "/actor?actor_type=agent&actor_id=agent-42", True),
                ("request drill-down", f"/request?request_id={middle['request_id']}", False),
                ("activity detail", f"/activity/{middle['id']}", False),
                ("list, 500 rows per page", "/?limit=500", False),
            ]
            assert 'data-id="' in first
            failed = []
            print(f"{'page':<44} {'median':>9} {'p95':>9} {'bytes':>9}")
            for name, path, bounded in cases:
                med, p95, size_b, status = await timed(client, path, args.runs)
                assert status == 200, (name, status)
                mark = " *" if bounded else ""
                print(f"{name + mark:<44} {med:7.1f}ms {p95:7.1f}ms {size_b:9,}")
                if bounded and p95 >= TARGET_MS:
                    failed.append(name)
            med, p95, size_b, _ = await timed(client, f"/summary?days={summary_days}",
                                              max(3, args.runs // 10))
            label = f"summary, {summary_days} days ({in_window:,} rows counted)"
            print(f"{label:<44} {med:7.1f}ms {p95:7.1f}ms {size_b:9,}")
            t0 = time.perf_counter()
            response = await client.get(f"/export.jsonl?since={day}&until={day + timedelta(days=3)}")
            seconds = time.perf_counter() - t0
            lines = response.content.count(b"\n")
            print(f"\nexport.jsonl, 3 days: {lines:,} rows in {seconds:.2f} s "
                  f"({lines / seconds:,.0f} rows/s, {len(response.content) / 1e6:.1f} MB)")
            print(f"\n* = the list and history pages bounded at {TARGET_MS:.0f} ms (p95): "
                  + ("all within" if not failed else "OVER: " + ", ".join(failed)))
        await app.state.viewer_store.close()
    finally:
        if not args.keep:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
