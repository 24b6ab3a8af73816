"""The write cost of the daily rollup's triggers (not a test: run by hand).

    .venv/bin/python benchmarks/bench_rollup.py [--batches 30] [--batch-size 10000] [--rounds 3]

Fresh schemas made by ``init-db``, the same in all but one thing: in one ("without") the
rollup is dropped (its function, hence every trigger, and its table): the table as it was
before the rollup; in the other ("with") everything is as shipped. The worker's write
path, ``store_pg.PostgresStore.insert_activities`` (``COPY`` of one batch per transaction),
inserts the same kind of rows into each, batch by batch, rotating which side goes first,
so drift on the shared machine hits all alike. Prints rows/s per side (median of the
per-batch rates and overall) and the ratio. ``--spread-days`` spreads each batch over that
many days (a backlog of late records: more rollup rows per statement); ``--partitioned``
uses monthly-partitioned tables.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activity_logging.db import init_db
from activity_logging.partitions import create_partitions, months_from
from activity_logging.rollup import rollup_function_name, rollup_table_name
from activity_logging.store_pg import PostgresStore
from tests.crud_rows import make_rows

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitioned", action="store_true",
                        help="monthly-partitioned tables (init-db --partitioned)")
    parser.add_argument("--spread-days", type=float, default=0.0,
                        help="spread each batch over this many days (0: 1 s apart, live)")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    # side -> whether it keeps the rollup
    sides: dict[str, bool] = {"without": False, "with": True}
    schemas = {side: f"bench_roll_{i}_{tag}" for i, side in enumerate(sides)}
    admin = await asyncpg.connect(PG_URL)
    stores: dict[str, PostgresStore] = {}
    start = datetime.now(UTC) - timedelta(days=1)
    try:
        for side, schema in schemas.items():
            keep = sides[side]
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            await init_db(PG_URL, schema=schema, partitioned=args.partitioned)
            conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
            try:
                if args.partitioned:  # the months a spread batch reaches back to
                    await create_partitions(conn, months_from(
                        start - timedelta(days=args.spread_days + 1), 2))
                if not keep:  # no rollup at all: the table as it was before
                    await conn.execute(f'DROP FUNCTION "{rollup_function_name()}"() CASCADE')
                    await conn.execute(f'DROP TABLE "{rollup_table_name()}"')
            finally:
                await conn.close()
            stores[side] = PostgresStore(PG_URL, schema=schema)
            await stores[side].connect()
        print(f"PostgreSQL {await admin.fetchval('SHOW server_version')}; "
              f"{args.rounds} rounds x {args.batches} batches of {args.batch_size:,} rows "
              f"per side, spread {args.spread_days} days per batch"
              f"{', partitioned' if args.partitioned else ''}")
        step = (timedelta(days=args.spread_days) / args.batch_size if args.spread_days
                else timedelta(seconds=1))
        rates: dict[str, list[float]] = {side: [] for side in schemas}
        totals: dict[str, float] = dict.fromkeys(schemas, 0.0)
        names = list(schemas)
        for r in range(args.rounds):
            for b in range(args.batches):
                batch_start = start + timedelta(seconds=(r * args.batches + b) * 7)
                k = (r + b) % len(names)  # rotate which side goes first
                for side in names[k:] + names[:k]:
                    rows = make_rows(args.batch_size, start=batch_start, step=step)
                    t0 = time.perf_counter()
                    stored = await stores[side].insert_activities(rows)
                    took = time.perf_counter() - t0
                    assert stored == args.batch_size
                    rates[side].append(args.batch_size / took)
                    totals[side] += took
        n = args.rounds * args.batches * args.batch_size
        for side in schemas:
            print(f"## insert_activities [{side} the rollup]: median "
                  f"{statistics.median(rates[side]):,.0f} rows/s per batch, overall "
                  f"{n / totals[side]:,.0f} rows/s ({n:,} rows, {totals[side]:.1f} s)")
        for side in names[1:]:
            ratio = totals[side] / totals["without"]
            per_batch = statistics.median(rates[side]) / statistics.median(rates["without"])
            print(f"## write cost, {side}: {100 * (ratio - 1):+.1f}% time overall, "
                  f"median per-batch rate {per_batch:.3f}x")
        on = schemas["with"]
        groups = await admin.fetchval(f'SELECT count(*) FROM "{on}"."{rollup_table_name()}"')
        print(f"rollup rows after the run: {groups:,}")
    finally:
        for store in stores.values():
            await store.close()
        for schema in schemas.values():
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
