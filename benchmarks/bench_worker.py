"""Worker-side benchmarks: idempotent bulk-insert strategies, and a single worker's drain rate.

    .venv/bin/python benchmarks/bench_worker.py inserts [--rows 100000] [--batch 10000]
    .venv/bin/python benchmarks/bench_worker.py drain [--records 200000] [--per-entry 500]
                                                      [--signing-key id:secret]
    .venv/bin/python benchmarks/bench_worker.py backlog [--entries 1000000] [--per-entry 1]

``inserts`` measures each way of inserting ``build_activity`` rows idempotently
(``ON CONFLICT DO NOTHING``) into a fresh table, side by side in one run.
``drain`` fills a stream with a backlog, then times one ``ActivityWorker`` draining it, and
beside it (same run, same rows) a raw ``COPY`` into an identical table: the ratio is the
figure that travels between machines.
``backlog`` does the same with a very long stream and samples the worker's RSS as it goes
(run on demand, not in CI: a million entries take minutes).

Everything runs in a throwaway schema of the ``test`` database and a throwaway stream.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from activity_logging import db, snapshot, store_pg, wire
from activity_logging.rows import build_activity
from activity_logging.schema import COLUMNS
from activity_logging.urls import asyncpg_dsn
from activity_logging.worker import ActivityWorker, tune_gc_for_draining

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def sample_queued(i: int = 0) -> snapshot.QueuedRecord:
    """A realistic record: 8 extra fields, a changes dict, an IP."""
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    rec.__dict__.update(
        actor_type="agent", actor_id=f"agent-{i % 97}", target_type="call", target_id=f"call-{i}",
        changes={"status": {"old": None, "new": "ringing"}}, ip_address="10.1.2.3", request_id=f"req-{i}",
        campaign="spring",
    )
    return snapshot.queued_from_record(rec)


def make_rows(n: int) -> list[dict[str, Any]]:
    enc = wire.WireEncoder("bench")
    rows: list[dict[str, Any]] = []
    chunk = 1000
    for start in range(0, n, chunk):
        meta, wires = wire.decode_entry(
            enc.encode_batch([sample_queued(i) for i in range(start, min(n, start + chunk))])
        )
        rows.extend(build_activity(w, meta) for w in wires)
    return rows


async def fresh_schema(name: str, *, partitioned: bool = False) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    await db.init_db(PG_URL, schema=name, partitioned=partitioned)


async def drop_schema(name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


# --- insert strategies ------------------------------------------------------------------------

COLS = ", ".join(f'"{c}"' for c in COLUMNS)


async def strategy_store(schema: str, batches: list[list[dict[str, Any]]]) -> None:
    """The worker's: store_pg.PostgresStore, COPY straight in (stage + ON CONFLICT after a conflict)."""
    store = store_pg.PostgresStore(PG_URL, schema=schema)
    await store.connect()
    try:
        for rows in batches:
            await store.insert_activities(rows)
    finally:
        await store.close()


async def strategy_copy_stage(schema: str, batches: list[list[dict[str, Any]]]) -> None:
    """COPY into a temp stage + INSERT ... SELECT ... ON CONFLICT DO NOTHING, every batch."""
    store = store_pg.PostgresStore(PG_URL, schema=schema)
    await store.connect()
    try:
        for rows in batches:
            store._stage_batches_left = 1 << 30  # force the conflict-tolerant path
            await store.insert_activities(rows)
    finally:
        await store.close()


async def strategy_unnest(schema: str, batches: list[list[dict[str, Any]]]) -> None:
    """INSERT ... SELECT FROM unnest($1::uuid[], ...) ON CONFLICT DO NOTHING, one array per column."""
    conn = await db.connect_pg(PG_URL, schema=schema)
    await store_pg.set_fast_codecs(conn)
    types = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS t FROM pg_attribute "
        "WHERE attrelid = 'activity_logs'::regclass AND attnum > 0 AND NOT attisdropped"
    )
    kinds = {r["attname"]: r["t"] for r in types}
    params = ", ".join(f"${i + 1}::{kinds[c]}[]" for i, c in enumerate(COLUMNS))
    sql = f"INSERT INTO activity_logs ({COLS}) SELECT * FROM unnest({params}) ON CONFLICT DO NOTHING"
    try:
        for rows in batches:
            columns = [[r[c] for r in rows] for c in COLUMNS]
            await conn.execute(sql, *columns)
    finally:
        await conn.close()


async def strategy_executemany(schema: str, batches: list[list[dict[str, Any]]]) -> None:
    """asyncpg executemany of a single-row INSERT ... ON CONFLICT DO NOTHING, one transaction per batch."""
    conn = await db.connect_pg(PG_URL, schema=schema)
    await store_pg.set_fast_codecs(conn)
    params = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
    sql = f"INSERT INTO activity_logs ({COLS}) VALUES ({params}) ON CONFLICT DO NOTHING"
    try:
        for rows in batches:
            async with conn.transaction():
                await conn.executemany(sql, [store_pg.row_tuple(r) for r in rows])
    finally:
        await conn.close()


async def strategy_sqlalchemy_core(schema: str, batches: list[list[dict[str, Any]]]) -> None:
    """SQLAlchemy Core insert().on_conflict_do_nothing() executemany, one transaction per batch."""
    from sqlalchemy import MetaData
    from sqlalchemy.dialects.postgresql import insert

    from activity_logging.schema import make_table

    table = make_table(MetaData())
    engine = db.create_async_engine_for(PG_URL, schema=schema)
    stmt = insert(table).on_conflict_do_nothing(index_elements=["id"])
    try:
        for rows in batches:
            async with engine.begin() as conn:
                await conn.execute(stmt, rows)
    finally:
        await engine.dispose()


STRATEGIES: dict[str, Callable[[str, list[list[dict[str, Any]]]], Awaitable[None]]] = {
    "store_copy_direct_then_stage": strategy_store,
    "copy_stage_on_conflict": strategy_copy_stage,
    "unnest_on_conflict": strategy_unnest,
    "asyncpg_executemany": strategy_executemany,
    "sqlalchemy_core_executemany": strategy_sqlalchemy_core,
}


async def bench_inserts(n: int, batch: int, repeat: int) -> None:
    rows = make_rows(n)
    batches = [rows[i:i + batch] for i in range(0, n, batch)]
    results: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    for round_ in range(repeat):
        # Rotate the order each round so no strategy always runs first (cold) or last.
        names = list(STRATEGIES)
        names = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in names:
            strategy = STRATEGIES[name]
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            await fresh_schema(schema)
            try:
                start = time.perf_counter()
                await strategy(schema, batches)
                elapsed = time.perf_counter() - start
                # Every row stored, once.
                conn = await db.connect_pg(PG_URL, schema=schema)
                count = await conn.fetchval("SELECT count(*) FROM activity_logs")
                await conn.close()
                assert count == n, (name, count)
            finally:
                await drop_schema(schema)
            results[name].append(n / elapsed)
    best = max(statistics.median(v) for v in results.values())
    print(f"# inserts: {n} rows, {batch} rows per transaction, median of {repeat}")
    print(f"{'strategy':32} {'rows/s':>10} {'vs best':>8}")
    for name, rates in results.items():
        rate = statistics.median(rates)
        print(f"{name:32} {rate:10,.0f} {rate / best:8.2f}")


# --- drain --------------------------------------------------------------------------------------


def fill_stream(client: redis.Redis, stream: str, records: int, per_entry: int,
                signing_key: str = "") -> int:
    """XADD ``records`` records in entries of ``per_entry`` (signed with ``signing_key`` when
    given); returns the number of entries."""
    from activity_logging.signing import EntrySigner, KeyRing

    signer = EntrySigner(KeyRing.parse(signing_key).current) if signing_key else None
    enc = wire.WireEncoder("bench-producer", signer=signer)
    entries = 0
    pipe = client.pipeline(transaction=False)
    for start in range(0, records, per_entry):
        size = min(per_entry, records - start)
        entry = enc.batch([sample_queued(start + j) for j in range(size)]).entry()
        # redis-py's annotation is a dict of its own value union; wire.Entry is dict[str, Any].
        pipe.xadd(stream, entry)  # type: ignore[arg-type]
        entries += 1
        if entries % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return entries


async def raw_copy_rate(pg_schema: str, batch_size: int) -> float:
    """The baseline: the rows the worker stored, COPYed by hand into an identical empty table
    (same columns, indexes and codecs; no Redis, no decoding, no idempotence), batch by batch."""
    conn = await db.connect_pg(PG_URL, schema=pg_schema)
    try:
        await conn.execute("CREATE TABLE activity_logs_copy (LIKE activity_logs INCLUDING ALL)")
        await store_pg.set_fast_codecs(conn)
        columns = ", ".join(db.quote_identifier(c) for c in COLUMNS)
        records = [tuple(r) for r in await conn.fetch(
            f'SELECT {columns} FROM activity_logs ORDER BY "timestamp", id')]
        start = time.perf_counter()
        for i in range(0, len(records), batch_size):
            async with conn.transaction():
                await conn.copy_records_to_table("activity_logs_copy", records=records[i:i + batch_size],
                                                 columns=COLUMNS)
        return len(records) / (time.perf_counter() - start)
    finally:
        await conn.close()


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def bench_drain(
    records: int, per_entry: int, batch_size: int, sample_rss: bool, writers: int = 1,
    signing_key: str = "",
) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    stream = f"activity_bench:{schema}"
    client = redis.Redis.from_url(REDIS_URL)
    await fresh_schema(schema)
    try:
        start = time.perf_counter()
        entries = fill_stream(client, stream, records, per_entry, signing_key)
        fill = time.perf_counter() - start
        print(f"# backlog: {records} records in {entries} entries ({per_entry}/entry), "
              f"filled in {fill:.1f}s")
        tune_gc_for_draining()  # as the `worker` command does
        worker = ActivityWorker(REDIS_URL, PG_URL, stream=stream, schema=schema,
                                batch_size=batch_size, consumer="bench", writers=writers,
                                signing_keys=signing_key)
        rss: list[int] = []
        done = asyncio.Event()

        async def sampler() -> None:
            while not done.is_set():
                rss.append(rss_kib())
                await asyncio.sleep(1.0)

        task = asyncio.create_task(sampler()) if sample_rss else None
        rss_before = rss_kib()
        start = time.perf_counter()
        await worker.run(stop_when_idle=True)
        elapsed = time.perf_counter() - start
        done.set()
        if task is not None:
            await task
        stats = worker.stats()
        conn = await db.connect_pg(PG_URL, schema=schema)
        count = await conn.fetchval("SELECT count(DISTINCT id) FROM activity_logs")
        await conn.close()
        rate = stats["inserted"] / elapsed
        print(f"drained {stats['inserted']} rows in {elapsed:.1f}s: {rate:,.0f} rows/s "
              f"(batch_size={batch_size}, writers={writers}, signed={bool(signing_key)}; "
              f"distinct ids in table: {count}; "
              f"stream left: {client.xlen(stream)})")
        copy_rate = await raw_copy_rate(schema, batch_size)
        print(f"raw COPY of the same rows into an identical table: {copy_rate:,.0f} rows/s; "
              f"worker / raw COPY = {rate / copy_rate:.2f}")
        if rss:
            print(f"worker RSS KiB: before {rss_before}, min {min(rss)}, max {max(rss)}, last {rss[-1]}; "
                  f"samples every 1s: {rss[:: max(1, len(rss) // 12)]}")
    finally:
        client.delete(stream, f"{stream}:dead")
        client.close()
        await drop_schema(schema)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("inserts")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("drain")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--per-entry", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--writers", type=int, default=1)
    p.add_argument("--signing-key", default="",
                   help="sign the entries and give the worker the key (id:secret)")
    p = sub.add_parser("backlog")
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--per-entry", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args()
    if args.what == "inserts":
        asyncio.run(bench_inserts(args.rows, args.batch, args.repeat))
    elif args.what == "drain":
        asyncio.run(bench_drain(args.records, args.per_entry, args.batch_size, sample_rss=True,
                                writers=args.writers, signing_key=args.signing_key))
    else:
        asyncio.run(bench_drain(args.entries * args.per_entry, args.per_entry, args.batch_size,
                                sample_rss=True))


if __name__ == "__main__":
    main()
