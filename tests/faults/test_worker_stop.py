"""A stop is obeyed in every state of the worker: real processes, real signals, real outages.

Each test puts a ``python -m activity_logging worker`` into one state for real (Redis or
PostgreSQL unreachable at start, Redis gone mid-run, PostgreSQL gone with a batch in hand,
blocked in ``XREADGROUP``, a write stuck behind ``LOCK TABLE``), sends SIGTERM, and checks
the exit: status 0, no traceback. Then the ledger: every record offered is stored once or
still in the stream (pending or never delivered), and a second worker closes the ledger
(lost 0, duplicates 0). Stop latencies are printed (``pytest -s``), never asserted; the
figures live in docs/worker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis

from activity_logging import db, snapshot, wire
from activity_logging.cli_worker import EXIT_COLD_STOP_BASE
from activity_logging.config import heartbeat_key
from tests.faults.test_worker_faults import Workers, wait_for
from tests.ledger import Ledger, keys_from_pg, keys_from_stream
from tests.servers import PrivateRedis, free_port

pytestmark = [pytest.mark.fault, pytest.mark.integration]

GROUP = "activity_log_workers"
STOP_BOUND = 15.0  # liveness bound on a stop (the measured latency is ~0.05-2 s)


class Offer:
    """Offers records with ledger keys ``<tag>-<n>`` to a stream, as producers would."""

    def __init__(self, redis_url: str, stream: str, tag: str) -> None:
        self.redis_url, self.stream, self.tag = redis_url, stream, tag
        self.encoder = wire.WireEncoder(f"{tag}-producer")
        self.snapshot = snapshot.Snapshotter(context=False)  # this producer's own seq
        self.offered = 0

    def entries(self, entries: int, per_entry: int = 20) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            pipe = client.pipeline(transaction=False)
            for _ in range(entries):
                items = []
                for _ in range(per_entry):
                    rec = logging.LogRecord("activity", logging.INFO, __file__, 1,
                                            "call_created", None, None)
                    rec.__dict__.update(actor_id="a", target_type="call",
                                        target_id=f"{self.tag}-{self.offered}")
                    self.offered += 1
                    items.append(self.snapshot.take(rec))
                entry: Any = self.encoder.encode_batch(items)  # redis-py types its fields narrowly
                pipe.xadd(self.stream, entry)
            pipe.execute()
        finally:
            client.close()


def stop(proc: subprocess.Popen[bytes], state: str, sig: int = signal.SIGTERM) -> int:
    """Send ``sig``, wait (bounded) for the exit; print the latency; return the exit code."""
    sent = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=STOP_BOUND)
    print(f"stop latency [{state}]: {time.monotonic() - sent:.3f} s (exit {code})")
    return code


def assert_clean_exit(workers: Workers, consumer: str, code: int) -> None:
    log = workers.log(consumer)
    assert code == 0, log
    assert "Traceback" not in log and "never retrieved" not in log, log


def ledger_after_stop(offer: Offer, pg_url: str, schema: str) -> Ledger:
    """Stored once, or still in the stream for the next worker: nothing else is allowed."""
    stored = keys_from_pg(pg_url, schema, offer.tag)
    waiting = keys_from_stream(offer.redis_url, offer.stream, offer.tag)
    ledger = Ledger(offered=offer.offered, stored=len(set(stored) | set(waiting)),
                    duplicates=sum(n - 1 for n in stored.values()))
    ledger.assert_balanced()
    return ledger


def close_ledger_with_a_second_worker(workers: Workers, offer: Offer, pg_url: str,
                                      schema: str) -> None:
    """A fresh worker stores what the stopped one left; every record ends stored once."""
    heir = workers.start("heir", "--claim-idle", "0.5")
    client = redis.Redis.from_url(offer.redis_url)
    try:
        wait_for(lambda: len(keys_from_pg(pg_url, schema, offer.tag)) == offer.offered)
        # Running, not still starting: a signal before Python runs our code is a plain kill.
        wait_for(lambda: client.exists(heartbeat_key(offer.stream, "heir")) == 1)
    finally:
        client.close()
    assert_clean_exit(workers, "heir", stop(heir, "heir, idle"))
    stored = keys_from_pg(pg_url, schema, offer.tag)
    ledger = Ledger(offered=offer.offered, stored=len(stored),
                    duplicates=sum(n - 1 for n in stored.values()))
    ledger.assert_balanced()
    client = redis.Redis.from_url(offer.redis_url)
    try:
        assert client.xlen(offer.stream) == 0
        assert client.xpending(offer.stream, GROUP)["pending"] == 0
    finally:
        client.close()


@pytest.fixture
def schema_with_table(pg_url: str, pg_schema: str) -> str:
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    return pg_schema


@pytest.fixture
def workers(redis_url: str, redis_stream: str, pg_url: str, schema_with_table: str,
            tmp_path: Any) -> Iterator[Workers]:
    started = Workers(redis_url, pg_url, redis_stream, schema_with_table, str(tmp_path))
    yield started
    started.close()


@pytest.fixture
def durable_redis() -> Iterator[PrivateRedis]:
    """A private Redis with AOF on, so records survive the outage the test makes."""
    server = PrivateRedis(appendonly=True)
    server.start()
    yield server
    server.cleanup()


@contextlib.contextmanager
def private_workers(redis_url: str, pg_url: str, stream: str, schema: str,
                    tmp: str) -> Iterator[Workers]:
    """Workers on a Redis of the test's own (the shared one is never taken away)."""
    started = Workers(redis_url, pg_url, stream, schema, tmp)
    try:
        yield started
    finally:
        started.close()


@contextlib.contextmanager
def table_locked(pg_url: str, schema: str) -> Iterator[None]:
    """Hold ``LOCK TABLE activity_logs IN ACCESS EXCLUSIVE MODE`` from another connection."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(db.connect_pg(pg_url, schema=schema))
    try:
        loop.run_until_complete(
            conn.execute("BEGIN; LOCK TABLE activity_logs IN ACCESS EXCLUSIVE MODE"))
        yield
    finally:
        with contextlib.suppress(asyncpg.PostgresError):
            loop.run_until_complete(conn.execute("ROLLBACK"))
        loop.run_until_complete(conn.close())
        loop.close()


def test_sigterm_while_redis_is_unreachable_at_start_exits_0_at_once(
    pg_url: str, redis_stream: str, schema_with_table: str, tmp_path: Any
) -> None:
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    with private_workers(nothing_there, pg_url, redis_stream, schema_with_table, str(tmp_path)) as ws:
        proc = ws.start("w")
        wait_for(lambda: "could not create the consumer group" in ws.log("w"))
        wait_for(lambda: "retrying in 2.0s" in ws.log("w"))  # well into its backoff
        assert_clean_exit(ws, "w", stop(proc, "connecting to Redis"))


def test_sigterm_while_redis_is_down_keeps_every_record_for_the_next_worker(
    durable_redis: PrivateRedis, pg_url: str, redis_stream: str, schema_with_table: str,
    tmp_path: Any, unique_name: str,
) -> None:
    offer = Offer(durable_redis.url, redis_stream, unique_name)
    offer.entries(20)
    durable_redis.stop()
    with private_workers(durable_redis.url, pg_url, redis_stream, schema_with_table,
                         str(tmp_path)) as ws:
        proc = ws.start("w")
        wait_for(lambda: "could not create the consumer group" in ws.log("w"))
        assert_clean_exit(ws, "w", stop(proc, "retrying Redis at start"))
        durable_redis.start()
        assert ledger_after_stop(offer, pg_url, schema_with_table).stored == offer.offered
        close_ledger_with_a_second_worker(ws, offer, pg_url, schema_with_table)


def test_sigterm_after_redis_went_away_mid_run_exits_0_and_loses_nothing(
    durable_redis: PrivateRedis, pg_url: str, redis_stream: str, schema_with_table: str,
    tmp_path: Any, unique_name: str,
) -> None:
    offer = Offer(durable_redis.url, redis_stream, unique_name)
    with private_workers(durable_redis.url, pg_url, redis_stream, schema_with_table,
                         str(tmp_path)) as ws:
        proc = ws.start("w")
        offer.entries(20)
        wait_for(lambda: len(keys_from_pg(pg_url, schema_with_table, offer.tag)) == 400)
        durable_redis.stop()
        wait_for(lambda: "reading" in ws.log("w") and "failed" in ws.log("w"))
        assert_clean_exit(ws, "w", stop(proc, "retrying Redis mid-run"))
        durable_redis.start()
        offer.entries(10)  # offered after the stop: for the second worker
        ledger_after_stop(offer, pg_url, schema_with_table)
        close_ledger_with_a_second_worker(ws, offer, pg_url, schema_with_table)


def test_sigterm_while_postgres_is_unreachable_at_start_exits_0_leaving_the_stream_whole(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    offer.entries(20)
    workers.proxy.cut()
    proc = workers.start("w", via_proxy=True)
    wait_for(lambda: "could not connect to PostgreSQL" in workers.log("w"))
    wait_for(lambda: "retrying in 1.0s" in workers.log("w"))
    assert_clean_exit(workers, "w", stop(proc, "connecting to PostgreSQL"))
    assert ledger_after_stop(offer, pg_url, schema_with_table).stored == offer.offered
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_sigterm_with_a_batch_in_hand_and_postgres_gone_exits_0_leaving_it_pending(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    offer.entries(50)
    proc = workers.start("w", "--batch-size", "200", via_proxy=True)
    wait_for(lambda: len(keys_from_pg(pg_url, schema_with_table, offer.tag)) == 1000)
    workers.proxy.cut()
    offer.entries(100)
    wait_for(lambda: workers.pending_of("w") > 0 and "insert of" in workers.log("w"))
    assert_clean_exit(workers, "w", stop(proc, "retrying PostgreSQL, batch in hand"))
    assert "left pending" in workers.log("w")
    assert workers.pending_of("w") > 0  # not acknowledged: it was never committed
    ledger_after_stop(offer, pg_url, schema_with_table)
    workers.proxy.restore()
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_sigterm_while_blocked_in_xreadgroup_exits_0_and_removes_the_heartbeat(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    offer.entries(10)
    proc = workers.start("w", "--max-wait", "30")  # each read blocks 30 s when idle
    wait_for(lambda: len(keys_from_pg(pg_url, schema_with_table, offer.tag)) == offer.offered)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: any(c["name"] == b"w" and c["idle"] > 200
                             for c in client.xinfo_consumers(workers.stream, GROUP)))
        assert_clean_exit(workers, "w", stop(proc, "idle, blocked in XREADGROUP"))
        assert client.get(heartbeat_key(workers.stream, "w")) is None
    finally:
        client.close()
    assert ledger_after_stop(offer, pg_url, schema_with_table).stored == offer.offered
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_sigterm_while_a_write_waits_on_a_locked_table_exits_0_leaving_the_batch_pending(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    offer.entries(10)
    proc = workers.start("w")
    wait_for(lambda: len(keys_from_pg(pg_url, schema_with_table, offer.tag)) == offer.offered)
    with table_locked(pg_url, schema_with_table):
        offer.entries(10)
        wait_for(lambda: workers.pending_of("w") > 0)  # read, and its COPY waits on the lock
        assert_clean_exit(workers, "w", stop(proc, "writing, table locked"))
    assert "left pending" in workers.log("w")
    ledger_after_stop(offer, pg_url, schema_with_table)
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_sigterm_while_a_write_waits_on_a_silent_postgres_exits_0_leaving_the_batch_pending(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    offer.entries(10)
    proc = workers.start("w", via_proxy=True)
    wait_for(lambda: len(keys_from_pg(pg_url, schema_with_table, offer.tag)) == offer.offered)
    workers.proxy.stall()  # a blackhole: the COPY goes out, no answer comes back
    offer.entries(10)
    wait_for(lambda: workers.pending_of("w") > 0)
    assert_clean_exit(workers, "w", stop(proc, "writing, PostgreSQL silent"))
    assert "left pending" in workers.log("w")
    workers.proxy.heal()
    ledger_after_stop(offer, pg_url, schema_with_table)
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_warm_stop_commits_and_acknowledges_the_batch_in_hand_when_the_lock_is_released(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    proc = workers.start("w", "--stop-timeout", "120")  # a generous stop: no race with it
    wait_for(lambda: "created consumer group" in workers.log("w"))
    with table_locked(pg_url, schema_with_table):
        offer.entries(10)
        wait_for(lambda: workers.pending_of("w") > 0)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stop requested" in workers.log("w"))
    # The database answers again within the stop timeout: the batch is stored, then acked.
    assert_clean_exit(workers, "w", proc.wait(timeout=STOP_BOUND))
    assert workers.pending_of("w") == 0
    assert "left pending" not in workers.log("w")
    assert keys_from_pg(pg_url, schema_with_table, offer.tag)  # what it held, stored
    ledger_after_stop(offer, pg_url, schema_with_table)
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_second_signal_during_a_stuck_write_is_a_cold_stop_with_its_exit_code(
    workers: Workers, redis_url: str, pg_url: str, schema_with_table: str, unique_name: str
) -> None:
    offer = Offer(redis_url, workers.stream, unique_name)
    proc = workers.start("w", "--stop-timeout", "120")  # the warm stop would wait 2 minutes
    wait_for(lambda: "created consumer group" in workers.log("w"))
    with table_locked(pg_url, schema_with_table):
        offer.entries(10)
        wait_for(lambda: workers.pending_of("w") > 0)
        proc.send_signal(signal.SIGINT)
        # Two signals sent back to back can merge into one: send the second once the first landed.
        wait_for(lambda: "stop requested" in workers.log("w"))
        code = stop(proc, "cold stop, writing, table locked", signal.SIGTERM)
    log = workers.log("w")
    assert code == EXIT_COLD_STOP_BASE + signal.SIGTERM, log
    assert "Traceback" not in log and "never retrieved" not in log, log
    assert "cold stop" in log
    ledger_after_stop(offer, pg_url, schema_with_table)
    close_ledger_with_a_second_worker(workers, offer, pg_url, schema_with_table)


def test_first_heartbeat_is_written_before_the_first_read_on_a_fresh_stream(
    workers: Workers, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert not client.exists(workers.stream)  # no stream, no group yet
        # A 60 s interval: only the first beat, written at start, can show within the bound.
        proc = workers.start("w", "--heartbeat-interval", "60")
        wait_for(lambda: client.get(heartbeat_key(workers.stream, "w")) is not None,
                 seconds=STOP_BOUND)
        assert_clean_exit(workers, "w", stop(proc, "just started"))
    finally:
        client.close()
