"""The worker as a real process, with real signals, and PostgreSQL cut under it.

Every test ends by counting distinct ids: nothing lost, nothing stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from activity_logging import db, snapshot, wire
from activity_logging.shards import shard_streams
from tests.integration.test_worker_pg import counts
from tests.servers import TcpProxy
from tests.services import address_of, url_via

pytestmark = [pytest.mark.fault, pytest.mark.integration]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fill(redis_url: str, stream: str, entries: int, per_entry: int) -> int:
    enc = wire.WireEncoder("fault-producer")
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    rec.__dict__.update(actor_id="a", target_type="call", changes={"s": [None, "r"]},
                        ip_address="10.0.0.1")
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for _ in range(entries):
        pipe.xadd(stream, enc.encode_batch([snapshot.queued_from_record(rec) for _ in range(per_entry)]))
    pipe.execute()
    client.close()
    return entries * per_entry


def distinct_rows(pg_url: str, schema: str) -> tuple[int, int]:
    """(rows, distinct ids) in the schema's activity_logs, from synchronous test code."""
    return asyncio.run(counts(pg_url, schema))


def wait_for(condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {seconds}s")


class Workers:
    """Starts ``python -m activity_logging worker`` processes; kills leftovers at the end.

    ``proxy`` sits in front of PostgreSQL: ``start(via_proxy=True)`` makes a worker whose
    database can be cut, so a batch can be held in its hands deterministically.
    """

    def __init__(self, redis_url: str, pg_url: str, stream: str, schema: str, tmp: str) -> None:
        self.redis_url, self.pg_url, self.stream, self.schema, self.tmp = (
            redis_url, pg_url, stream, schema, tmp)
        host, port = address_of(pg_url)
        self.proxy = TcpProxy(port, host).start()
        self.procs: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(self, consumer: str, *extra: str, via_proxy: bool = False) -> subprocess.Popen[bytes]:
        url = url_via(self.pg_url, self.proxy.port) if via_proxy else self.pg_url
        # stderr to a file, not a pipe: a chatty worker must never block on a full pipe.
        log = open(os.path.join(self.tmp, f"{consumer}.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "activity_logging", "worker", "--redis-url", self.redis_url,
             "--database-url", url, "--stream", self.stream, "--schema", self.schema,
             "--consumer", consumer, "--max-wait", "0.1", "--heartbeat-interval", "0.5", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
        )
        self.procs.append((proc, log))
        return proc

    def log(self, consumer: str) -> str:
        with open(os.path.join(self.tmp, f"{consumer}.log"), encoding="utf-8") as f:
            return f.read()

    def pending_of(self, consumer: str) -> int:
        client = redis.Redis.from_url(self.redis_url)
        try:
            for info in client.xinfo_consumers(self.stream, "activity_log_workers"):
                if info["name"] in (consumer, consumer.encode()):
                    return int(info["pending"])
            return 0
        except redis.ResponseError:
            return 0
        finally:
            client.close()

    def close(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
        self.proxy.close()


@pytest.fixture
def workers(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, tmp_path: Any
) -> Iterator[Workers]:
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    started = Workers(redis_url, pg_url, redis_stream, pg_schema, str(tmp_path))
    yield started
    started.close()


def hold_a_batch(workers: Workers, redis_url: str, pg_url: str, consumer: str, *extra: str
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """Start a worker behind the proxy, let it store some rows, cut PostgreSQL, feed more
    entries, and return once the worker holds unacknowledged entries. Returns (proc, n)."""
    n = fill(redis_url, workers.stream, 50, 20)
    proc = workers.start(consumer, "--batch-size", "200", *extra, via_proxy=True)
    wait_for(lambda: distinct_rows(pg_url, workers.schema)[1] == n)
    workers.proxy.cut()
    n += fill(redis_url, workers.stream, 100, 20)
    wait_for(lambda: workers.pending_of(consumer) > 0)
    return proc, n


def assert_all_stored_once(redis_url: str, stream: str, pg_url: str, schema: str, n: int) -> None:
    assert distinct_rows(pg_url, schema) == (n, n)
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(stream) == 0
    assert client.xpending(stream, "activity_log_workers")["pending"] == 0


def test_sigkill_with_a_batch_in_hand_then_another_worker_stores_every_record_once(
    workers: Workers, redis_url: str, pg_url: str, pg_schema: str
) -> None:
    doomed, n = hold_a_batch(workers, redis_url, pg_url, "doomed")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    assert distinct_rows(pg_url, pg_schema)[1] == 1000 < n  # the rest died with the worker
    heir = workers.start("heir", "--batch-size", "200", "--claim-idle", "0.5")
    wait_for(lambda: distinct_rows(pg_url, pg_schema)[1] == n)
    heir.send_signal(signal.SIGTERM)
    assert heir.wait(timeout=30) == 0
    assert "claimed" in workers.log("heir")
    assert_all_stored_once(redis_url, workers.stream, pg_url, pg_schema, n)


def test_sigterm_finishes_commits_and_acknowledges_the_batch_in_hand(
    workers: Workers, redis_url: str, pg_url: str, pg_schema: str
) -> None:
    # a stop timeout longer than the outage: the warm stop waits for the database to answer
    proc, n = hold_a_batch(workers, redis_url, pg_url, "warm", "--stop-timeout", "60")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # still holding its batch, waiting for the database
    workers.proxy.restore()
    assert proc.wait(timeout=60) == 0
    log = workers.log("warm")
    assert "retrying" in log and "stop requested" in log
    client = redis.Redis.from_url(redis_url)
    # Warm stop: what it held is stored and acknowledged; what it never read is still in the
    # stream. An entry the stop caught in the middle of an XREADGROUP reply stays pending
    # (docs/worker.md, "Stopping"; seen under CI load): still in the stream, never stored, so
    # the ledger below holds either way, and nothing acknowledged is missing from the table.
    remaining = sum(len(wire.decode_entry(f)[1]) for _, f in client.xrange(workers.stream))
    pending = client.xpending(workers.stream, "activity_log_workers")["pending"]
    assert pending <= len(client.xrange(workers.stream))
    rows, distinct = distinct_rows(pg_url, pg_schema)
    assert rows == distinct and rows + remaining == n
    assert rows > 1000


def test_second_signal_exits_at_once_leaving_entries_pending(
    workers: Workers, redis_url: str, pg_url: str, pg_schema: str
) -> None:
    proc, n = hold_a_batch(workers, redis_url, pg_url, "cold", "--stop-timeout", "60")
    proc.send_signal(signal.SIGINT)
    # Two signals sent back to back can merge into one: send the second once the first landed.
    wait_for(lambda: "stop requested" in workers.log("cold"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # a cold stop: 128 + the signal
    assert workers.pending_of("cold") > 0  # nothing acknowledged that was not committed
    workers.proxy.restore()
    heir = workers.start("heir", "--claim-idle", "0.5")
    wait_for(lambda: distinct_rows(pg_url, pg_schema)[1] == n)
    heir.send_signal(signal.SIGTERM)
    assert heir.wait(timeout=30) == 0
    assert_all_stored_once(redis_url, workers.stream, pg_url, pg_schema, n)


def test_postgres_cut_mid_stream_is_retried_until_every_record_is_stored(
    workers: Workers, redis_url: str, pg_url: str, pg_schema: str
) -> None:
    proc, n = hold_a_batch(workers, redis_url, pg_url, "patient")
    time.sleep(1.0)  # several failed attempts and reconnects
    assert distinct_rows(pg_url, pg_schema)[1] == 1000
    workers.proxy.restore()
    wait_for(lambda: distinct_rows(pg_url, pg_schema)[1] == n)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "retrying" in workers.log("patient")
    assert_all_stored_once(redis_url, workers.stream, pg_url, pg_schema, n)


def test_sharded_sigkill_with_batches_in_hand_on_several_shards_then_the_heir_claims_each(
    workers: Workers, redis_url: str, pg_url: str, pg_schema: str
) -> None:
    """Claims are per shard: a worker killed holding entries of several shards leaves each
    shard's own pending list, and the next worker claims from every one of them."""
    names = shard_streams(workers.stream, 3)
    n = sum(fill(redis_url, name, 20, 20) for name in names)
    doomed = workers.start("doomed", "--stream-shards", "3", "--batch-size", "200",
                           via_proxy=True)
    wait_for(lambda: distinct_rows(pg_url, workers.schema)[1] == n)
    workers.proxy.cut()
    n += sum(fill(redis_url, name, 60, 20) for name in names)
    client = redis.Redis.from_url(redis_url)

    def pending_by_shard() -> list[int]:
        return [int(client.xpending(name, "activity_log_workers")["pending"]) for name in names]

    wait_for(lambda: sum(1 for p in pending_by_shard() if p) >= 2)  # a reader per shard holds
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    held = pending_by_shard()
    stored_before = distinct_rows(pg_url, pg_schema)[1]
    assert stored_before < n
    heir = workers.start("heir", "--stream-shards", "3", "--batch-size", "200",
                         "--claim-idle", "0.5")
    wait_for(lambda: distinct_rows(pg_url, pg_schema)[1] == n)
    heir.send_signal(signal.SIGTERM)
    assert heir.wait(timeout=30) == 0
    log = workers.log("heir")
    assert sum(1 for name in names if f"entries of {name!r}" in log) == sum(1 for p in held if p)
    assert distinct_rows(pg_url, pg_schema) == (n, n)
    assert all(client.xlen(name) == 0 for name in names) and sum(pending_by_shard()) == 0
    client.close()
