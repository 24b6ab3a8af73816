"""``ActivityWorker``: drains the Redis Stream into PostgreSQL, loss-free and idempotent.

One stream entry carries a whole batch of records (see docs/entry-format.md). The worker
reads entries through a consumer group, turns their records into rows, inserts them in
bulk with ``ON CONFLICT DO NOTHING`` (``store.store_rows``), and only after the transaction
commits acknowledges (``XACK``) and deletes (``XDEL``) the entries. So:

* a crash at any point leaves the entries pending; another worker claims them
  (``XAUTOCLAIM``) after ``claim_idle`` seconds and the id makes the re-insert a no-op;
* a database outage is retried with exponential backoff, nothing acknowledged meanwhile;
* a stop is obeyed in every state (connecting, retrying, reading, writing): a warm stop
  stores the batch in hand if that takes at most ``stop_timeout`` seconds, else leaves its
  entries pending; a cold stop cancels at once (see docs/worker.md, "Stopping");
* a record the database rejects is isolated by splitting the batch, the others stored,
  and it goes at once (a data error is deterministic) with its error to the dead-letter
  table ``activity_log_dead_letters`` (``dead_letters``), written before the entry is
  acknowledged;
* hostile input is bounded before it costs anything: an entry over ``max_entry_records``
  or ``max_entry_bytes`` is refused undecoded, a record dated outside
  ``[now - max_age, now + max_future]`` before any partition is made for it, ``metadata``
  and ``changes`` cut to ``max_json_bytes`` (docs/worker.md, "Hostile input").

Reading/decoding (a task per shard of a sharded stream, at most ``writers + 1`` of them
holding a read at once) and inserting run as tasks joined by a queue of one slot per
writer, so the next batch is decoded in this process while PostgreSQL works on the current
one. Memory is bounded by a few ``batch_size`` batches whatever the backlog and the shard
count.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from ._internal import Backoff
from .config import (
    DEFAULT_GROUP,
    DEFAULT_TABLE,
    dead_stream_for,
    heartbeat_key,
    require_positive,
    resolve_database_url,
    resolve_redis_url,
    resolve_schema,
    resolve_stream,
    tunable_env,
)
from .dead_letters import DeadLetterWriter
from .entry_limits import MAX_ENTRY_BYTES, MAX_ENTRY_RECORDS
from .exceptions import (
    ConfigurationError,
    PartitionMissingError,
    PermissionDeniedError,
    StoreUnavailableError,
)
from .redis_clients import async_client, disconnect_all
from .redis_errors import is_transient_redis_error, wrong_redis_kind
from .rows import MAX_JSON_BYTES
from .shards import check_shardable, resolve_shards, shard_streams
from .signing import KeyRing, resolve_keyring
from .store import Store, make_store, store_rows
from .urls import is_sqlite, redact_url
from .wire import decode_entry
from .worker_stream import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    Shard,
    StreamSide,
    _Batch,
    _Reject,
    _reraise_if_cancelled,
)

logger: Final = logging.getLogger("activity_logging.worker")

DEFAULT_BATCH_SIZE: Final = 10_000
DEFAULT_MAX_WAIT: Final = 0.5
DEFAULT_READ_COUNT: Final = 200
DEFAULT_CLAIM_IDLE: Final = 60.0
DEFAULT_HEARTBEAT_INTERVAL: Final = 5.0
#: Tries of a lone record the database refuses: one, a data error repeats on every try.
DEFAULT_MAX_ATTEMPTS: Final = 1
DEFAULT_MAX_ENTRY_RECORDS: Final = MAX_ENTRY_RECORDS
DEFAULT_MAX_ENTRY_BYTES: Final = MAX_ENTRY_BYTES
DEFAULT_MAX_JSON_BYTES: Final = MAX_JSON_BYTES
#: Oldest record accepted, in seconds before now: a year and a day, so a spool replayed
#: after a long outage, or a backlog drained late, is still stored (and at most 14 monthly
#: partitions can be asked for).
DEFAULT_MAX_AGE: Final = 366 * 86_400.0
#: Newest record accepted, in seconds after now: a day of clock skew between hosts.
DEFAULT_MAX_FUTURE: Final = 86_400.0
#: The input bounds a worker reads from ``ACTIVITY_LOG_<NAME>`` when not given: (kind, default).
_BOUNDS: Final[dict[str, tuple[type[int] | type[float], int | float]]] = {
    "max_entry_records": (int, DEFAULT_MAX_ENTRY_RECORDS),
    "max_entry_bytes": (int, DEFAULT_MAX_ENTRY_BYTES),
    "max_json_bytes": (int, DEFAULT_MAX_JSON_BYTES),
    "max_age": (float, DEFAULT_MAX_AGE), "max_future": (float, DEFAULT_MAX_FUTURE),
}
DEFAULT_PARTITION_INTERVAL: Final = 3600.0
DEFAULT_WRITERS: Final = 1
DEFAULT_STOP_TIMEOUT: Final = 1.5
#: Once a warm stop is requested, the batch in hand is retried this often until the deadline.
STOP_RETRY_INTERVAL: Final = 0.25
#: Bound on each step of the shutdown, and on the unwinding of a cancelled task.
SETTLE_TIMEOUT: Final = 0.5
#: Bound on one attempt to connect to Redis (PostgreSQL: ``db.DEFAULT_CONNECT_TIMEOUT``).
REDIS_CONNECT_TIMEOUT: Final = 5.0



@dataclass
class WorkerCounters:
    """What a worker has done since it started. Counters only grow; ``lag``/``pending`` are gauges.

    ``read`` records decoded from ``entries_read`` entries; ``inserted`` rows newly stored;
    ``duplicates_skipped`` rows already present (same id); ``retried`` transient failures
    retried; ``dead_lettered`` dead letters written to ``activity_log_dead_letters`` (one
    per refused record, or per entry refused whole), the sum of the ``refused_*`` counters:
    ``refused_oversized`` entries over ``max_entry_records``/``max_entry_bytes`` (never
    decoded, their records not in ``read``), ``refused_undecodable`` entries that could not
    be decoded, ``refused_malformed`` records that cannot be rows (no id, seq outside
    bigint...), ``refused_out_of_window`` records dated outside the accepted window,
    ``refused_by_database`` records the database refused, ``refused_signature`` entries
    whose signature did not check or that had none (with a key ring). So ``read`` = ``inserted`` +
    ``duplicates_skipped`` + ``refused_malformed`` + ``refused_out_of_window`` +
    ``refused_by_database``. ``claimed`` entries
    taken over from idle consumers; ``acked`` entries acknowledged and deleted;
    ``group_recreated`` times the consumer group had vanished; ``entries_vanished`` entries
    delivered but gone when read (trimmed or deleted while pending: their records never
    reached the worker); ``lag``/``pending`` from ``XINFO GROUPS`` at the last heartbeat.
    """

    entries_read: int = 0
    read: int = 0
    inserted: int = 0
    duplicates_skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    refused_oversized: int = 0
    refused_undecodable: int = 0
    refused_malformed: int = 0
    refused_out_of_window: int = 0
    refused_by_database: int = 0
    refused_signature: int = 0
    claimed: int = 0
    acked: int = 0
    batches: int = 0
    group_recreated: int = 0
    entries_vanished: int = 0
    partitions_created: int = 0
    lag: int | None = None
    pending: int | None = None


def tune_gc_for_draining() -> None:
    """Make the cyclic garbage collector cheap for a process that only drains.

    A batch holds ~10,000 fresh dicts (rows, decoded records); with the default thresholds
    the collector runs every 700 allocations and walks them again and again (a large share
    of the worker's time: docs/performance.md). Rows hold no cycles, so collect
    rarely, and move everything alive at start-up out of the collector's sight. Called by the
    ``worker`` command, which owns its process; a library embedding ``ActivityWorker`` in a
    bigger application decides for itself.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


class ActivityWorker(StreamSide):
    """Drains activity records from a Redis Stream into PostgreSQL.

    Args:
        redis_url: Redis holding the stream; default ``REDIS_URL``. A Redis Cluster is
            ``redis+cluster://`` (or ``rediss+cluster://``) and any one of its nodes.
        database_url: PostgreSQL (``postgresql://``, ``postgres://``,
            ``postgresql+asyncpg://``); default ``DATABASE_URL``.
        stream: stream name; default ``ACTIVITY_LOG_STREAM`` or ``activity_log_stream``.
        stream_shards: shards of the stream (``ACTIVITY_LOG_STREAM_SHARDS``, default 1), as
            the producers were given: the worker reads every shard, each with a reader of
            its own (claims and acknowledgements per shard), into the same writers.
        group: consumer group, created (from id 0) when missing.
        consumer: this worker's name in the group; default ``<hostname>-<pid>``.
        schema: PostgreSQL schema holding the table (sets ``search_path``).
        batch_size: records per insert transaction (upper bound; a batch is cut short when
            the stream has no more entries, so light load still sees low latency).
        max_wait: seconds one read blocks waiting for new entries.
        read_count: entries per ``XREADGROUP``.
        claim_idle: seconds an entry must sit unacknowledged with another consumer before
            this one claims it.
        heartbeat_interval: seconds between heartbeats (TTL ``DEFAULT_HEARTBEAT_TTL``).
        max_attempts: tries of a record the database refuses before it is dead-lettered
            (1: a data error is deterministic; more adds a pause between tries).
        max_entry_records: records one entry may carry; default
            ``ACTIVITY_LOG_MAX_ENTRY_RECORDS``, else ``DEFAULT_MAX_ENTRY_RECORDS``. Larger
            entries are dead-lettered (an excerpt) without being decoded.
        max_entry_bytes: bytes one entry may hold (``ACTIVITY_LOG_MAX_ENTRY_BYTES``, else
            ``DEFAULT_MAX_ENTRY_BYTES``); the same.
        max_json_bytes: encoded bytes ``metadata`` and ``changes`` may each take in a row
            (``ACTIVITY_LOG_MAX_JSON_BYTES``); larger ones are cut, with a ``_truncated`` marker.
        max_age: seconds before now of the oldest timestamp accepted (``ACTIVITY_LOG_MAX_AGE``,
            else ``DEFAULT_MAX_AGE``, a year and a day); older records are dead-lettered.
        max_future: seconds after now of the newest timestamp accepted
            (``ACTIVITY_LOG_MAX_FUTURE``, else a day); newer records are dead-lettered.
        signing_keys: the key ring (``signing.KeyRing``, or its text: ``secret`` or
            ``id:secret``, several separated by commas) that checks entries and seals rows;
            default ``ACTIVITY_LOG_SIGNING_KEY`` or the file ``ACTIVITY_LOG_SIGNING_KEY_FILE``
            names; ``""`` for none. With a key ring an entry whose tag does not check, or
            that has none, is dead-lettered (``refused_signature``), and every row is sealed
            with the first key; without one, signed entries are stored unsealed.
        writers: batches inserted concurrently, each over its own PostgreSQL connection.
        stop_timeout: seconds a warm stop gives the batch in hand to be committed and
            acknowledged before leaving it pending (``request_stop``).
        on_batch: called (also settable as the ``on_batch`` attribute) after each batch is
            committed and acknowledged, with the seconds since the batch was read; runs in
            the event loop, so it must be quick (``metrics`` observes a histogram); an
            exception it raises is logged and ignored.

    Raises ``ConfigurationError`` at construction for missing or invalid settings; connects
    only in ``run``. One worker runs in one event loop; run several processes to scale.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        database_url: str | None = None,
        *,
        stream: str | None = None,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        schema: str | None = None,
        table: str = DEFAULT_TABLE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_wait: float = DEFAULT_MAX_WAIT,
        read_count: int = DEFAULT_READ_COUNT,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        months_ahead: int = 3,
        partition_interval: float = DEFAULT_PARTITION_INTERVAL,
        writers: int = DEFAULT_WRITERS,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        on_batch: Callable[[float], None] | None = None,
        max_entry_records: int | None = None,
        max_entry_bytes: int | None = None,
        max_json_bytes: int | None = None,
        max_age: float | None = None,
        max_future: float | None = None,
        signing_keys: str | KeyRing | None = None,
        stream_shards: int | None = None,
    ) -> None:
        resolved_redis = resolve_redis_url(redis_url)
        self.keyring = (signing_keys if isinstance(signing_keys, KeyRing)
                        else resolve_keyring(signing_keys))
        self.sealing_key = self.keyring.current if self.keyring is not None else None
        if resolved_redis is None:
            raise ConfigurationError("the worker needs redis_url (or REDIS_URL)")
        resolved_db = resolve_database_url(database_url)
        if resolved_db is None:
            raise ConfigurationError("the worker needs database_url (or DATABASE_URL)")
        for name, value, integer in (
            ("batch_size", batch_size, True), ("read_count", read_count, True),
            ("max_attempts", max_attempts, True), ("max_wait", max_wait, False),
            ("claim_idle", claim_idle, False), ("heartbeat_interval", heartbeat_interval, False),
            ("partition_interval", partition_interval, False), ("writers", writers, True),
            ("stop_timeout", stop_timeout, False),
        ):
            require_positive(name, value, integer=integer)
        self.redis_url = resolved_redis
        self.database_url = resolved_db
        self.stream = resolve_stream(stream)
        self.stream_shards = resolve_shards(stream_shards)
        check_shardable(self.stream, self.stream_shards)
        self.shards = [Shard(name) for name in shard_streams(self.stream, self.stream_shards)]
        self._shard_readers = []
        self.dead_stream = dead_stream_for(self.stream)
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.schema = resolve_schema(schema)
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.read_count = read_count
        self.claim_idle = claim_idle
        self.heartbeat_interval = heartbeat_interval
        self.max_attempts = max_attempts
        self.months_ahead = months_ahead
        self.partition_interval = partition_interval
        self.stop_timeout = stop_timeout
        self.counters = WorkerCounters()
        self.on_batch = on_batch
        given = {"max_entry_records": max_entry_records, "max_entry_bytes": max_entry_bytes,
                 "max_json_bytes": max_json_bytes, "max_age": max_age, "max_future": max_future}
        bounds = {name: _bound(name, value) for name, value in given.items()}
        self.max_entry_records = int(bounds["max_entry_records"])
        self.max_entry_bytes = int(bounds["max_entry_bytes"])
        self.max_json_bytes = int(bounds["max_json_bytes"])
        self.max_age = float(bounds["max_age"])
        self.max_future = float(bounds["max_future"])
        if is_sqlite(resolved_db):
            writers = 1  # one writer: SQLite serialises writes anyway
        # More than one connection lets PostgreSQL commit one batch while the next is copied.
        self.stores: list[Store] = [make_store(self.database_url, schema=self.schema, table=table)
                                    for _ in range(writers)]
        self.store: Store = self.stores[0]
        self.dead_letter_writer = DeadLetterWriter(self.database_url, schema=self.schema,
                                                   table=table)
        self._redis: aioredis.Redis | None = None
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._stop_requested_at: float | None = None  # time.monotonic() of the warm stop
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_signal: int | None = None
        self._last_partition_check = 0.0
        self._signals = 0
        self.started_at = time.time()

    # --- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters as a plain dict (a copy)."""
        return asdict(self.counters)

    @property
    def stopped_cold(self) -> bool:
        """True once a cold stop (``request_force_stop``, a second signal) was requested."""
        return self._forced.is_set()

    @property
    def last_signal(self) -> int | None:
        """The last SIGTERM/SIGINT ``handle_signal`` took, or None."""
        return self._last_signal

    def request_stop(self) -> None:
        """Warm stop: read nothing more, store what is in hand, then let ``run`` return.

        The batch in hand is committed and acknowledged if that takes at most
        ``stop_timeout`` seconds from now; past that it is abandoned, its entries left pending
        (re-read by this consumer name at its next start, or claimed by another worker after
        ``claim_idle``; the id makes the re-insert a no-op). Idempotent; call it from the
        worker's event loop (a signal handler installed by ``run`` does).
        """
        if self._stopping.is_set():
            return
        self._stop_requested_at = time.monotonic()
        logger.info(
            "stop requested: reading nothing more, finishing the batch in hand (at most %.1fs)",
            self.stop_timeout,
        )
        self._stopping.set()

    def request_force_stop(self) -> None:
        """Cold stop: cancel at once; ``run`` returns without waiting for the batch in hand.

        Unacknowledged entries stay pending for another worker or the next start.
        Idempotent; call it from the worker's event loop.
        """
        if self._forced.is_set():
            return
        logger.warning("cold stop: cancelling now, unacknowledged entries stay pending")
        self.request_stop()
        self._forced.set()

    def handle_signal(self, signum: int) -> None:
        """What ``run(install_signal_handlers=True)`` does on SIGTERM/SIGINT: the first
        signal is a warm stop (``request_stop``), any later one a cold stop."""
        self._signals += 1
        self._last_signal = signum
        logger.info("received %s", signal.Signals(signum).name)
        if self._signals == 1:
            self.request_stop()
        else:
            self.request_force_stop()

    def _stop_time_left(self) -> float | None:
        """Seconds the warm stop still grants the batch in hand; None while not stopping."""
        if self._stop_requested_at is None:
            return None
        return self._stop_requested_at + self.stop_timeout - time.monotonic()

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if a stop is requested. Returns True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _pause(self, seconds: float) -> None:
        """A retry backoff for work that a warm stop still finishes (the batch in hand).

        A stop cuts the wait short (the next attempt comes at once); once stopping, retries
        come every ``STOP_RETRY_INTERVAL`` s until the stop deadline abandons the work.
        """
        if not self._stopping.is_set():
            await self._sleep(seconds)
            return
        await asyncio.sleep(min(seconds, STOP_RETRY_INTERVAL))

    # --- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, stop_when_idle: bool = False, install_signal_handlers: bool = False
    ) -> None:
        """Drain the stream until a stop (or, with ``stop_when_idle``, until a read finds
        nothing new and nothing left to claim).

        Unreachable Redis or PostgreSQL, at start-up or later, is retried with backoff for as
        long as it takes (a worker is a daemon: it waits for its services); every wait and
        connect attempt gives way to a stop. ``request_stop`` (warm) makes ``run`` return
        within about ``stop_timeout`` seconds in every state, ``request_force_stop`` (cold)
        at once (``stopped_cold`` tells them apart); both return normally.
        ``install_signal_handlers`` routes SIGTERM/SIGINT to ``handle_signal`` (first a warm
        stop, then a cold one) and restores the defaults on return. Raises
        ``ConfigurationError`` for a bad setting found at start-up (a missing table); a
        cancellation of the task running ``run`` propagates after the same bounded shutdown.
        """
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.handle_signal, sig)
        self._redis = async_client(
            self.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            socket_timeout=self.max_wait + 30.0, health_check_interval=30,
        )
        logger.info(
            "worker %s: stream %r%s group %r -> %s%s", self.consumer, self.stream,
            f" ({self.stream_shards} shards)" if self.stream_shards > 1 else "", self.group,
            redact_url(self.database_url), f" schema {self.schema}" if self.schema else "",
        )
        try:
            await self._drain(stop_when_idle)
        finally:
            await self._shutdown()
            # Last: a signal during the (bounded) shutdown is still ours, not a default kill.
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        left_pending = sum(len(shard.in_flight) for shard in self.shards)
        if left_pending:
            how = "cold" if self.stopped_cold else f"at its {self.stop_timeout:g}s stop timeout"
            logger.warning(
                "worker %s stopped %s: %d entries left pending, for another worker (after "
                "claim_idle) or this consumer's next start; their ids make a re-insert a no-op",
                self.consumer, how, left_pending,
            )
        logger.info("worker %s stopped: %s", self.consumer, self.stats())

    async def _drain(self, stop_when_idle: bool) -> None:
        """Run the reader and the writers; on a stop, end them within the stop's bounds."""
        queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=len(self.stores))
        reader = asyncio.create_task(
            self._start_and_read(queue, stop_when_idle), name="activity-worker-reader")
        writers = [
            asyncio.create_task(self._writer_loop(queue, store), name=f"activity-worker-writer-{i}")
            for i, store in enumerate(self.stores)
        ]
        ends = asyncio.create_task(self._end_writers(queue, reader, len(writers)))
        tasks = [reader, *writers, ends]
        try:
            # Until a stop, the end of a one-shot drain, or a task failing.
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            self._cancel_idle_readers(reader)
            # The writers store what they hold, then each takes an end marker.
            await self._wait_or_give_up(tasks)
        finally:
            if self._heartbeat is not None:
                tasks.append(self._heartbeat)
            for task in tasks:
                task.cancel()
            await self._settle(tasks)

    @staticmethod
    async def _end_writers(
        queue: asyncio.Queue[_Batch | None], reader: asyncio.Task[None], writers: int
    ) -> None:
        """Once the reader is done, queue an end marker per writer, after the last batch."""
        await asyncio.wait({reader})
        for _ in range(writers):
            await queue.put(None)

    async def _wait_or_give_up(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for ``tasks`` to end, or for a cold stop, or for a warm stop to outlast
        ``stop_timeout`` (the caller then cancels them). Raises the error of a task that
        failed."""
        forced = asyncio.ensure_future(self._forced.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                for task in tasks:
                    if task.done() and not task.cancelled():
                        task.result()  # a task that failed: raise its error (a missing table)
                pending = {task for task in tasks if not task.done()}
                left = self._stop_time_left()
                if not pending or self._forced.is_set() or (left is not None and left <= 0):
                    return
                # ``stop`` wakes this wait when a stop starts the deadline's clock.
                waiters = {forced} | ({stop} if not stop.done() else set())
                await asyncio.wait(pending | waiters, timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
            stop.cancel()

    async def _settle(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for cancelled ``tasks`` to unwind, at most ``SETTLE_TIMEOUT`` s, twice.

        A task still stuck after the first wait is inside a driver waiting on a silent
        server: its connections are dropped so the wait fails, then it gets a second chance.
        Never raises.
        """
        pending = [task for task in tasks if not task.done()]
        for attempt in range(2):
            if not pending:
                break
            _, still = await asyncio.wait(pending, timeout=SETTLE_TIMEOUT)
            pending = list(still)
            if pending and attempt == 0:
                await self._drop_connections()
        if pending:
            logger.warning("%d tasks did not end after their cancellation", len(pending))
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: reported by the caller, not by asyncio at exit

    async def _drop_connections(self) -> None:
        """Abort every connection (no goodbye to the server); bounded, never raises."""
        for store in self.stores:
            conn = getattr(store, "conn", None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(disconnect_all(self._redis), SETTLE_TIMEOUT)

    async def _shutdown(self) -> None:
        """Close the stores, delete the heartbeat, close Redis: each step bounded, never raises."""
        for store in self.stores:
            await _bounded_close(store)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.dead_letter_writer.close(), SETTLE_TIMEOUT)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._redis.delete(heartbeat_key(self.stream, self.consumer)), SETTLE_TIMEOUT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.aclose(), SETTLE_TIMEOUT)
            self._redis = None

    # --- writing ---------------------------------------------------------------------------

    async def _writer_loop(self, queue: asyncio.Queue[_Batch | None], store: Store) -> None:
        while True:
            _reraise_if_cancelled()
            batch = await queue.get()
            if batch is None:
                return
            await self._maybe_ensure_partitions(store)
            await self._store_batch(batch, store)
            await self._write_dead_letters(batch)
            await self._retrying("acknowledge entries", lambda b=batch: self._finish(b),
                                 past_stop=True)
            self.counters.batches += 1
            if self.on_batch is not None:
                self._report_batch(self.on_batch, time.monotonic() - batch.read_at)

    @staticmethod
    def _report_batch(hook: Callable[[float], None], seconds: float) -> None:
        try:
            hook(seconds)
        except Exception as exc:  # an observer must never stop the drain
            logger.warning("on_batch hook failed: %s: %s", type(exc).__name__, exc)

    async def _store_batch(self, batch: _Batch, store: Store) -> None:
        """Store the batch's rows, retrying database trouble with backoff (entries pending).

        A permission error (``PermissionDeniedError``: the role lacks a privilege, the login
        is refused) is raised, not retried: no retry can cure it, and ``run`` ends with it
        (the CLI prints one line). A month without a partition that this role may not
        create (``PartitionMissingError``: the writer role) is transient: said once, in one
        line naming the month and the fix, then retried quietly until the maintenance side
        creates it; the entries stay pending, nothing is dead-lettered.
        """
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        waiting_for: list[str] | None = None  # partitions this batch waits for, once said
        while True:
            try:
                stored = await store_rows(store, batch.rows, attempts=self.max_attempts)
            except PermissionDeniedError:
                raise
            except PartitionMissingError as exc:
                _reraise_if_cancelled()
                self.counters.retried += 1
                delay = backoff.next()
                if waiting_for != exc.partitions:
                    waiting_for = exc.partitions
                    logger.error("%s", exc)
                else:
                    logger.debug("still no partition %s; retrying in %.1fs",
                                 ", ".join(exc.partitions), delay)
                await self._pause(delay)
                continue
            except Exception as exc:
                _reraise_if_cancelled()
                if isinstance(exc, ConfigurationError):
                    logger.error("%s", exc)
                self.counters.retried += 1
                delay = backoff.next()
                logger.warning(
                    "insert of %d rows failed (%s: %s); retrying in %.1fs, entries stay pending",
                    len(batch.rows), type(exc).__name__, exc, delay,
                )
                await store.close()
                # A warm stop still tries to commit the batch in hand, until its deadline.
                await self._pause(delay)
                continue
            if waiting_for is not None:
                logger.info("partition %s now exists: batch stored", ", ".join(waiting_for))
            self.counters.inserted += stored.inserted
            self.counters.duplicates_skipped += stored.duplicates
            for refused in stored.rejected:
                row = batch.rows[refused.index]
                logger.error("record %s rejected %d times (%s): dead-lettering it",
                             row["id"], refused.attempts, refused.error)
                ref = batch.refs[refused.index]
                self.counters.refused_by_database += 1
                batch.rejects.append(_Reject(
                    ref[0], self._wire_record(batch, ref),
                    f"{type(refused.error).__name__}: {refused.error}", refused.attempts,
                    reason="refused", position=ref[1], record_id=str(row["id"])))
            return

    async def _write_dead_letters(self, batch: _Batch) -> None:
        """Write the batch's dead letters, retrying with backoff until they are written (the
        entries stay pending meanwhile: a dead letter is never lost); a warm stop still
        tries until its deadline. ``PermissionDeniedError`` (the role may not write the
        table) is raised, as ``_store_batch`` raises it, the entries left pending."""
        if not batch.rejects:
            return
        letters = self._dead_letters(batch)
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        while True:
            try:
                await self.dead_letter_writer.write(letters)
            except PermissionDeniedError:
                raise  # no retry cures a missing privilege: run ends with one line
            except Exception as exc:
                _reraise_if_cancelled()
                self.counters.retried += 1
                delay = backoff.next()
                logger.warning(
                    "writing %d dead letters failed (%s: %s); retrying in %.1fs, entries stay "
                    "pending", len(letters), type(exc).__name__, str(exc).splitlines()[0][:500],
                    delay)
                await self._pause(delay)
                continue
            self.counters.dead_lettered += len(letters)
            logger.warning("dead-lettered %d records to %s", len(letters),
                           self.dead_letter_writer.table.name)
            return

    @staticmethod
    def _wire_record(batch: _Batch, ref: tuple[int, int]) -> bytes:
        """The record as the producer sent it, so an operator can fix and re-inject it.

        Each entry is decoded again once, however many of its records were refused."""
        try:
            wires = batch.decoded.get(ref[0])
            if wires is None:
                wires = batch.decoded[ref[0]] = decode_entry(batch.fields[ref[0]])[1]
            return orjson.dumps(wires[ref[1]], default=str)
        except Exception:
            return b"null"

    async def _maybe_ensure_partitions(self, store: Store, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_partition_check < self.partition_interval:
            return
        self._last_partition_check = now
        try:
            created = await store.ensure_partitions(self.months_ahead)
        except PermissionDeniedError:
            raise  # the role is refused more than partitions: run ends with one line
        except PartitionMissingError as exc:
            # The writer role makes no partitions: the maintenance side must, before those
            # months begin. Said once per partition_interval while they are missing.
            logger.warning("%s", exc)
            return
        except Exception as exc:  # retried at the next interval; inserts create months they need
            _reraise_if_cancelled()
            logger.warning("could not create upcoming partitions: %s", exc)
            return
        self.counters.partitions_created += len(created)

    async def _retrying(self, what: str, action: Any, *, past_stop: bool = False) -> bool:
        """Run ``action`` until it succeeds (True), retrying unreachable-service errors with
        backoff. A stop ends the retries (False), unless ``past_stop``: work that a warm stop
        still finishes, retried until the stop deadline cancels it."""
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        while True:
            if self._stopping.is_set() and not past_stop:
                logger.info("stop requested: no longer trying to %s", what)
                return False
            try:
                await action()
                return True
            except Exception as exc:
                _reraise_if_cancelled()
                wrong = wrong_redis_kind(exc, self.redis_url)
                if wrong is not None:
                    raise wrong from exc
                if not (isinstance(exc, StoreUnavailableError) or is_transient_redis_error(exc)):
                    raise
                self.counters.retried += 1
                delay = backoff.next()
                logger.warning("could not %s (%s); retrying in %.1fs", what, exc, delay)
                if past_stop:
                    await self._pause(delay)
                else:
                    await self._sleep(delay)

def _bound(name: str, value: float | None) -> int | float:
    """Input bound ``name``: the argument, else ``ACTIVITY_LOG_<NAME>``, else its default;
    ``ConfigurationError`` naming the argument (or the variable) unless positive."""
    kind, default = _BOUNDS[name]
    source = name
    if value is None:
        raw = os.environ.get(tunable_env(name), "").strip()
        if not raw:
            return default
        source = tunable_env(name)
        try:
            value = int(raw) if kind is int else float(raw)
        except ValueError:
            raise ConfigurationError(
                f"{source} must be a positive {kind.__name__}, got {raw!r}") from None
    require_positive(source, value, integer=kind is int)
    return value


async def _bounded_close(store: Store) -> None:
    """Close ``store`` within ``SETTLE_TIMEOUT`` s, else abort its connection; never raises."""
    try:
        await asyncio.wait_for(store.close(), SETTLE_TIMEOUT)
    except Exception:
        store.abort()
