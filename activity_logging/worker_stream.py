"""The worker's side of the Redis Stream: read, claim, check, decode, acknowledge, beat.

``StreamSide`` is the half of ``ActivityWorker`` that talks to Redis: it reads entries
through the consumer group (its own pending ones first, then new ones, and every
``claim_idle`` seconds the idle ones of other consumers with ``XAUTOCLAIM``), sizes each
up before decoding it (``entry_limits``: records and bytes per entry), decodes it once
into rows (``wire.decode_entry``, ``rows.build_activity``), refuses rows dated outside
the accepted window, and after the rows are committed and the refused ones written as
dead letters (``dead_letters``, by the worker) acknowledges and deletes the entries. It
also writes the heartbeat ``status`` reads. A mixin: it works on the worker's settings and
state, set up by ``ActivityWorker.__init__`` and ``run``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio as aioredis
from redis.exceptions import (
    ResponseError,
)

from ._internal import Backoff, as_text
from .config import DEFAULT_HEARTBEAT_TTL, heartbeat_key
from .dead_letters import WHOLE_ENTRY, DeadLetter
from .entry_limits import (
    MAX_EXCERPT_BYTES,
    entry_bytes,
    entry_excerpt,
    oversized,
    payload_bytes,
)
from .redis_errors import is_transient_redis_error, wrong_redis_kind
from .rows import build_activity
from .signing import KeyRing, SignatureError, SigningKey, check_entry, seal
from .wire import decode_entry

if TYPE_CHECKING:
    from .store import Store
    from .worker import WorkerCounters

logger: Final = logging.getLogger("activity_logging.worker")

#: The worker's one retry policy (``_internal.Backoff``): first delay and ceiling, in seconds.
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 30.0
@dataclass
class _Reject:
    """What becomes one dead letter: ``record`` is at most ``MAX_EXCERPT_BYTES`` of what was
    refused (``record_bytes`` and ``sha256`` describe the whole); ``position`` is the
    record's place in its entry, ``WHOLE_ENTRY`` for an entry refused as a whole."""

    entry: int
    record: bytes
    error: str
    attempts: int
    reason: str = "refused"
    position: int = WHOLE_ENTRY
    record_bytes: int = -1
    sha256: str = ""
    record_id: str | None = None

    def __post_init__(self) -> None:
        if self.record_bytes < 0:  # given whole: keep a bounded excerpt of it
            self.record_bytes = len(self.record)
            self.sha256 = hashlib.sha256(self.record).hexdigest()
            self.record = self.record[:MAX_EXCERPT_BYTES]


def _record_id(wire: Any) -> str | None:
    value = wire.get("id") if isinstance(wire, dict) else None
    return value[:64] if isinstance(value, str) else None


@dataclass(eq=False)
class Shard:
    """One stream a worker reads (the stream itself, or one of its shards) and the worker's
    state on it: where it reads, where its claims have got to, what it holds."""

    stream: str
    #: first this consumer's own pending entries (a restart under the same name), then ">"
    read_id: bytes = b"0"
    last_claim: float = 0.0
    claim_cursor: bytes = b"0-0"
    #: the batch the shard's reader is filling or handing over; a stop lets it reach the
    #: writers
    reading: _Batch | None = None
    #: entries read and not yet acknowledged: XAUTOCLAIM can hand them back to us when an
    #: insert outlasts claim_idle, and they must not be processed twice concurrently
    in_flight: set[bytes] = field(default_factory=set)
    records_per_entry: float = 1000.0  # corrected after the first read
    #: bytes per entry, as read lately (None until the first read): bounds how many entries
    #: one XREADGROUP asks for, so one reply holds about ``max_entry_bytes`` at most
    bytes_per_entry: float | None = None
    #: the reader is waiting with nothing in hand (a blocking read for new entries, or a
    #: read slot): the only state a warm stop cancels it in
    waiting: bool = False

    def partial(self) -> _Batch | None:
        """The batch being read, if it holds entries already."""
        return self.reading if self.reading is not None and self.reading.ids else None


@dataclass
class _Batch:
    """Entries read together from one shard, their rows, and where each row came from."""

    shard: Shard
    ids: list[bytes] = field(default_factory=list)
    fields: list[Mapping[Any, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    refs: list[tuple[int, int]] = field(default_factory=list)
    rejects: list[_Reject] = field(default_factory=list)
    read_at: float = 0.0  # time.monotonic() when the reader handed it to the writers
    # entries decoded again to dead-letter records the database refused (index -> records)
    decoded: dict[int, list[Any]] = field(default_factory=dict)


def _reraise_if_cancelled() -> None:
    """Re-raise a cancellation that a library turned into an ordinary exception.

    redis-py can catch ``CancelledError`` mid-command and raise a connection error instead;
    a loop that retries ordinary errors would then swallow a cold stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class StreamSide:
    """Reading and acknowledging entries, and the heartbeat (see the module docstring)."""

    # set up by ActivityWorker
    redis_url: str
    stream: str
    dead_stream: str
    group: str
    consumer: str
    batch_size: int
    max_wait: float
    read_count: int
    claim_idle: float
    heartbeat_interval: float
    keyring: KeyRing | None
    sealing_key: SigningKey | None
    counters: WorkerCounters
    store: Store
    stores: list[Store]
    started_at: float
    max_entry_records: int
    max_entry_bytes: int
    max_json_bytes: int
    max_age: float
    max_future: float
    _redis: aioredis.Redis | None
    _stopping: asyncio.Event
    _heartbeat: asyncio.Task[None] | None
    #: the streams read: the stream itself, or its ``stream_shards`` shards
    shards: list[Shard]
    #: each shard's reader task, once the reading has started
    _shard_readers: list[tuple[Shard, asyncio.Task[None]]]

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _retrying(self, what: str, action: Callable[[], Awaitable[Any]], *,
                        past_stop: bool = False) -> bool:
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> bool:
        raise NotImplementedError

    async def _maybe_ensure_partitions(self, store: Store, *, force: bool = False) -> None:
        raise NotImplementedError

    @property
    def _r(self) -> aioredis.Redis:
        assert self._redis is not None, "run() owns the Redis client"
        return self._redis

    async def _start_and_read(
        self, queue: asyncio.Queue[_Batch | None], stop_when_idle: bool
    ) -> None:
        """Connect, beat once, then read every shard until a stop (or, one-shot, until idle)."""
        self._shard_readers = []  # a run's own (a stop before the readers exist cancels this)
        if not await self._retrying("connect to PostgreSQL", self.store.connect):
            return
        for shard in self.shards:
            if not await self._ensure_group(shard):
                return
        # The first heartbeat before the first read: `status` sees a live worker at once.
        await self._beat()
        self._heartbeat = asyncio.create_task(
            self._heartbeat_loop(), name="activity-worker-heartbeat")
        await self._maybe_ensure_partitions(self.store, force=True)
        await self._read_shards(queue, stop_when_idle)

    async def _read_shards(self, queue: asyncio.Queue[_Batch | None], stop_when_idle: bool) -> None:
        """One reader task per shard, all feeding the writers' queue (a read cannot span
        shards: on a Redis Cluster they live on different nodes). Returns when every reader
        has; the first reader to fail ends the others and raises its error. A reader that a
        warm stop finds idle is cancelled by ``_drain``, one holding entries hands them over.
        """
        # Batches in the readers' hands at once, whatever the shard count: with the queue's
        # slots and the writers' batches, what a worker holds stays a few batches.
        slots = asyncio.Semaphore(min(len(self.shards), len(self.stores) + 1))
        tasks = [asyncio.create_task(self._reader_loop(shard, queue, stop_when_idle, slots),
                                     name=f"activity-worker-reader-{shard.stream}")
                 for shard in self.shards]
        self._shard_readers = list(zip(self.shards, tasks, strict=True))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _cancel_idle_readers(self, reader: asyncio.Task[None]) -> None:
        """A warm stop: read nothing more. Cancels the connecting, and each shard reader
        waiting with nothing in hand (blocked for new entries, or for a read slot: an entry
        arriving in the very instant of the cancel stays pending, for the next start or a
        claim). A reader in the middle of a read or holding entries is left to finish: it
        hands what it holds to the writers and stops at its next turn (a backoff ends on the
        stop by itself)."""
        if reader.done():
            return
        if not self._shard_readers:  # still connecting
            reader.cancel()
            return
        for shard, task in self._shard_readers:
            if not task.done() and shard.waiting and shard.partial() is None:
                task.cancel()

    async def _ensure_group(self, shard: Shard) -> bool:
        """Create the group (and stream) if missing; False when a stop came first."""
        async def create() -> None:
            try:
                await self._r.xgroup_create(shard.stream, self.group, id="0", mkstream=True)
                logger.info("created consumer group %r on %r", self.group, shard.stream)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return await self._retrying("create the consumer group", create)

    async def _reader_loop(self, shard: Shard, queue: asyncio.Queue[_Batch | None],
                           stop_when_idle: bool, slots: asyncio.Semaphore) -> None:
        """Read ``shard`` into the writers' queue.

        The blocking wait for new entries happens outside the read ``slots`` and takes one
        entry at most (``_await_entry``): an idle shard never holds a slot, so a busy one is
        never kept waiting behind idle ones. Filling a batch holds a slot until the batch
        is queued: the batches in the readers' hands are bounded by the slots, the entries
        waiting for one by the shard count (one each), whatever the backlog.
        """
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        while not self._stopping.is_set():
            _reraise_if_cancelled()
            shard.reading = None
            try:
                started = await self._await_entry(shard)
                if started is None:
                    if stop_when_idle and shard.read_id == b">":
                        return
                    continue
                shard.waiting = not started.ids
                try:
                    await slots.acquire()
                finally:
                    shard.waiting = False
                try:
                    if started.ids:  # the entry that ended the wait, then what follows it
                        batch = await self._read_batch(shard, started)
                    else:
                        batch = await self._claim_batch(shard) or await self._read_batch(shard)
                    if batch.ids:
                        batch.read_at = time.monotonic()
                        # not cancelled by a warm stop: the batch is in hand
                        await queue.put(batch)
                finally:
                    slots.release()
            except Exception as exc:
                _reraise_if_cancelled()  # redis-py may have turned our cancel into an error
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    self.counters.group_recreated += 1
                    logger.warning(
                        "consumer group %r of %r vanished (Redis restarted without "
                        "persistence?); recreating it from id 0", self.group, shard.stream)
                    await self._ensure_group(shard)
                    continue
                wrong = wrong_redis_kind(exc, self.redis_url)
                if wrong is not None:
                    raise wrong from exc
                if not is_transient_redis_error(exc):
                    raise
                self.counters.retried += 1
                delay = backoff.next()
                logger.warning("reading %r failed (%s); retrying in %.1fs", shard.stream, exc,
                               delay)
                await self._sleep(delay)
                continue
            backoff.reset()
            if not batch.ids and stop_when_idle and shard.read_id == b">":
                return

    async def _await_entry(self, shard: Shard) -> _Batch | None:
        """Wait, holding no read slot, until ``shard`` has work: a batch holding the one
        new entry that arrived (``XREADGROUP COUNT 1 BLOCK max_wait``), an empty batch when
        there is work to do at once (this consumer's own pending entries, or a claim due),
        or None when ``max_wait`` passed without any."""
        if shard.read_id != b">" or self._claim_due(shard):
            return _Batch(shard)
        shard.waiting = True
        try:
            response: Any = await self._r.xreadgroup(
                self.group, self.consumer, {shard.stream: b">"}, count=1,
                block=int(self.max_wait * 1000))
        finally:
            shard.waiting = False
        entries = response[0][1] if response else []
        if not entries:
            return None
        batch = shard.reading = _Batch(shard)  # in hand: a warm stop lets it reach the writers
        self._add_entries(batch, entries)
        return batch

    async def _read_batch(self, shard: Shard, batch: _Batch | None = None) -> _Batch:
        """Fill ``batch`` (a new one by default) from ``shard`` without waiting: this
        consumer's pending entries first, then new ones, until ``batch_size`` rows or the
        shard has no more. A read that fails once the batch holds entries ends the batch
        with what it holds (the failure comes again at the next read, and is retried)."""
        if batch is None:
            batch = _Batch(shard)
        shard.reading = batch
        while len(batch.rows) < self.batch_size and not self._stopping.is_set():
            reading_pending = shard.read_id != b">"
            # Entries carry many records each: ask for about as many as fill the batch.
            wanted = (self.batch_size - len(batch.rows)) / shard.records_per_entry
            # ...and no more than about max_entry_bytes of them: Redis sends a reply whole,
            # so big entries are read one at a time (one, until their size is known).
            room = self.max_entry_bytes / (shard.bytes_per_entry or self.max_entry_bytes)
            count = max(1, min(self.read_count, int(wanted + 0.999), int(room)))
            try:
                response: Any = await self._r.xreadgroup(
                    self.group, self.consumer, {shard.stream: shard.read_id}, count=count)
            except Exception as exc:
                _reraise_if_cancelled()
                if not batch.ids or not is_transient_redis_error(exc):
                    raise
                logger.warning("reading %r failed (%s) with %d entries in hand: storing "
                               "those first", shard.stream, exc, len(batch.ids))
                return batch
            entries = response[0][1] if response else []
            if reading_pending:
                if not entries:
                    shard.read_id = b">"
                    continue
                shard.read_id = entries[-1][0]
            self._add_entries(batch, entries)
            if len(entries) < count and not reading_pending:
                break
        return batch

    def _claim_due(self, shard: Shard) -> bool:
        """A claim pass is due on ``shard``: every ``min(claim_idle, 30) / 2`` seconds, and
        at once while a pass is under way (its cursor is not back at ``0-0``)."""
        wait = min(self.claim_idle, 30.0) / 2
        return time.monotonic() - shard.last_claim >= wait or shard.claim_cursor != b"0-0"

    async def _claim_batch(self, shard: Shard) -> _Batch | None:
        if not self._claim_due(shard):
            return None
        shard.last_claim = time.monotonic()
        room = self.max_entry_bytes / (shard.bytes_per_entry or self.max_entry_bytes)
        result: Any = await self._r.xautoclaim(
            shard.stream, self.group, self.consumer, min_idle_time=int(self.claim_idle * 1000),
            start_id=shard.claim_cursor, count=max(1, min(self.read_count, int(room))),
        )
        shard.claim_cursor = result[0] if isinstance(result[0], bytes) else str(result[0]).encode()
        if len(result) > 2 and result[2]:  # Redis 7: pending ids whose entries no longer exist
            self.counters.entries_vanished += len(result[2])
            logger.warning("%d pending entries had been deleted from the stream: their records "
                           "are lost in transit", len(result[2]))
        entries = [e for e in result[1] if e[0] not in shard.in_flight]
        if not entries:
            return None
        self.counters.claimed += len(entries)
        logger.info("claimed %d idle entries of %r from other consumers", len(entries),
                    shard.stream)
        batch = shard.reading = _Batch(shard)
        self._add_entries(batch, entries)
        return batch

    def _add_entries(self, batch: _Batch, entries: list[Any]) -> None:
        """Check, decode and build the rows of ``entries`` into ``batch``; what is refused
        becomes a bounded ``_Reject`` (a dead letter), counted under its ``refused_*`` name.

        An entry over ``max_entry_records`` / ``max_entry_bytes`` is refused from its fields'
        sizes alone, before it is decoded (an ``n`` that lied is caught after decoding); a
        row dated outside ``[now - max_age, now + max_future]`` is refused before it reaches
        the store, so no partition is ever made for it.
        """
        counters = self.counters
        shard = batch.shard
        records_before = counters.read
        read_bytes = 0
        now = time.time()
        earliest = datetime.fromtimestamp(now - self.max_age, UTC)
        latest = datetime.fromtimestamp(now + self.max_future, UTC)
        for entry_id, fields in entries:
            index = len(batch.ids)
            batch.ids.append(entry_id)
            shard.in_flight.add(entry_id)
            counters.entries_read += 1
            if not fields:  # deleted while pending: nothing to store, just acknowledge
                batch.fields.append({})
                counters.entries_vanished += 1
                logger.warning("entry %s was deleted from the stream while pending: its records "
                               "are lost in transit", as_text(entry_id))
                continue
            size = entry_bytes(fields)
            read_bytes += size
            too_big = oversized(fields, max_records=self.max_entry_records,
                                max_bytes=self.max_entry_bytes, size=size)
            if too_big is not None:
                # Never decoded, and not kept: the batch holds a bounded excerpt of it only.
                batch.fields.append({})
                self._refuse_entry(batch, index, fields, too_big, "oversized")
                counters.refused_oversized += 1
                continue
            try:  # before decoding: a forged entry costs one HMAC, nothing more
                auth = check_entry(fields, self.keyring)
            except SignatureError as exc:
                batch.fields.append({})
                self._refuse_entry(batch, index, fields, str(exc), "bad_signature")
                counters.refused_signature += 1
                continue
            batch.fields.append(fields)
            try:
                meta, wires = decode_entry(fields)
            except Exception as exc:
                # Decoding is a pure function of the bytes: a retry cannot succeed.
                batch.fields[index] = {}
                self._refuse_entry(batch, index, fields, f"{type(exc).__name__}: {exc}",
                                   "undecodable")
                counters.refused_undecodable += 1
                continue
            if auth is not None and auth.n != len(wires):  # signed by a producer with a bug
                batch.fields[index] = {}
                self._refuse_entry(batch, index, fields, (
                    f"signed entry says n={auth.n} but holds {len(wires)} records"), "bad_signature")
                counters.refused_signature += 1
                continue
            if len(wires) > self.max_entry_records:  # its ``n`` said fewer
                batch.fields[index] = {}
                self._refuse_entry(batch, index, fields, (
                    f"entry of {len(wires)} records is over the limit of "
                    f"{self.max_entry_records} records per entry"), "oversized")
                counters.refused_oversized += 1
                continue
            # No value in the entry can encode larger than about its payload: when that is
            # well under max_json_bytes, build_activity skips measuring metadata and changes.
            meta["_bytes"] = len(payload_bytes(fields))
            counters.read += len(wires)
            for position, wire in enumerate(wires):
                try:
                    row = build_activity(wire, meta, max_json_bytes=self.max_json_bytes)
                except Exception as exc:
                    counters.refused_malformed += 1
                    batch.rejects.append(_Reject(
                        index, orjson.dumps(wire, default=str), f"{type(exc).__name__}: {exc}", 1,
                        reason="malformed", position=position, record_id=_record_id(wire),
                    ))
                    continue
                if not earliest <= row["timestamp"] <= latest:
                    counters.refused_out_of_window += 1
                    batch.rejects.append(_Reject(
                        index, orjson.dumps(wire, default=str),
                        f"timestamp {row['timestamp'].isoformat()} is outside the accepted "
                        f"window {earliest.isoformat()} .. {latest.isoformat()} (max_age "
                        f"{self.max_age:g}s, max_future {self.max_future:g}s)", 1,
                        reason="out_of_window", position=position, record_id=str(row["id"]),
                    ))
                    continue
                if auth is not None:
                    seal(row, self.sealing_key, auth, position)
                batch.rows.append(row)
                batch.refs.append((index, position))
        if entries:
            per_entry = (counters.read - records_before) / len(entries)
            shard.records_per_entry = max(1.0, 0.5 * shard.records_per_entry + 0.5 * per_entry)
            seen = read_bytes / len(entries)
            # a jump up counts at once (the next read is kept small), a fall by halves
            shard.bytes_per_entry = max(
                1.0, seen, 0.5 * (shard.bytes_per_entry or seen) + 0.5 * seen)

    def _refuse_entry(self, batch: _Batch, index: int, fields: Mapping[Any, Any], error: str,
                      reason: str) -> None:
        """Refuse a whole entry: one ``_Reject`` holding a bounded excerpt of it."""
        text, size, digest = entry_excerpt(fields)
        batch.rejects.append(_Reject(index, text.encode(), error, 1, reason=reason,
                                     record_bytes=size, sha256=digest))

    def _dead_letters(self, batch: _Batch) -> list[DeadLetter]:
        """The batch's rejects as the dead letters to write (bounded: see ``_Reject``)."""
        return [DeadLetter(
            reason=reject.reason, source_stream=batch.shard.stream,
            source_id=as_text(batch.ids[reject.entry]), position=reject.position,
            error=reject.error, attempts=reject.attempts,
            record=reject.record.decode("utf-8", "replace").replace("\x00", "\ufffd"),
            record_bytes=reject.record_bytes, record_sha256=reject.sha256,
            record_id=reject.record_id, consumer=self.consumer,
        ) for reject in batch.rejects]

    async def _finish(self, batch: _Batch) -> None:
        """Acknowledge and delete every entry of the batch.

        Called only once the rows are committed and the dead letters written (by the
        worker, to ``activity_log_dead_letters``): a failure before leaves the entries
        pending, so nothing is acknowledged that is neither stored nor dead-lettered.
        """
        # Not MULTI: a Redis over maxmemory refuses every command queued in a transaction, so
        # the worker could never delete entries and free the memory. XACK and XDEL alone are
        # accepted. A crash between them leaves an acknowledged entry in the stream: it is
        # never delivered again (only its bytes stay behind); nothing is lost or stored twice.
        stream = batch.shard.stream
        pipe = self._r.pipeline(transaction=False)
        pipe.xack(stream, self.group, *batch.ids)
        pipe.xdel(stream, *batch.ids)
        await pipe.execute()
        batch.shard.in_flight.difference_update(batch.ids)
        self.counters.acked += len(batch.ids)

    # --- heartbeat -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not await self._sleep(self.heartbeat_interval):
            await self._beat()

    async def _beat(self) -> None:
        """``SET`` the heartbeat key; never raises (a missed beat must never stop the drain).

        Works before the stream or the group exists: the lag gauges are then left as they
        were, and the beat is written all the same.
        """
        try:
            await self._update_lag()
        except Exception as exc:
            _reraise_if_cancelled()  # redis-py may have swallowed our cancel mid-command
            logger.debug("could not read the group's lag: %s", exc)
        payload = orjson.dumps({
            "consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
            "ts": time.time(), "stream": self.stream, "shards": len(self.shards),
            "group": self.group,
            "started": self.started_at, "counters": self.stats(),
        })
        try:
            await self._r.set(heartbeat_key(self.stream, self.consumer), payload,
                              ex=int(DEFAULT_HEARTBEAT_TTL))
        except Exception as exc:
            _reraise_if_cancelled()
            logger.debug("heartbeat failed: %s", exc)

    async def _update_lag(self) -> None:
        """The group's lag and pending count, summed over the shards (lag None when Redis
        cannot say it for one of them)."""
        lag: int | None = 0
        pending = 0
        for shard in self.shards:
            for info in await self._r.xinfo_groups(shard.stream):
                if as_text(info.get("name")) == self.group:
                    shard_lag = info.get("lag")
                    lag = None if lag is None or shard_lag is None else lag + int(shard_lag)
                    pending += int(info.get("pending", 0))
                    break
            else:
                return  # a shard without the group yet: leave the gauges as they were
        self.counters.lag, self.counters.pending = lag, pending
