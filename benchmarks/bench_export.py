"""Export throughput against psql's ``\\copy``: the same rows, CSV and JSON lines, side by side.

    .venv/bin/python benchmarks/bench_export.py [--rows 200000] [--repeat 3] [--keep SCHEMA]

Seeds a private schema (``generate_series``) with ``--rows`` rows (1,000,000 for the large
run), then for each format runs, each in a fresh child process and ``--repeat`` times (the
best run is reported):

* ``psql``: ``\\copy (SELECT * … ORDER BY "timestamp", id) TO … csv header`` for CSV and
  ``\\copy (SELECT row_to_json(a) FROM (…) a) TO …`` for JSON lines (the reference);
* ``copy``: ``export.export_activities``, the COPY path (``export_pg``);
* ``python``: the path before it, kept here only: the server-side cursor
  (``iter_batches``) and ``export.encode_csv``/``encode_jsonl``, batch by batch.

Seconds are the child's wall time minus nothing for psql (it starts in milliseconds) and the
time inside the export call for ours (Python's interpreter and import start-up, about half a
second, left out; connecting is in). Peak RSS comes from ``wait4``: memory is flat when it
does not grow with ``--rows``. The ratio is rows/s over psql's rows/s for the same format.
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
METHODS = ("psql", "copy", "python")


async def child(schema: str, fmt: str, method: str, path: str) -> None:
    """One export to ``path``; prints ``<rows> <seconds inside the export>``."""
    from activity_logging.export import export_activities

    with open(path, "wb") as out:  # noqa: ASYNC230 - the benchmark's only task
        if method == "copy":
            result = await export_activities(PG_URL, out, fmt=fmt, schema=schema,
                                             progress=False)
            print(f"{result.rows} {result.seconds}")
            return
        rows, seconds = await python_path(out, fmt, schema)
        print(f"{rows} {seconds}")


async def python_path(out: object, fmt: str, schema: str) -> tuple[int, float]:
    """The export before the COPY path: cursor batches encoded in Python."""
    import contextlib

    from activity_logging.crud import activity_log_crud
    from activity_logging.db import read_connection
    from activity_logging.export import encode_csv, encode_jsonl

    started = time.monotonic()
    write = out.write  # type: ignore[attr-defined]
    encode = encode_jsonl if fmt == "jsonl" else encode_csv
    written = 0
    async with read_connection(PG_URL, schema=schema) as conn, contextlib.aclosing(
            activity_log_crud.iter_batches(conn, None, batch_size=5000)) as batches:
        if fmt == "csv":
            write(encode_csv([], header=True))
        async for batch in batches:
            write(encode(batch))
            written += len(batch)
    return written, round(time.monotonic() - started, 3)


def psql_command(schema: str, fmt: str, path: str) -> list[str]:
    select = 'SELECT * FROM activity_logs ORDER BY "timestamp", id'
    if fmt == "csv":
        meta = f"\\copy ({select}) TO '{path}' csv header"
    else:
        meta = f"\\copy (SELECT row_to_json(a) FROM ({select}) a) TO '{path}'"
    return ["psql", PG_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-c", f'SET search_path TO "{schema}"', "-c", meta]


def run_once(schema: str, fmt: str, method: str) -> tuple[int, float, float, int]:
    """One export in a fresh process: (rows, seconds, peak RSS MiB, bytes out)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out_path, err_path = (os.path.join(tmp, n) for n in ("export", "out", "err"))
        argv = (psql_command(schema, fmt, path) if method == "psql" else
                [sys.executable, __file__, "--child", schema, fmt, method, path])
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=out, stderr=err)
            # wait4 (not wait) to get this child's own resource usage: its peak RSS.
            _, code, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(code)
            wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(Path(err_path).read_text())
        size = os.path.getsize(path)
        if method == "psql":
            with open(path, "rb") as f:
                rows = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            return rows - (fmt == "csv"), wall, usage.ru_maxrss / 1024, size
        rows_text, seconds = Path(out_path).read_text().split()
        return int(rows_text), float(seconds), usage.ru_maxrss / 1024, size


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
            await seed_sql(conn, rows, step=timedelta(seconds=7.776))
            await conn.execute("VACUUM ANALYZE activity_logs")
    finally:
        await conn.close()


async def drop(schema: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await admin.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, schema, fmt, method, path = sys.argv
        asyncio.run(child(schema, fmt, method, path))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="reuse/keep this schema (seeded once)")
    args = parser.parse_args()
    schema = args.keep or f"bench_x_{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(schema, args.rows))
    try:
        print(f"{'format':<6} {'method':<7} {'rows':>9} {'seconds':>8} {'rows/s':>9} "
              f"{'vs psql':>8} {'peak RSS':>9} {'MB out':>7}")
        for fmt in ("csv", "jsonl"):
            psql_rate = 0.0
            for method in METHODS:
                runs = [run_once(schema, fmt, method) for _ in range(args.repeat)]
                exported, seconds, rss, size = min(runs, key=lambda r: r[1])
                rate = exported / seconds
                if method == "psql":
                    psql_rate = rate
                print(f"{fmt:<6} {method:<7} {exported:>9,} {seconds:>8.2f} {rate:>9,.0f} "
                      f"{rate / psql_rate:>7.2f}x {rss:>5.0f} MiB {size / 1e6:>7.0f}")
    finally:
        if not args.keep:
            asyncio.run(drop(schema))


if __name__ == "__main__":
    main()
