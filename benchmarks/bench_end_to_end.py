"""End to end: from ``log.info(...)`` to a committed row, against the naive design, same run.

    .venv/bin/python benchmarks/bench_end_to_end.py [--records 100000] [--naive-records 4000]
                                                    [--rate 5000] [--seconds 10]

1. **throughput**: the application logs ``--records`` records flat out through
   ``ActivityHandler`` (Redis stream); one ``activity-logging worker`` process drains them.
   Time from the first ``log.info`` until every row is committed.
2. **naive**: what people write first. The request does one ``LPUSH`` per record (a
   synchronous Redis round trip in the caller); one worker process does ``BRPOP`` and one ORM
   ``INSERT`` + ``COMMIT`` per record. Same records, same machine, same run.
3. **latency**: ``--rate`` records/s logged at a steady pace for ``--seconds``; a poller sees
   each row appear (polling every 10 ms) and reports p50/p99 of (seen - ``record.created``).

Application, Redis, worker(s) and PostgreSQL all share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
import orjson
import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from activity_logging import db  # noqa: E402
from activity_logging.handler import ActivityHandler  # noqa: E402
from activity_logging.urls import asyncpg_dsn  # noqa: E402

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
EXTRA = {"actor_type": "agent", "target_type": "call", "changes": {"status": {"old": None, "new": "ringing"}},
         "ip_address": "10.1.2.3", "campaign": "spring"}


def pg(schema: str) -> Any:
    return asyncpg.connect(asyncpg_dsn(PG_URL), server_settings={"search_path": schema})


def count_rows(schema: str) -> int:
    async def go() -> int:
        conn = await pg(schema)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM activity_logs"))
        finally:
            await conn.close()
    return asyncio.run(go())


def wait_rows(schema: str, n: int, limit: float = 600.0) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if count_rows(schema) >= n:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"{n} rows not committed within {limit}s")


def start_worker(stream: str, schema: str, log_path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "activity_logging", "--log-level", "WARNING", "worker",
         "--redis-url", REDIS_URL, "--database-url", PG_URL, "--stream", stream,
         "--schema", schema, "--consumer", "bench", "--max-wait", "0.05"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    return log


def bench_pipeline(n: int, schema: str, tmp: str) -> dict[str, float]:
    stream = f"activity_bench:{schema}"
    worker = start_worker(stream, schema, os.path.join(tmp, "worker.log"))
    handler = ActivityHandler(redis_url=REDIS_URL, stream=stream)
    log = make_logger(f"bench.{schema}", handler)
    try:
        time.sleep(1.0)  # worker connected and waiting
        start = time.perf_counter()
        for i in range(n):
            log.info("call_created", extra={**EXTRA, "actor_id": f"a{i % 50}", "target_id": f"c{i}"})
        logged = time.perf_counter()
        handler.flush(60.0)
        done = wait_rows(schema, n)
        stats = handler.stats()
    finally:
        handler.close()
        stop(worker)
        redis.Redis.from_url(REDIS_URL).delete(stream)
    return {"rate": n / (done - start), "caller_us": (logged - start) / n * 1e6,
            "dropped": float(sum(v for k, v in stats.items() if k.startswith("dropped")))}


NAIVE_WORKER = r'''
import asyncio, json, sys, uuid
from datetime import datetime, timezone
import redis.asyncio as aioredis
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import registry
from activity_logging.db import create_async_engine_for
from activity_logging.schema import make_table

url, redis_url, schema, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
n = int(sys.argv[5])

class Activity:  # the ORM model people write: one object per record
    pass

registry().map_imperatively(Activity, make_table(MetaData()))

async def main():
    r = aioredis.Redis.from_url(redis_url)
    engine = create_async_engine_for(url, schema=schema)
    done = 0
    while done < n:
        _, raw = await r.brpop(key)
        item = json.loads(raw)
        async with AsyncSession(engine) as session:
            session.add(Activity(
                id=uuid.UUID(item["id"]), timestamp=datetime.fromtimestamp(item["ts"], timezone.utc),
                activity_type=item["msg"], description=item["msg"], severity="info", level=20,
                actor_type=item["actor_type"], actor_id=item["actor_id"],
                target_type=item["target_type"], target_id=item["target_id"],
                changes=item["changes"], metadata={"campaign": item["campaign"]},
                ip_address=item["ip_address"]))
            await session.commit()
        done += 1
    await engine.dispose()

asyncio.run(main())
'''


class NaiveHandler(logging.Handler):
    """One LPUSH per record, in the caller's thread: the design people write first."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.client = redis.Redis.from_url(REDIS_URL)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {k: getattr(record, k, None) for k in (
                "actor_type", "actor_id", "target_type", "target_id", "changes", "ip_address",
                "campaign")}
            data.update(id=str(uuid.uuid4()), ts=record.created, msg=record.getMessage())
            self.client.lpush(self.key, orjson.dumps(data))
        except Exception:
            self.handleError(record)


def bench_naive(n: int, schema: str) -> dict[str, float]:
    key = f"activity_bench_naive:{schema}"
    worker = subprocess.Popen([sys.executable, "-c", NAIVE_WORKER, PG_URL, REDIS_URL, schema, key,
                               str(n)],
                              cwd=ROOT)
    handler = NaiveHandler(key)
    log = make_logger(f"naive.{schema}", handler)
    try:
        time.sleep(1.0)
        start = time.perf_counter()
        for i in range(n):
            log.info("call_created", extra={**EXTRA, "actor_id": f"a{i % 50}", "target_id": f"c{i}"})
        logged = time.perf_counter()
        done = wait_rows(schema, n)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        handler.client.delete(key)
        handler.client.close()
    return {"rate": n / (done - start), "caller_us": (logged - start) / n * 1e6}


def bench_latency(rate: int, seconds: float, schema: str, tmp: str) -> dict[str, float]:
    stream = f"activity_bench_lat:{schema}"
    worker = start_worker(stream, schema, os.path.join(tmp, "worker-lat.log"))
    handler = ActivityHandler(redis_url=REDIS_URL, stream=stream)
    log = make_logger(f"lat.{schema}", handler)
    latencies: list[float] = []
    total = int(rate * seconds)

    async def poll() -> None:
        conn = await pg(schema)
        last = -1
        try:
            while len(latencies) < total:
                rows = await conn.fetch(
                    'SELECT seq, extract(epoch FROM "timestamp")::float8 AS ts FROM activity_logs '
                    "WHERE seq > $1", last)
                seen = time.time()
                for row in rows:
                    latencies.append(seen - row["ts"])
                    last = max(last, row["seq"])
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    import threading

    poller = threading.Thread(target=lambda: asyncio.run(poll()), daemon=True)
    try:
        time.sleep(1.0)
        poller.start()
        start = time.perf_counter()
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            log.info("call_created", extra={**EXTRA, "actor_id": f"a{i % 50}", "target_id": f"c{i}"})
        poller.join(timeout=60)
    finally:
        handler.close()
        stop(worker)
        redis.Redis.from_url(REDIS_URL).delete(stream)
    latencies.sort()
    return {"p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "max_ms": latencies[-1] * 1000, "n": float(len(latencies))}


T = TypeVar("T")


def with_schema(fn: Callable[[str], T]) -> T:
    """``fn(schema)`` in a fresh schema with the table, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"

    async def make() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
        await db.init_db(PG_URL, schema=schema)

    async def drop() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(make())
    try:
        return fn(schema)
    finally:
        asyncio.run(drop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--naive-records", type=int, default=4_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="al-bench-")  # the workers' stderr
    try:
        run(args, tmp)
    except BaseException:
        print(f"worker logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: str) -> None:
    print(f"# end to end on {os.cpu_count()} cores; app, Redis, worker and PostgreSQL share them")
    fast = with_schema(lambda s: bench_pipeline(args.records, s, tmp))
    naive = with_schema(lambda s: bench_naive(args.naive_records, s))
    print(f"{'design':44} {'records/s':>10} {'caller µs/record':>17}")
    print(f"{'ActivityHandler -> stream -> ActivityWorker':44} {fast['rate']:10,.0f} "
          f"{fast['caller_us']:17.1f}   ({args.records} records, dropped {fast['dropped']:.0f})")
    print(f"{'naive LPUSH/record -> BRPOP + ORM commit':44} {naive['rate']:10,.0f} "
          f"{naive['caller_us']:17.1f}   ({args.naive_records} records)")
    print(f"ratio: {fast['rate'] / naive['rate']:.1f}x throughput")
    lat = with_schema(lambda s: bench_latency(args.rate, args.seconds, s, tmp))
    print(f"latency log.info -> row visible at {args.rate}/s for {args.seconds:.0f}s "
          f"({lat['n']:.0f} rows): p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
          f"max {lat['max_ms']:.0f} ms")


if __name__ == "__main__":
    main()
