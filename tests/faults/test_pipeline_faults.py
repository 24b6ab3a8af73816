"""The whole pipeline under faults: real producers, Redis, real workers, PostgreSQL.

Each scenario runs application processes that log through ``ActivityHandler`` (the README's
``dictConfig``, see ``PRELUDE`` in test_handler_lifecycle.py), every record with a unique
``target_id`` ``<tag>-<n>``; ``python -m activity_logging worker`` processes drain the
stream into a schema of its own; then a fault is made for real (a signal, a cut proxy, a
table lock, a Redis killed, stopped, out of memory, frozen, its consumer group destroyed,
poison in the stream, a producer killed). Each ends with a ledger (tests/ledger.py):
offered = stored (distinct, read back from PostgreSQL) + dead-lettered + counted by the
producer's final ``stats()``, no record stored twice, nothing lost outside a documented
window. Ledger figures are printed (``pytest -s``); no duration is asserted: every wait is
for a condition, with a generous upper bound.

Outages last ``2.5 s x ACTIVITY_LOG_FAULT_SCALE`` (default 1, so the file stays within a
few minutes on a 2-core machine; 2.5 s also ends each outage just before a retry of the
doubling backoffs: the worker retries 0.5, 1.5, 3.5 s after its first failure, the test
producers' handlers 0.1, 0.3, 0.7, 1.5, 3.1 s). For the 20-30 s outages of an on-demand run::

    ACTIVITY_LOG_FAULT_SCALE=10 .venv/bin/pytest tests/faults/test_pipeline_faults.py -s

(25 s outages; the wait bounds grow with the scale). ``ACTIVITY_LOG_FAULT_SEED`` replays
the kill points of the repeated-SIGKILL scenario (the seed is printed).

Scenarios covered elsewhere are not repeated here: one SIGKILL with a batch in hand and a
worker started afterwards claiming it (test_worker_faults.py), SIGTERM/SIGINT in every
blocked state (test_worker_stop.py), a Redis restart without persistence under a handler
alone and a normal exit with Redis down then the replay (test_handler_redis_restart.py,
test_handler_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from activity_logging import db, snapshot, spool, wire
from activity_logging.config import DEFAULT_GROUP, heartbeat_key
from tests.faults.test_handler_lifecycle import PRELUDE, ROOT
from tests.faults.test_worker_faults import Workers, distinct_rows, wait_for
from tests.faults.test_worker_stop import assert_clean_exit, private_workers, stop, table_locked
from tests.ledger import Ledger, counted_losses, dead_letters, keys_from_pg, keys_from_stream, ledger_of
from tests.servers import PrivateRedis

pytestmark = [pytest.mark.fault, pytest.mark.integration]

SCALE = float(os.environ.get("ACTIVITY_LOG_FAULT_SCALE") or 1.0)
OUTAGE = 2.5 * SCALE
#: Upper bound on any recovery (backoffs double up to 30 s after a long outage); never a target.
BOUND = 90.0 + 4 * OUTAGE
RATE = 2000.0  # records/s of a steady producer
BACKLOG = 50_000
KILLS = 5

# A producer: logs ``count`` records (``rate`` per second, 0 = flat out) until told to stop,
# reports its handler's stats() every 0.1 s, and on the exit file shuts logging down and
# writes its final stats. The parent waits on these files, never on output pipes.
PRODUCER = PRELUDE + textwrap.dedent("""
    import time
    tag, total, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    progress, final, stop_file, exit_file = sys.argv[4:8]

    def dump(path, logged, done):
        tmp = path + ".tmp"
        with open(tmp, "w") as out:
            json.dump({"logged": logged, "done": done, "stats": handler().stats()}, out)
        os.replace(tmp, path)

    started = last = time.monotonic()
    i = 0
    while i < total and not os.path.exists(stop_file):
        due = total if rate <= 0 else min(total, int((time.monotonic() - started) * rate) + 1)
        while i < due:
            log.info("pipeline", extra={"actor_id": "fault", "target_type": "call",
                                        "target_id": f"{tag}-{i}"})
            i += 1
        if time.monotonic() - last >= 0.1:
            dump(progress, i, False)
            last = time.monotonic()
        if rate > 0:
            time.sleep(0.002)
    dump(progress, i, True)
    print("logged", flush=True)
    while not os.path.exists(exit_file):
        time.sleep(0.1)
        dump(progress, i, True)
    logging.shutdown()
    dump(final, i, True)
""")


class Producer:
    """An application process logging ``<tag>-<n>`` records through ``ActivityHandler``.

    ``spool=False`` switches the handler's spool off (``ACTIVITY_LOG_SPOOL_PATH=off``); by
    default it spools in the test's own directory (conftest).
    """

    def __init__(self, tmp: Path, tag: str, redis_url: str, stream: str, *, count: int,
                 rate: float, spool: bool) -> None:
        self.tag = tag
        self.progress = tmp / f"{tag}.progress.json"
        self.final = tmp / f"{tag}.final.json"
        self.stop_file = tmp / f"{tag}.stop"
        self.exit_file = tmp / f"{tag}.exit"
        script = tmp / f"producer_{tag}.py"
        script.write_text(PRODUCER)
        env = {**os.environ, "REDIS_URL": redis_url, "TEST_STREAM": stream, "PYTHONPATH": str(ROOT)}
        if not spool:
            env["ACTIVITY_LOG_SPOOL_PATH"] = "off"
        self.stderr_path = tmp / f"{tag}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), tag, str(count), str(rate), str(self.progress),
             str(self.final), str(self.stop_file), str(self.exit_file)],
            env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )

    def state(self) -> dict[str, Any]:
        """The last progress report: ``logged``, ``done`` (no more logging), ``stats``."""
        try:
            return dict(orjson.loads(self.progress.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            return {"logged": 0, "done": False, "stats": {}}

    def stats(self) -> dict[str, int]:
        return dict(self.state()["stats"])

    def settled(self) -> bool:
        """Done logging, and every accepted record has left the handler for Redis."""
        state = self.state()
        s = state["stats"]
        return bool(state["done"] and s and s["queue_depth"] == 0 and s["in_hand"] == 0
                    and s["spool_pending"] == 0 and s["connected"] == 1 and s["unaccounted"] == 0)

    def wait_logged(self) -> None:
        """Until the producer has made every call it will make (it then idles)."""
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "logged", self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def finish(self) -> tuple[int, dict[str, int]]:
        """Stop logging, let the handler deliver (bounded), exit; (records logged, final stats)."""
        self.stop_file.touch()
        with contextlib.suppress(AssertionError):  # the ledger below tells what did not arrive
            wait_for(self.settled, BOUND)
        self.exit_file.touch()
        code = self.proc.wait(timeout=BOUND)
        assert code == 0, self.stderr()
        assert "Traceback" not in self.stderr(), self.stderr()
        final = orjson.loads(self.final.read_bytes())
        stats: dict[str, int] = final["stats"]
        assert stats["unaccounted"] == 0, stats
        return int(final["logged"]), stats

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


MakeProducer = Callable[..., Producer]


@pytest.fixture
def producers(tmp_path: Path) -> Iterator[MakeProducer]:
    """``producers(tag, redis_url, stream, count=..., rate=..., spool=...)``; killed at the end."""
    started: list[Producer] = []

    def make(tag: str, redis_url: str, stream: str, *, count: int = 10**9, rate: float = RATE,
             spool: bool = True) -> Producer:
        producer = Producer(tmp_path, tag, redis_url, stream, count=count, rate=rate, spool=spool)
        started.append(producer)
        return producer

    yield make
    for producer in started:
        producer.close()


@pytest.fixture
def schema(pg_url: str, pg_schema: str) -> str:
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    return pg_schema


@pytest.fixture
def workers(redis_url: str, redis_stream: str, pg_url: str, schema: str,
            tmp_path: Path) -> Iterator[Workers]:
    """Workers on the shared Redis (a stream of the test's own)."""
    with private_workers(redis_url, pg_url, redis_stream, schema, str(tmp_path)) as started:
        yield started


@pytest.fixture
def durable_redis() -> Iterator[PrivateRedis]:
    """A private Redis with AOF, fsync'd before every reply (a kill -9 loses no write it
    acknowledged), and ``DEBUG`` allowed from localhost."""
    server = PrivateRedis(appendonly=True, options=(
        "--appendfsync", "always", "--enable-debug-command", "local"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def durable_workers(durable_redis: PrivateRedis, pg_url: str, schema: str, unique_name: str,
                    tmp_path: Path) -> Iterator[Workers]:
    with private_workers(durable_redis.url, pg_url, f"fault:{unique_name}", schema,
                         str(tmp_path)) as started:
        yield started


# --- helpers ------------------------------------------------------------------------------


def rows(pg_url: str, schema: str) -> int:
    """Distinct ids stored in the schema (cheap enough to poll)."""
    return distinct_rows(pg_url, schema)[1]


def wait_flowing(pg_url: str, schema: str, more: int = 500) -> int:
    """Until ``more`` rows beyond those stored now have arrived: the pipeline flows."""
    floor = rows(pg_url, schema)
    wait_for(lambda: rows(pg_url, schema) >= floor + more, BOUND)
    return floor + more


def running(ws: Workers, consumer: str, pid: int | None = None) -> bool:
    """The worker has connected to both services (its first heartbeat is written then).

    With ``pid``, the heartbeat must be that process's own: a SIGKILLed predecessor of the
    same consumer name leaves its heartbeat behind until it expires."""
    client = redis.Redis.from_url(ws.redis_url)
    try:
        raw = client.get(heartbeat_key(ws.stream, consumer))
    finally:
        client.close()
    if raw is None:
        return False
    return pid is None or orjson.loads(raw).get("pid") == pid


def stream_empty(ws: Workers) -> bool:
    """Nothing left in the stream, nothing pending: every entry stored and acknowledged."""
    client = redis.Redis.from_url(ws.redis_url)
    try:
        return bool(client.xlen(ws.stream) == 0
                    and client.xpending(ws.stream, DEFAULT_GROUP)["pending"] == 0)
    except redis.ResponseError:  # no group (yet)
        return False
    finally:
        client.close()


def drain_and_stop(ws: Workers, proc: subprocess.Popen[bytes], consumer: str, pg_url: str,
                   schema: str, expected: int) -> None:
    """Wait (bounded) until ``expected`` rows are stored and the stream is empty, SIGTERM the
    worker (exit 0, no traceback), and check that nothing was left behind."""
    with contextlib.suppress(AssertionError):  # what is missing shows in the ledger
        # Rows alone are not enough: a batch a killed worker committed but never
        # acknowledged is re-read and acknowledged by this one after the count is reached.
        wait_for(lambda: rows(pg_url, schema) >= expected and stream_empty(ws)
                 and running(ws, consumer, proc.pid), BOUND)
    assert_clean_exit(ws, consumer, stop(proc, f"{consumer}, drained"))
    assert stream_empty(ws)


def ledger(pg_url: str, schema: str, tag: str, offered: int, **rest: int) -> Ledger:
    """The scenario's ledger from what PostgreSQL holds; asserted balanced and printed."""
    result = ledger_of(offered, keys_from_pg(pg_url, schema, tag), **rest)
    result.assert_balanced()
    return result


def producer_ledger(pg_url: str, schema: str, producer_tag: str, logged: int,
                    stats: dict[str, int]) -> Ledger:
    return ledger(pg_url, schema, producer_tag, logged, counted=counted_losses(stats))


def lock_waiters(pg_url: str, schema: str) -> int:
    """Statements waiting for a lock on the schema's activity_logs (the worker's COPY)."""

    async def fetch() -> int:
        conn = await db.connect_pg(pg_url, schema=schema)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted "
                "AND relation = to_regclass($1)", f'"{schema}".activity_logs'))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def unread_entries(redis_url: str, stream: str) -> int:
    """Entries after the group's last-delivered id: added, never read by any consumer."""
    client = redis.Redis.from_url(redis_url)
    try:
        for group in client.xinfo_groups(stream):
            if group["name"] in (DEFAULT_GROUP, DEFAULT_GROUP.encode()):
                last = group["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else str(last)
                unread: Any = client.xrange(stream, min=f"({last}", max="+")  # typed narrowly
                return len(unread)
        return 0
    finally:
        client.close()


def seeded_random() -> random.Random:
    seed = int(os.environ.get("ACTIVITY_LOG_FAULT_SEED") or time.time_ns() % 2**32)
    print(f"kill points: ACTIVITY_LOG_FAULT_SEED={seed}")
    return random.Random(seed)


# --- the worker killed, stopped, outlived -------------------------------------------------


def test_worker_sigkilled_five_times_while_draining_a_backlog_then_restarted_stores_every_record_once(
    producers: MakeProducer, workers: Workers, redis_url: str, pg_url: str, schema: str
) -> None:
    rng = seeded_random()
    producer = producers("kill", redis_url, workers.stream, count=BACKLOG, rate=0)
    producer.wait_logged()
    logged, stats = producer.finish()  # the whole backlog is in the stream before any worker
    for kill in range(KILLS):
        floor = rows(pg_url, schema)
        proc = workers.start("drainer", "--batch-size", "1000")
        # Past its start-up and at least one commit (unless nothing is left), then at random.
        wait_for(lambda f=floor: rows(pg_url, schema) > f or f >= logged, BOUND)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        print(f"kill {kill + 1}: {rows(pg_url, schema)} of {logged} stored, "
              f"{workers.pending_of('drainer')} entries pending")
    # The same consumer name: the restarted worker re-reads its own pending entries first.
    proc = workers.start("drainer")
    drain_and_stop(workers, proc, "drainer", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "kill", logged, stats)


def test_a_running_worker_claims_the_entries_a_sigkilled_peer_left_pending(
    producers: MakeProducer, workers: Workers, redis_url: str, pg_url: str, schema: str
) -> None:
    """Unlike a worker started after the death (test_worker_faults.py), the survivor is busy
    reading new entries: its periodic ``XAUTOCLAIM`` must still take over the dead one's."""
    survivor = workers.start("survivor", "--claim-idle", "3")
    doomed = workers.start("doomed", "--batch-size", "500", via_proxy=True)
    wait_for(lambda: running(workers, "survivor") and running(workers, "doomed"), BOUND)
    workers.proxy.cut()  # the doomed worker reads, then cannot commit: its entries stay pending
    producer = producers("claim", redis_url, workers.stream, count=20_000, rate=0)
    wait_for(lambda: workers.pending_of("doomed") > 0, BOUND)
    pending = workers.pending_of("doomed")
    doomed.send_signal(signal.SIGKILL)  # and never restarted
    doomed.wait(timeout=10)
    print(f"killed with {pending} entries pending")
    logged, stats = producer.finish()
    drain_and_stop(workers, survivor, "survivor", pg_url, schema, logged)
    assert "claimed" in workers.log("survivor")
    assert workers.pending_of("doomed") == 0
    producer_ledger(pg_url, schema, "claim", logged, stats)


def test_sigterm_in_the_middle_of_a_backlog_exits_0_and_a_new_worker_finishes(
    producers: MakeProducer, workers: Workers, redis_url: str, pg_url: str, schema: str
) -> None:
    producer = producers("term", redis_url, workers.stream, count=BACKLOG, rate=0)
    producer.wait_logged()
    logged, stats = producer.finish()
    first = workers.start("first", "--batch-size", "1000")
    wait_for(lambda: rows(pg_url, schema) > 0, BOUND)
    assert_clean_exit(workers, "first", stop(first, "draining a backlog"))
    # Stored once, or still in the stream (never read, or left pending): nothing else.
    stored = keys_from_pg(pg_url, schema, "term")
    waiting = keys_from_stream(redis_url, workers.stream, "term")
    assert waiting, "the backlog was drained before the stop: not the middle"
    Ledger(offered=logged, stored=len(set(stored) | set(waiting)),
           duplicates=sum(n - 1 for n in stored.values())).assert_balanced()
    heir = workers.start("heir", "--claim-idle", "0.5")
    drain_and_stop(workers, heir, "heir", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "term", logged, stats)


# --- PostgreSQL away while the application logs --------------------------------------------


@pytest.mark.parametrize("outage", ["connection-cut", "table-locked"])
def test_postgres_outage_during_steady_logging_loses_nothing(
    outage: str, producers: MakeProducer, workers: Workers, redis_url: str, pg_url: str,
    schema: str,
) -> None:
    proc = workers.start("w", via_proxy=outage == "connection-cut")
    producer = producers("db", redis_url, workers.stream)
    wait_flowing(pg_url, schema)
    if outage == "connection-cut":
        workers.proxy.cut()
        wait_for(lambda: "insert of" in workers.log("w"), BOUND)  # failing, retrying
        time.sleep(OUTAGE)
        workers.proxy.restore()
    else:
        with table_locked(pg_url, schema):  # LOCK TABLE ... ACCESS EXCLUSIVE, another session
            wait_for(lambda: lock_waiters(pg_url, schema) > 0, BOUND)  # the worker's COPY waits
            time.sleep(OUTAGE)
    wait_flowing(pg_url, schema)  # the backlog built meanwhile is drained, logging goes on
    logged, stats = producer.finish()
    drain_and_stop(workers, proc, "w", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "db", logged, stats)


# --- Redis away, full, frozen ---------------------------------------------------------------


@pytest.mark.parametrize(("how", "spool", "rate"), [
    pytest.param("kill", True, RATE, id="kill-9-spool"),
    pytest.param("kill", False, RATE, id="kill-9-no-spool"),
    pytest.param("stop", True, 3 * RATE / 2, id="stopped-spool"),
])
def test_redis_outage_with_aof_during_steady_logging_loses_nothing(
    how: str, spool: bool, rate: float, producers: MakeProducer, durable_redis: PrivateRedis,
    durable_workers: Workers, pg_url: str, schema: str,
) -> None:
    proc = durable_workers.start("w")
    producer = producers("redis", durable_redis.url, durable_workers.stream, rate=rate,
                         spool=spool)
    wait_flowing(pg_url, schema)
    durable_redis.stop(kill=how == "kill")
    # The producer noticed (a send failed); it goes on logging through the outage.
    wait_for(lambda: producer.stats()["send_failures"] + producer.stats()["send_timeouts"] > 0,
             BOUND)
    time.sleep(OUTAGE)
    durable_redis.start()  # same directory: the AOF brings back the stream and its group
    wait_flowing(pg_url, schema)
    logged, stats = producer.finish()
    assert (stats["spooled"] > 0) == spool, stats  # spooled, or held in memory
    drain_and_stop(durable_workers, proc, "w", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "redis", logged, stats)


@contextlib.contextmanager
def out_of_memory(redis_url: str) -> Iterator[None]:
    """``maxmemory`` below what is used, ``noeviction``: Redis refuses every write that could
    grow memory (XADD, SET, XGROUP CREATE, any command queued in MULTI) until the block ends."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        yield
    finally:
        client.config_set("maxmemory", 0)
        client.close()


@pytest.mark.parametrize("spool", [True, False], ids=["spool", "no-spool"])
def test_redis_out_of_memory_refuses_xadd_and_the_producer_keeps_and_counts_every_record(
    spool: bool, producers: MakeProducer, durable_redis: PrivateRedis, durable_workers: Workers,
    pg_url: str, schema: str,
) -> None:
    proc = durable_workers.start("w")
    producer = producers("oom", durable_redis.url, durable_workers.stream, spool=spool)
    wait_flowing(pg_url, schema)
    with out_of_memory(durable_redis.url):
        wait_for(lambda: producer.stats()["send_failures"] > 0, BOUND)  # XADD refused
        time.sleep(OUTAGE)
    wait_flowing(pg_url, schema)
    logged, stats = producer.finish()
    assert (stats["spooled"] > 0) == spool, stats  # spooled, or held in memory
    drain_and_stop(durable_workers, proc, "w", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "oom", logged, stats)


def test_worker_acknowledging_while_redis_is_out_of_memory_keeps_running_and_loses_nothing(
    producers: MakeProducer, durable_redis: PrivateRedis, durable_workers: Workers,
    pg_url: str, schema: str,
) -> None:
    """A batch committed while Redis is over ``maxmemory`` must still be acknowledged (or
    retried), never kill the worker: Redis refuses every command queued in MULTI then, even
    XACK/XDEL, which it accepts outside a transaction (and XDEL is what frees memory)."""
    proc = durable_workers.start("w")
    producer = producers("ack", durable_redis.url, durable_workers.stream)
    wait_flowing(pg_url, schema)
    floor = rows(pg_url, schema)  # (not under the lock: ACCESS EXCLUSIVE blocks reads too)
    with contextlib.ExitStack() as memory_short:
        with table_locked(pg_url, schema):  # a batch in hand, its commit waiting
            wait_for(lambda: lock_waiters(pg_url, schema) > 0, BOUND)
            memory_short.enter_context(out_of_memory(durable_redis.url))
            wait_for(lambda: producer.stats()["send_failures"] > 0, BOUND)
        # Unlocked while memory is short: the batch commits, then is acknowledged.
        wait_for(lambda: rows(pg_url, schema) > floor, BOUND)
        # Acknowledged, or retrying, or dead (the bug this guards against).
        wait_for(lambda: proc.poll() is not None or durable_workers.pending_of("w") == 0
                 or "could not acknowledge" in durable_workers.log("w"), BOUND)
        assert proc.poll() is None, durable_workers.log("w")
        time.sleep(OUTAGE)
    wait_flowing(pg_url, schema)
    logged, stats = producer.finish()
    drain_and_stop(durable_workers, proc, "w", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "ack", logged, stats)


def test_redis_frozen_by_debug_sleep_loses_nothing_and_stores_resent_batches_once(
    producers: MakeProducer, durable_redis: PrivateRedis, durable_workers: Workers, pg_url: str,
    schema: str,
) -> None:
    """The producer's sends time out (1.5 s) while the server sleeps, so it resends them
    (from its spool), and the XADDs that were waiting run once the server wakes: the same
    records reach the stream twice and must be stored once."""
    proc = durable_workers.start("w")
    producer = producers("sleep", durable_redis.url, durable_workers.stream)
    wait_flowing(pg_url, schema)
    # (redis-py's default 5 s socket timeout would give up, and retry, before the server wakes)
    client = redis.Redis.from_url(durable_redis.url, socket_timeout=OUTAGE + 30)
    try:
        # returns when the server wakes (redis-py leaves execute_command untyped)
        client.execute_command("DEBUG", "SLEEP", f"{OUTAGE:g}")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    wait_flowing(pg_url, schema)
    logged, stats = producer.finish()
    print(f"send timeouts while Redis slept: {stats['send_timeouts']}, spooled {stats['spooled']}")
    drain_and_stop(durable_workers, proc, "w", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "sleep", logged, stats)


# --- the stream itself: its group destroyed, poison and duplicates in it -------------------


def test_consumer_group_destroyed_under_a_running_worker_is_recreated_and_unread_entries_stored(
    producers: MakeProducer, workers: Workers, redis_url: str, pg_url: str, schema: str
) -> None:
    proc = workers.start("w", via_proxy=True)
    producer = producers("group", redis_url, workers.stream)
    wait_flowing(pg_url, schema)
    # Hold the worker on a commit so that entries pile up unread behind the batch it holds.
    workers.proxy.cut()
    wait_for(lambda: unread_entries(redis_url, workers.stream) > 0, BOUND)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xgroup_destroy(workers.stream, DEFAULT_GROUP) == 1
    finally:
        client.close()
    workers.proxy.restore()
    wait_for(lambda: "recreating it from id 0" in workers.log("w"), BOUND)
    wait_flowing(pg_url, schema)
    logged, stats = producer.finish()
    drain_and_stop(workers, proc, "w", pg_url, schema, logged)
    producer_ledger(pg_url, schema, "group", logged, stats)


def injected_entries(tag: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]:
    """(a good entry of 20 records ``<tag>-x-0..19``; an entry whose ``d`` is not JSON; an
    entry of 3 records, ``<tag>-x-20`` with a timestamp no database column can hold, and two
    good ones; how many records they offer)."""
    encoder = wire.WireEncoder("injector-00000001")

    def queued(n: int) -> snapshot.QueuedRecord:
        rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "injected", None, None)
        rec.__dict__.update(actor_id="injector", target_type="call", target_id=f"{tag}-x-{n}")
        return snapshot.queued_from_record(rec)

    good = dict(encoder.encode_batch([queued(n) for n in range(20)]))
    undecodable = {"v": "1", "n": "1", "p": "injector-00000001", "h": "fault", "pid": "1",
                   "d": b"\xff\xfe[{not json"}
    mixed = dict(encoder.encode_batch([queued(n) for n in (20, 21, 22)]))
    wires = orjson.loads(mixed["d"])
    wires[0]["ts"] = 10**18  # year ~33,658: outside every timestamp column
    mixed["d"] = orjson.dumps(wires)
    return good, undecodable, mixed, 20 + 1 + 3


def test_duplicate_and_poison_entries_in_a_normal_flow_are_stored_once_or_dead_lettered(
    producers: MakeProducer, workers: Workers, redis_url: str, pg_url: str, schema: str
) -> None:
    proc = workers.start("w")
    producer = producers("mix", redis_url, workers.stream)
    wait_flowing(pg_url, schema)
    good, undecodable, mixed, injected = injected_entries("mix")
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for fields in (good, undecodable, good, mixed):  # a duplicate inside one read
            pipe.xadd(workers.stream, fields)  # type: ignore[arg-type]
        pipe.execute()
        wait_flowing(pg_url, schema)  # the first copy is stored by now
        client.xadd(workers.stream, good)  # type: ignore[arg-type]  # and again, much later
        wait_flowing(pg_url, schema)
        logged, stats = producer.finish()
        drain_and_stop(workers, proc, "w", pg_url, schema, logged + injected - 2)
    finally:
        client.close()
    dead = dead_letters(pg_url, schema)
    assert len(dead) == 2, dead
    assert any(isinstance(d, dict) and d.get("x", {}).get("target_id") == "mix-x-20" for d in dead)
    ledger(pg_url, schema, "mix", logged + injected, counted=counted_losses(stats),
           dead_lettered=len(dead))


# --- a producer killed while it spools -------------------------------------------------------


def spooled_records(directory: Path) -> int:
    """Records in the intact frames of every spool file of ``directory``."""
    return sum(int(entry["n"]) for path in directory.glob(f"*{spool.SUFFIX}")
               for entry in spool.read_frames(path.read_bytes()))


def test_producer_sigkilled_while_spooling_its_spool_is_replayed_by_the_next_producer(
    producers: MakeProducer, durable_redis: PrivateRedis, durable_workers: Workers, pg_url: str,
    schema: str,
) -> None:
    """The documented kill -9 window: what was queued, not yet spooled, when the process died.

    Everything the spool held is replayed by the next producer (adopted) and stored; the
    rest is the tail of what the dead one logged, and nothing else."""
    stream = durable_workers.stream
    durable_redis.stop(kill=True)
    first = producers("dead", durable_redis.url, stream, count=20_000, rate=0)
    first.wait_logged()
    # killed once it is spooling (a slow machine logs all 20,000 before the first frame)
    wait_for(lambda: first.stats().get("spooled", 0) > 0, BOUND)
    first.kill()
    before_kill = first.stats()  # its last report, written just before the kill
    spool_dir = Path(os.environ["ACTIVITY_LOG_SPOOL_PATH"])
    in_spool = spooled_records(spool_dir)
    logged = int(first.state()["logged"])
    assert logged == 20_000 and 0 < before_kill["spooled"] <= in_spool <= logged, (before_kill, in_spool)
    durable_redis.start()
    proc = durable_workers.start("w")
    second = producers("next", durable_redis.url, stream, count=100)
    wait_for(lambda: second.stats().get("spool_adopted", 0) >= in_spool, BOUND)
    logged_next, stats_next = second.finish()
    assert stats_next["spool_adopted"] == in_spool, stats_next
    drain_and_stop(durable_workers, proc, "w", pg_url, schema, in_spool + logged_next)
    producer_ledger(pg_url, schema, "next", logged_next, stats_next)
    keys = keys_from_pg(pg_url, schema, "dead")
    window = ledger_of(logged, keys, window=logged - in_spool)
    print(f"ledger: {window}; kill -9 window: {logged - in_spool} of {logged} records were "
          f"queued, not spooled ({before_kill['spooled']} spooled at the last report)")
    assert window.duplicates == 0 and window.stored == in_spool, str(window)
    numbers = sorted(int(k.rsplit("-", 1)[1]) for k in keys)
    assert numbers == list(range(len(numbers))), "a hole: a loss before the queued tail"
    assert not list(spool_dir.glob(f"*{spool.SUFFIX}"))
