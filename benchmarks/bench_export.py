"""Export throughput and peak memory: 1,000,000 PostgreSQL rows to JSON lines and CSV.

    .venv/bin/python benchmarks/bench_export.py [--rows 1000000] [--keep SCHEMA]

Seeds a private schema (``generate_series``), then runs each export in a fresh child
process and reads the child's peak RSS from ``wait4``. Memory is flat when the peak for
1,000,000 rows is the same as for 100,000. The child forces the progress line on (stderr is
a pipe here) and the parent counts its updates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def child(schema: str, fmt: str, limit_rows: int, path: str) -> None:
    from activity_logging.crud import ActivityFilter
    from activity_logging.export import export_activities
    from tests.crud_rows import BASE

    # Rows are one every 7.776 s from BASE (see bench_queries): a window selects a prefix.
    until = BASE + timedelta(seconds=7.776 * limit_rows + 1)
    with open(path, "wb") as out:  # noqa: ASYNC230 - the benchmark's only task
        result = await export_activities(PG_URL, out, fmt=fmt, schema=schema, progress=True,
                                         filters=ActivityFilter(end=until))
    print(f"{result.rows} {result.seconds}")


def run_child(schema: str, fmt: str, rows: int) -> tuple[int, float, float, int, int]:
    """One export in a fresh process: (rows, seconds, peak RSS MiB, bytes out, progress updates)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out_path, err_path = (os.path.join(tmp, n) for n in ("export", "out", "err"))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child", schema, fmt, str(rows), path],
                stdout=out, stderr=err)
            # wait4 (not wait) to get this child's own resource usage: its peak RSS.
            _, code, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(code)
            wall = time.perf_counter() - t0
        stderr = Path(err_path).read_bytes()
        if proc.returncode != 0:
            raise SystemExit(stderr.decode())
        exported = int(Path(out_path).read_text().split()[0])
        return exported, wall, usage.ru_maxrss / 1024, os.path.getsize(path), stderr.count(b"\r")


async def seed(schema: str, rows: int) -> None:
    import asyncpg

    from activity_logging.db import init_db
    from tests.crud_rows import seed_sql

    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await admin.close()
    await init_db(PG_URL, schema=schema)
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        if not await conn.fetchval("SELECT count(*) FROM activity_logs"):
            # the same spread as bench_queries (1,000,000 rows over 90 days), so --keep can share
            await seed_sql(conn, rows, step=timedelta(seconds=7.776))
            await conn.execute("ANALYZE activity_logs")
    finally:
        await conn.close()


async def drop(schema: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await admin.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, schema, fmt, rows, path = sys.argv
        asyncio.run(child(schema, fmt, int(rows), path))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", help="reuse/keep this schema (seeded once)")
    args = parser.parse_args()
    schema = args.keep or f"bench_x_{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(schema, args.rows))
    try:
        print(f"{'format':<6} {'rows':>9} {'seconds':>8} {'rows/s':>9} {'peak RSS':>9} "
              f"{'MB out':>7} {'progress updates':>17}")
        for fmt in ("jsonl", "csv"):
            for rows in (args.rows // 10, args.rows):
                exported, wall, rss, size, updates = run_child(schema, fmt, rows)
                print(f"{fmt:<6} {exported:>9,} {wall:>8.1f} {exported / wall:>9,.0f} "
                      f"{rss:>7.0f} MiB {size / 1e6:>7.0f} {updates:>17}")
    finally:
        if not args.keep:
            asyncio.run(drop(schema))


if __name__ == "__main__":
    main()
