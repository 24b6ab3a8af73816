"""``ActivityHandler``: a ``QueueHandler`` that owns a bounded queue and the thread that ships it.

The caller's side (``emit``) is kept tiny: refuse our own loggers, snapshot the record into a
tuple, append it to a bounded deque, count. It never blocks and never raises. The listener
thread takes batches from the deque, encodes each batch into one stream entry (orjson) and
hands entries to a sink: the Redis Stream, or the database directly (embedded SQLite default).
When the sink fails it backs off (1 s doubling up to 30 s) and either holds the batch in hand (the
deque then fills and further records are dropped and counted) or, with ``spool_path``, writes
entries to a local spool that is replayed on reconnect. Every record that does not reach the
sink is counted in ``stats()``.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue as queue_mod
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from typing import Any, Final

from . import config
from ._internal import is_refused_logger, reporter
from .exceptions import ConfigurationError, EntryFormatError
from .redact import DEFAULT_REDACT_KEYS, Redactor
from .sinks import Sink, make_sink
from .snapshot import QueuedRecord, Snapshotter, queued_size
from .spool import ReplayResult, Spool, SpoolReplayError
from .wire import Batch, Entry, WireEncoder

_MAX_ENTRIES_PER_SEND: Final = 8
_REFUSED_CACHE_LIMIT: Final = 10_000

_COUNTERS: Final = (
    "enqueued", "sent", "batches_sent", "dropped_queue_full", "dropped_closed", "dropped_emit_error",
    "refused", "listener_errors", "send_failures", "send_timeouts", "reconnects",
    "spooled", "spool_replayed", "spool_adopted", "spool_adopted_damaged", "spool_write_failures",
    "dropped_spool_full", "dropped_unencodable", "lost", "lost_spool_damaged", "unconfirmed",
)
# Outcomes of accepted records other than "sent" and "spooled": with the gauges they balance
# ``enqueued`` (see ``ActivityHandler.stats``).
_LOSS_OUTCOMES: Final = (
    "dropped_spool_full", "dropped_unencodable", "lost", "lost_spool_damaged", "unconfirmed",
)
_FLUSH_THEN_CLOSE_WINDOW: Final = 1.0  # a close this soon after a timed-out flush shares its budget
_Held = tuple[Batch, int, bool]  # (batch, records, maybe stored)


class _ReplayStopped(Exception):
    """A spool replay interrupted on purpose: a close began, or its budget ran out."""


_SENT: Final = 0
_FAILED: Final = 1
_UNCONFIRMED: Final = 2

_live_handlers: weakref.WeakSet[ActivityHandler] = weakref.WeakSet()


class _BoundedQueueView:
    """The ``QueueHandler.queue`` face of the handler's bounded deque (for code that expects one)."""

    def __init__(self, handler: ActivityHandler) -> None:
        self._handler = handler

    @property
    def maxsize(self) -> int:
        return self._handler.queue_size

    def qsize(self) -> int:
        return len(self._handler._dq)

    def empty(self) -> bool:
        return not self._handler._dq

    def full(self) -> bool:
        return len(self._handler._dq) >= self._handler.queue_size

    def put_nowait(self, item: logging.LogRecord) -> None:
        """Enqueue a record as ``emit`` would; raises ``queue.Full`` when the queue is full."""
        if self.full():
            raise queue_mod.Full
        self._handler.emit(item)


class ActivityListener:
    """``handler.listener``: the handler's own listener. ``start()`` is idempotent.

    Python 3.12+'s ``dictConfig`` assigns a stock ``QueueListener`` to ``.listener``; the
    handler ignores that assignment and keeps this one, so the cookbook's
    ``handler.listener.start()`` / ``atexit.register(handler.listener.stop)`` still work.
    """

    def __init__(self, handler: ActivityHandler) -> None:
        self._handler = weakref.ref(handler)

    def start(self) -> None:
        handler = self._handler()
        if handler is not None:
            handler._start_listener()

    def stop(self) -> None:
        handler = self._handler()
        if handler is not None:
            handler._stop_listener()


class ActivityHandler(logging.handlers.QueueHandler):
    """Ships log records as activities: bounded queue → listener thread → Redis Stream or store.

    Every argument is a plain value so ``logging.config.dictConfig`` can build it (``'()'`` or
    ``"class"``). With no ``redis_url`` (argument or ``REDIS_URL``) records go straight to the
    database at ``database_url`` (argument or ``DATABASE_URL``; default the embedded
    ``sqlite:///activity_logs.db``).

    Args:
        queue: Ignored. Accepted because Python 3.12+'s ``dictConfig`` passes an unbounded
            ``queue.Queue()`` positionally; the handler always keeps its own bounded queue.
        redis_url: Redis to ship to (``redis://``, ``rediss://``, ``unix://``).
        stream: Stream name (default ``activity_log_stream`` or ``ACTIVITY_LOG_STREAM``).
        database_url: Store written directly when no Redis is configured.
        schema: PostgreSQL schema of the table in direct mode (``ACTIVITY_LOG_SCHEMA``).
        queue_size: Records held in memory at most; beyond it records are dropped and counted.
        queue_max_bytes: Approximate bytes of queued records at most (messages and ``extra``);
            beyond it records are dropped and counted like a full queue.
        batch_size: Records per stream entry at most.
        flush_interval: Seconds a record may wait for its batch to fill before it is shipped.
        spool_path: Directory for the local spool used while Redis is down. Default (also
            ``ACTIVITY_LOG_SPOOL_PATH``): on when shipping to Redis, in the per-user state
            directory (``~/.local/state/activity_logging/spool/<server+stream>``); ``"off"``
            or ``""`` switch it off. Direct mode spools only where a path is given.
        spool_max_bytes: Size limit of this producer's spool file.
        max_record_bytes: Encoded size limit of one record; larger ones are cut and counted.
        redact_keys: Comma-separated key fragments whose values are replaced by ``[REDACTED]``.
        context_filter: Add the current request context (``activity_context``, the middleware)
            to every record, never overwriting ``extra``: what ``ContextFilter`` does, done
            inside ``emit`` (still in the caller's thread) because a filter costs a few
            microseconds more per record. The record itself is left unchanged.
        close_timeout: Seconds ``close()`` (and a bare ``flush()``) wait for the sink, in total:
            what is not delivered by then is spooled or counted. ``logging.shutdown()``'s
            flush-then-close shares one budget.
        reconnect_delay: First back-off delay after a failed send; doubles up to 30 s.
        direct: Write straight to ``database_url`` even when ``REDIS_URL`` is set.
        handlers, listener, respect_handler_level: Ignored (``handlers`` must be empty).
            Accepted because ``dictConfig``'s ``"class"`` form treats every ``QueueHandler``
            specially: Python 3.12 refuses one without a ``handlers`` key, and 3.11 then
            passes that key on to the constructor.

    ``emit`` never blocks and never raises; ``flush``/``close`` are bounded in time; ``close``
    is idempotent. Thread-safe; survives ``os.fork()`` (the child gets its own listener).
    """

    def __init__(
        self,
        queue: Any = None,
        *,
        redis_url: str | None = None,
        stream: str | None = None,
        database_url: str | None = None,
        schema: str | None = None,
        queue_size: int | None = None,
        queue_max_bytes: int | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        spool_path: str | None = None,
        spool_max_bytes: int | None = None,
        max_record_bytes: int | None = None,
        redact_keys: str = DEFAULT_REDACT_KEYS,
        context_filter: bool = True,
        close_timeout: float | None = None,
        reconnect_delay: float | None = None,
        direct: bool = False,
        level: int | str = logging.NOTSET,
        handlers: Any = None,
        listener: Any = None,
        respect_handler_level: Any = None,
        **unknown: Any,
    ) -> None:
        if queue is not None and sys.version_info[:2] == (3, 12):
            dropped = _arguments_dropped_by_dictconfig()
            if dropped:  # built as klass(queue) by a 3.12 dictConfig: build as configured
                ActivityHandler.__init__(self, **dropped)
                return
        # Everything is checked before logging.Handler.__init__ registers the handler with the
        # logging module: a handler that fails to build is never left behind for exit to close.
        if unknown:
            raise ConfigurationError(_unknown_arguments(unknown))
        if handlers:  # Python 3.12's dictConfig demands the key for the "class" form: [] is fine
            raise ConfigurationError(
                "ActivityHandler ships records itself: 'handlers' must be empty or absent, "
                f"got {handlers!r}")
        tuned = {name: config.resolve_tunable(name, value) for name, value in (
            ("queue_size", queue_size), ("queue_max_bytes", queue_max_bytes),
            ("batch_size", batch_size), ("flush_interval", flush_interval),
            ("spool_max_bytes", spool_max_bytes), ("max_record_bytes", max_record_bytes),
            ("close_timeout", close_timeout), ("reconnect_delay", reconnect_delay),
        )}
        if tuned["max_record_bytes"] < 1024:
            raise ConfigurationError(
                f"max_record_bytes must be at least 1024, got {tuned['max_record_bytes']!r}")
        redis_url = None if direct else config.resolve_redis_url(redis_url)
        stream = config.resolve_stream(stream)
        database_url = config.resolve_database_url(database_url, default=config.DEFAULT_SQLITE_URL)
        schema = config.resolve_schema(schema)
        if not redis_url and database_url:
            from .urls import normalize_async_url

            normalize_async_url(database_url)  # validates the URL's form now, not at first send
        resolved_spool = config.resolve_spool_path(
            spool_path if spool_path is not None or redis_url else "",
            redis_url=redis_url, stream=stream,
        )
        logging.Handler.__init__(self, level)
        self.redis_url, self.stream, self.database_url, self.schema = (
            redis_url, stream, database_url, schema)
        self.queue_size = int(tuned["queue_size"])
        self.queue_max_bytes = int(tuned["queue_max_bytes"])
        self.batch_size = int(tuned["batch_size"])
        self.flush_interval = float(tuned["flush_interval"])
        self.spool_path = resolved_spool
        self.spool_max_bytes = int(tuned["spool_max_bytes"])
        self.max_record_bytes = int(tuned["max_record_bytes"])
        self.redact_keys = redact_keys
        self.close_timeout = float(tuned["close_timeout"])
        self.reconnect_delay = float(tuned["reconnect_delay"])
        self.max_reconnect_delay = 30.0
        self.context_filter = context_filter
        self._listener_face = ActivityListener(self)
        self._refused_cache: dict[str, bool] = {}
        self._closed = False
        # A send must give up before close() does, so that close can still spool what it held.
        self._send_timeout = min(5.0, max(0.25, self.close_timeout / 2))
        self._flush_timed_out: tuple[float, float] | None = None  # (started, ended) of a bare flush
        self._init_runtime()
        _live_handlers.add(self)
        _install_multiprocessing_exit_hook()
        self._start_listener()

    # --- QueueHandler compatibility ----------------------------------------------------

    @property  # type: ignore[override]
    def queue(self) -> _BoundedQueueView:
        """A ``queue.Queue``-like view of the bounded queue (assignments are ignored)."""
        return self._queue_view

    @queue.setter
    def queue(self, _value: Any) -> None:
        pass  # 3.12+ dictConfig hands us an unbounded queue: keep our own bounded one

    @property
    def listener(self) -> ActivityListener:
        """The handler's own listener (assignments of other listeners are ignored)."""
        return self._listener_face

    @listener.setter
    def listener(self, value: Any) -> None:
        pass  # see ActivityListener: a stock QueueListener on the unbounded queue is never used

    def prepare(self, record: logging.LogRecord) -> Any:
        """Not used by this handler's own ``emit``; kept for code calling it directly."""
        return record

    # --- runtime state (also rebuilt in a forked child) ----------------------------------

    def _init_runtime(self) -> None:
        self._dq: deque[QueuedRecord] = deque()
        self._queue_view = _BoundedQueueView(self)
        self.producer_id = uuid.uuid4().hex[:16]
        self._redactor = Redactor(self.redact_keys)
        self._snapshot = Snapshotter(max_record_bytes=self.max_record_bytes,
                                     redactor=self._redactor, context=self.context_filter)
        self._encoder = WireEncoder(self.producer_id)
        self._sink: Sink = make_sink(self.redis_url, self.stream, self.database_url or "", self.schema,
                                     socket_timeout=self._send_timeout)
        self._spool = (
            Spool(self.spool_path, self.producer_id, self.spool_max_bytes) if self.spool_path else None
        )
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._prepare_sink()
        self._done = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._waiting = False
        self._wake_at = 1
        self._urgent = False
        self._stop_requested = False
        self._close_when_done = False
        self._give_up_at: float | None = None
        self._replay_until = 0.0
        # entries in hand after a failed send, each with whether a send of it got no answer
        # (it may be stored: counted "unconfirmed", never "lost", if it is given up)
        self._held: list[_Held] = []
        self._in_flight = 0  # taken from the queue, not yet sent/spooled/lost: counts against queue_size
        # bytes of queued records: added by callers (under the handler lock), removed by the
        # listener; two counters, each written by one side only, so neither needs a lock
        self._bytes_in = 0
        self._bytes_out = 0
        self._down_until = 0.0
        self._backoff = self.reconnect_delay
        self._thread: threading.Thread | None = None

    # --- the caller's side -------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Snapshot and enqueue ``record``. Never blocks, never raises."""
        try:
            counts = self._counts
            if self._closed:
                counts["dropped_closed"] += 1
                return
            name = record.name
            refused = self._refused_cache.get(name)
            if refused is None:
                refused = self._remember_refusal(name)
            if refused:
                counts["refused"] += 1
                return
            dq = self._dq
            if (len(dq) + self._in_flight >= self.queue_size
                    or self._bytes_in - self._bytes_out >= self.queue_max_bytes):
                counts["dropped_queue_full"] += 1
                return
            item = self._snapshot.take(record)
            dq.append(item)
            self._bytes_in += queued_size(item)
            counts["enqueued"] += 1
            if self._waiting and len(dq) >= self._wake_at:
                self._wake.set()
        except Exception:
            self.handleError(record)

    def _remember_refusal(self, name: str) -> bool:
        refused = is_refused_logger(name)
        if len(self._refused_cache) < _REFUSED_CACHE_LIMIT:
            self._refused_cache[name] = refused
        return refused

    def handleError(self, record: logging.LogRecord) -> None:
        """Count the record as dropped and report it (rate-limited); no traceback per record."""
        self._counts["dropped_emit_error"] += 1
        reporter.report("emit", f"could not enqueue a record from logger {record.name!r}")

    # --- the listener thread -----------------------------------------------------------

    def _start_listener(self) -> None:
        with self._cond:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop_requested = False
            self._give_up_at = None
            self._thread = threading.Thread(
                target=self._run, name=f"activity-listener-{self.producer_id}", daemon=True
            )
            self._thread.start()

    def _prepare_sink(self) -> None:
        """Import and build what the listener will need, now, in the constructing thread.

        Never lazily in the listener: a short script's first send happens during interpreter
        shutdown, when imports that register ``atexit`` callbacks fail (every record was lost).
        Building clients touches no network, so a handler made while Redis is down works.
        """
        try:
            self._sink.prepare()
        except Exception as exc:  # e.g. an unwritable SQLite path: sends will retry and count
            self._counts["listener_errors"] += 1
            reporter.report("prepare", "could not prepare the sink", exc)

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    break
            except Exception as exc:  # a bug must not kill the listener
                self._counts["listener_errors"] += 1
                reporter.report("listener", "listener loop error", exc)
                time.sleep(0.1)
        if self._close_when_done:
            self._release()

    def _step(self) -> bool:
        """One turn of the listener; False when it should exit."""
        now = time.monotonic()
        if self._held or (self._down_until > now and self._spool is None):
            if self._give_up_now(now):
                self._give_up()  # what is in hand and still queued: spooled, else counted
                return not self._stop_requested
            if self._down_until > now:
                self._sleep(min(self._down_until - now, 0.25))
                return True
            if self._held:
                held = self._held
                outcome = self._deliver([e for e, _, _ in held])
                if outcome == _SENT:
                    self._held = []
                    self._account(sum(n for _, n, _ in held), "sent", batches=len(held))
                else:
                    held = [(e, n, maybe or outcome == _UNCONFIRMED) for e, n, maybe in held]
                    self._held = held
                    if self._spool is not None:  # the spool failed before; it may have room now
                        self._held = []
                        self._to_spool(held)
                return True
        spool = self._spool
        if spool is not None and self._down_until <= now:
            if not self._stop_requested and spool.has_pending():
                self._replay_spool()  # then on to the queue: fresh records must not wait behind it
            elif self._stop_requested and spool.pending_records and now < self._replay_until:
                self._replay_spool(orphans=False)  # closing with Redis up: leave nothing on disk
        dq = self._dq
        if not dq:
            if self._stop_requested:
                return False
            self._idle_wait()
            return True
        if len(dq) < self.batch_size and not self._urgent and not self._stop_requested:
            self._linger()
        batches: list[Batch] = []
        while dq and len(batches) < _MAX_ENTRIES_PER_SEND:
            made = self._batch(self._take(self.batch_size))
            if made is not None:
                batches.append(made)
            if len(dq) < self.batch_size:
                break
        if not batches:
            return True
        now = time.monotonic()
        if self._stop_requested and now >= self._replay_until:
            # closing, and a send started now could outlast the budget: spool, else count
            self._held.extend((b, b.n, False) for b in batches)
            self._give_up()
            return True
        if self._down_until > now and self._spool is not None:
            self._to_spool([(b, b.n, False) for b in batches])
            return True
        outcome = self._deliver(batches)
        if outcome == _SENT:
            self._account(sum(b.n for b in batches), "sent", batches=len(batches))
        elif self._spool is not None:  # resent from the spool later: the ids make that safe
            self._to_spool([(b, b.n, outcome == _UNCONFIRMED) for b in batches])
        else:
            self._held = [(b, b.n, outcome == _UNCONFIRMED) for b in batches]
        return True

    def _batch(self, items: list[QueuedRecord]) -> Batch | None:
        """One batch for ``items``, secrets redacted; records that cannot be encoded are
        counted, alone."""
        encoder = self._encoder
        before = encoder.unencodable
        try:
            for i, body in self._redactor.redact_records(items).items():
                items[i] = body
            batch = encoder.batch(items)
        except Exception as exc:  # a bug: never seen, but it must not stop the listener
            self._counts["listener_errors"] += 1
            self._account(len(items), "dropped_unencodable")
            reporter.report("encode", f"could not stamp a batch of {len(items)} records", exc)
            return None
        dropped = encoder.unencodable - before
        if dropped:
            self._account(dropped, "dropped_unencodable")
            reporter.report("encode", f"{dropped} record(s) could not be encoded and were dropped")
        return batch if batch.n else None

    def _take(self, limit: int) -> list[QueuedRecord]:
        dq = self._dq
        popleft = dq.popleft
        n = min(limit, len(dq))
        self._in_flight += n
        items = [popleft() for _ in range(n)]
        self._bytes_out += sum(map(queued_size, items))
        return items

    def _idle_wait(self) -> None:
        self._wake.clear()
        self._wake_at = 1
        self._waiting = True
        if not self._dq and not self._urgent and not self._stop_requested:
            self._wake.wait(1.0)
        self._waiting = False

    def _linger(self) -> None:
        """Give a partial batch up to ``flush_interval`` to fill (woken early when it does)."""
        self._wake.clear()
        self._wake_at = self.batch_size
        self._waiting = True
        if len(self._dq) < self.batch_size and not self._urgent and not self._stop_requested:
            self._wake.wait(self.flush_interval)
        self._waiting = False

    def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        self._wake.wait(seconds)

    def _deliver(self, batches: list[Batch]) -> int:
        """Send ``batches``; ``_SENT``, ``_FAILED`` or ``_UNCONFIRMED`` (no answer: maybe stored)."""
        try:
            self._sink.send(batches)
        except Exception as exc:
            unconfirmed = self._unconfirmed(exc)
            self._counts["send_timeouts" if unconfirmed else "send_failures"] += 1
            self._mark_down(f"sink unavailable ({len(self._dq)} records queued)", exc)
            return _UNCONFIRMED if unconfirmed else _FAILED
        self._mark_up()
        return _SENT

    def _unconfirmed(self, exc: BaseException) -> bool:
        try:
            return bool(self._sink.unconfirmed(exc))
        except Exception:  # a sink without the method (tests' fakes): a plain failure
            return False

    def _mark_down(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self._backoff
        reporter.report("send", f"{what}, retrying in {self._backoff:.1f}s", exc)
        self._backoff = min(self._backoff * 2, self.max_reconnect_delay)

    def _mark_up(self) -> None:
        if self._down_until:
            self._counts["reconnects"] += 1
            self._down_until = 0.0
        self._backoff = self.reconnect_delay

    def _to_spool(self, entries: list[_Held]) -> None:
        """Spool each entry; what the spool cannot take stays in hand (retried) or, when
        closing, is left in hand for ``_give_up`` to count after every other entry was tried."""
        assert self._spool is not None
        failed: list[_Held] = []
        for i, (batch, n, maybe) in enumerate(entries):
            try:
                ok = self._spool.append(batch.entry())
            except EntryFormatError as exc:  # a frame it can never take (a huge header)
                reporter.report("spool", "an entry cannot be spooled and was dropped", exc)
                self._account(n, "dropped_unencodable")
                continue
            except Exception as exc:  # e.g. disk full: the spool rolled the file back
                self._counts["spool_write_failures"] += 1
                reporter.report("spool", "could not write to the spool; holding the records", exc)
                if not self._stop_requested:
                    self._held = entries[i:] + self._held
                    if not self._down_until:
                        self._down_until = time.monotonic() + self._backoff
                    return
                failed.append((batch, n, maybe))  # closing: a smaller one may still fit
                continue
            self._account(n, "spooled" if ok else "dropped_spool_full")
        self._held = failed + self._held

    def _replay_spool(self, *, orphans: bool = True) -> None:
        """Replay the spool; a close that begins (or runs out of budget) stops it between
        sends, leaving the file in progress as it was (resent later: the ids make it safe)."""
        assert self._spool is not None
        closing = self._stop_requested
        sink_send = self._sink.send

        def send(entries: list[Entry]) -> None:
            if (not closing and self._stop_requested) or (
                    closing and time.monotonic() >= self._replay_until):
                raise _ReplayStopped
            sink_send([Batch.from_entry(entry, 0) for entry in entries])

        try:
            result = self._spool.replay(send, orphans=orphans)
        except SpoolReplayError as exc:  # what was finished before it stopped still counts
            self._count_replay(exc.result)
            if isinstance(exc.__cause__, _ReplayStopped):
                return
            self._counts["send_failures"] += 1
            self._mark_down("spool replay failed", exc.__cause__ or exc)
            return
        except Exception as exc:
            self._counts["send_failures"] += 1
            self._mark_down("spool replay failed", exc)
            return
        self._count_replay(result)
        self._mark_up()

    def _count_replay(self, result: ReplayResult) -> None:
        """Own records replayed become ``sent``; adopted ones are another producer's."""
        counts = self._counts
        counts["sent"] += result.own_records
        counts["spool_replayed"] += result.own_records
        counts["spool_adopted"] += result.adopted_records
        counts["lost_spool_damaged"] += result.own_damaged_records
        counts["spool_adopted_damaged"] += result.adopted_damaged_records

    def _give_up_now(self, now: float) -> bool:
        return self._give_up_at is not None and now >= self._give_up_at

    def _give_up(self) -> None:
        """Closing and the sink is down (or time is up): spool what is in hand and queued,
        else count it. An entry whose send got no answer may be stored: ``unconfirmed``,
        never ``lost`` (``verify`` tells which)."""
        items, self._held = self._held, []
        while self._dq:
            made = self._batch(self._take(self.batch_size))
            if made is not None:
                items.append((made, made.n, False))
        if self._spool is not None and items:
            self._to_spool(items)
            items, self._held = self._held, []  # whatever the spool could not take
        self._count_undelivered(sum(n for _, n, maybe in items if maybe), "unconfirmed")
        self._count_undelivered(sum(n for _, n, maybe in items if not maybe), "lost")

    def _count_undelivered(self, n: int, outcome: str) -> None:
        if n:
            reporter.report(outcome, f"closing with the sink unreachable: {n} records {outcome}")
            self._account(n, outcome)

    def _account(self, n: int, outcome: str, *, batches: int = 0) -> None:
        """Records left the handler as ``outcome`` (a counter name); wakes ``flush`` waiters."""
        self._counts[outcome] += n
        if batches:
            self._counts["batches_sent"] += batches
        self._in_flight -= n
        with self._cond:
            self._done += n
            self._cond.notify_all()

    # --- flush, close, stats -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        # (``Handler.flush()`` returns None; returning whether it completed is strictly more)
        """Wait until every record accepted before this call has left the handler.

        "Left" means sent to the sink, spooled, or counted as dropped or lost. Returns True
        when that happened within ``timeout`` seconds (default ``close_timeout``). Never raises.
        """
        started = time.monotonic()
        if _holds_logging_lock():  # inside dictConfig: see _close_in_background; never wait here
            return self._done >= self._counts["enqueued"]
        try:
            done = self._wait_done(self.close_timeout if timeout is None else max(0.0, timeout))
        except Exception as exc:
            reporter.report("flush", "flush failed", exc)
            done = False
        if timeout is None:  # logging.shutdown() flushes, then closes: one budget for both
            self._flush_timed_out = None if done else (started, time.monotonic())
        return done

    def _wait_done(self, limit: float) -> bool:
        target = self._counts["enqueued"]
        deadline = time.monotonic() + limit
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._done >= target
        self._urgent = True
        self._wake.set()
        try:
            with self._cond:
                while self._done < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.05))
                    self._wake.set()
            return True
        finally:
            self._urgent = False

    def _stop_listener(self, timeout: float | None = None) -> None:
        """Ship what is queued, then stop the listener; ``timeout`` bounds the whole call.

        What is not delivered when the time is up is spooled (or counted): the flush stops
        early enough for a send in progress to time out and the listener to spool after it.
        """
        limit = self.close_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + limit
        thread = self._thread
        # Redis may be back while the listener still waits out a back-off: one more try now,
        # rather than spooling what could be delivered (a failure spools at once anyway).
        if self._down_until > time.monotonic():
            self._down_until = time.monotonic()
        self._wait_done(max(0.0, limit - self._send_timeout - 0.1))
        # what is still in hand now: spooled, else counted; the own spool may still be replayed
        # while the budget lasts (a send that hangs must end before it does)
        self._replay_until = deadline - self._send_timeout
        self._stop_requested = True
        self._give_up_at = time.monotonic()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.5, deadline - time.monotonic()))

    def _close_budget(self) -> float:
        """``close_timeout``, less what a timed-out bare flush just before this close spent."""
        timed_out = self._flush_timed_out
        now = time.monotonic()
        if timed_out is not None and now - timed_out[1] < _FLUSH_THEN_CLOSE_WINDOW:
            return max(0.0, self.close_timeout - (now - timed_out[0]))
        return self.close_timeout

    def close(self) -> None:
        """Refuse new records, deliver or spool what was accepted, release resources.

        Bounded by ``close_timeout`` in total. From the moment ``close`` starts, records are
        refused and counted as ``dropped_closed``; every record accepted before is sent,
        spooled or counted (a record another thread slipped in while ``close`` began is
        shipped by ``close`` itself). Idempotent; never raises.
        """
        try:
            if self._closed:
                self._wait_background_close()
                return
            # Under the handler lock, which Handler.handle holds around emit: every emit that
            # passed the _closed check has appended by now, so nothing slips in after.
            self.acquire()
            try:
                self._closed = True
            finally:
                self.release()
            if _holds_logging_lock():
                self._close_in_background()
                return
            budget = self._close_budget()
            deadline = time.monotonic() + budget
            self._stop_listener(budget)
            self._drain_inline(deadline)
            thread = self._thread
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                self._close_when_done = True  # it releases the sink and spool when it is done
                if not thread.is_alive():  # it finished just now, before seeing the flag
                    self._release()
            else:
                self._release()
        except Exception as exc:
            reporter.report("close", "close failed", exc)
            self._release()
        finally:
            self._closed = True
            logging.Handler.close(self)

    def _release(self) -> None:
        try:
            self._sink.close()
            if self._spool is not None:
                self._spool.close()
        except Exception as exc:
            reporter.report("close", "could not release the sink or spool", exc)
        finally:
            _live_handlers.discard(self)

    def _close_in_background(self) -> None:
        """``close`` from a thread holding the ``logging`` module lock (a second ``dictConfig``
        replacing this handler): the libraries the listener drives take that lock (a logger
        level check after dictConfig cleared the level cache), so waiting here would stall
        until ``close_timeout`` and then strand the queue. The listener finishes instead:
        it ships or spools everything accepted (giving up after ``close_timeout``), then
        releases the sink; at interpreter exit that finish is waited for."""
        self._close_when_done = True
        self._replay_until = time.monotonic() + self.close_timeout - self._send_timeout
        self._stop_requested = True
        self._give_up_at = time.monotonic() + self.close_timeout
        self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._release()

    def _wait_background_close(self) -> None:
        thread = self._thread
        if (self._close_when_done and thread is not None and thread.is_alive()
                and thread is not threading.current_thread() and not _holds_logging_lock()):
            thread.join(self.close_timeout + 1.0)

    def _drain_inline(self, deadline: float) -> None:
        """After the listener stopped: ship, spool or count what raced ``close`` into the queue."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            if self._dq or self._in_flight:
                reporter.report("close", "the listener did not stop in time (a send is hanging); "
                                f"{len(self._dq) + self._in_flight} records still in flight")
            return
        if not self._dq and not self._held:
            return
        self._give_up_at = None
        self._stop_requested = True
        if time.monotonic() < deadline and self._down_until <= time.monotonic():
            while self._dq:
                made = self._batch(self._take(self.batch_size))
                if made is None:
                    continue
                outcome = self._deliver([made])
                if outcome == _SENT:
                    self._account(made.n, "sent", batches=1)
                else:
                    self._held.append((made, made.n, outcome == _UNCONFIRMED))
                    break
        self._give_up()

    def stats(self) -> dict[str, int]:
        """Counters and gauges: what was accepted, shipped, spooled, dropped or lost.

        Records refused at the door are never ``enqueued``: ``refused`` (our own loggers),
        ``dropped_queue_full``, ``dropped_closed``, ``dropped_emit_error``. Every accepted
        record is in exactly one place::

            enqueued = sent + spool_pending + queue_depth + in_hand
                       + dropped_spool_full + dropped_unencodable + lost + lost_spool_damaged
                       + unconfirmed

        where ``sent`` includes this producer's own spooled records once replayed
        (``spool_replayed``) and ``spool_pending`` is what its spool still holds.
        ``unaccounted`` is the difference, 0 whenever the handler is idle (a snapshot taken
        while the listener works may be off by a batch). Records replayed from other
        producers' spool files are ``spool_adopted``. Thread-safe snapshot.
        """
        snapshot = dict(self._counts)
        snapshot["queue_depth"] = len(self._dq)
        snapshot["queue_size"] = self.queue_size
        snapshot["in_hand"] = self._in_flight
        snapshot["errors"] = snapshot["dropped_emit_error"]  # the name before 0.2
        snapshot["truncated"] = self._snapshot.truncated
        snapshot["redacted"] = self._redactor.redacted
        snapshot["queue_bytes"] = max(0, self._bytes_in - self._bytes_out)
        snapshot["rejected"] = int(getattr(self._sink, "rejected", 0))
        snapshot["sanitized"] = self._snapshot.sanitized
        spool = self._spool
        snapshot["spool_bytes"] = spool.size_bytes if spool is not None else 0
        snapshot["spool_pending"] = spool.pending_records if spool is not None else 0
        snapshot["spool_damaged_bytes"] = spool.damaged_bytes if spool is not None else 0
        snapshot["spool_damaged_regions"] = spool.damaged_regions if spool is not None else 0
        snapshot["connected"] = int(self._down_until == 0.0)
        snapshot["unaccounted"] = snapshot["enqueued"] - (
            snapshot["sent"] + snapshot["spool_pending"] + snapshot["queue_depth"]
            + snapshot["in_hand"] + sum(snapshot[k] for k in _LOSS_OUTCOMES))
        return snapshot

    def _after_fork_in_child(self) -> None:
        """The child inherits the parent's queue but not its thread: start over, empty."""
        old_spool = self._spool
        if old_spool is not None:
            try:
                old_spool.release_after_fork()  # the parent keeps its own descriptor and lock
            except Exception as exc:
                reporter.report("fork", "could not release the parent's spool in the child", exc)
        self._init_runtime()
        if not self._closed:
            self._start_listener()

    def __repr__(self) -> str:
        target = f"redis stream {self.stream!r}" if self.redis_url else "database (direct)"
        return f"<ActivityHandler {target} ({logging.getLevelName(self.level)})>"


def flush_handlers(timeout: float | None = None) -> bool:
    """Flush every open ``ActivityHandler`` of this process; True when all of them finished.

    The one line to call where a process is about to end without ``logging.shutdown()``
    (a server that re-raises SIGTERM, a gunicorn ``worker_exit`` hook, a Celery
    ``worker_process_shutdown`` signal). ``timeout`` (default: each handler's
    ``close_timeout``) bounds the whole call, not each handler. Never raises; thread-safe.
    """
    try:
        handlers = list(_live_handlers)
        if timeout is None:
            timeout = max((h.close_timeout for h in handlers), default=0.0)
        deadline = time.monotonic() + max(0.0, timeout)
        ok = True
        for handler in handlers:
            ok = handler.flush(max(0.0, deadline - time.monotonic())) and ok
        return ok
    except Exception as exc:
        reporter.report("flush", "flush_handlers failed", exc)
        return False


def _unknown_arguments(unknown: dict[str, Any]) -> str:
    """One clear message for misspelt arguments, naming the closest valid one."""
    import difflib
    import inspect

    valid = [p for p in inspect.signature(ActivityHandler.__init__).parameters
             if p not in ("self", "queue", "unknown", "handlers", "listener", "respect_handler_level")]
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, valid, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"ActivityHandler got unknown argument(s) {', '.join(parts)}; "
            f"valid: {', '.join(valid)}")


_DICTCONFIG_QUEUE_KEYS: Final = frozenset({"queue", "listener", "handlers", "respect_handler_level"})


def _arguments_dropped_by_dictconfig() -> dict[str, Any] | None:
    """The arguments a Python 3.12 ``dictConfig`` dropped, if it is the caller.

    Some 3.12 releases (3.12.1 here) build a ``QueueHandler`` subclass of the ``"class"``
    form as ``klass(queue)``, silently dropping every other configured argument (later
    releases pass them). The configured arguments are still in that function's frame:
    taking them from there makes the documented form work instead of running with defaults.
    """
    try:
        frame = sys._getframe(2)  # ActivityHandler.__init__ <- _configure_queue_handler
        if frame.f_code.co_name != "_configure_queue_handler" or "logging" not in frame.f_code.co_filename:
            return None
        kwargs = frame.f_locals.get("kwargs")
        if not isinstance(kwargs, dict):
            return None
        rest = {k: v for k, v in kwargs.items() if k not in _DICTCONFIG_QUEUE_KEYS}
        return rest or None
    except Exception:
        return None


def _holds_logging_lock() -> bool:
    """True when this thread holds the ``logging`` module lock (inside ``dictConfig``)."""
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    try:
        return bool(is_owned()) if is_owned is not None else False
    except Exception:
        return False


def _finish_background_closes() -> None:
    """At exit: wait (bounded) for handlers a ``dictConfig`` closed to finish shipping."""
    for handler in list(_live_handlers):
        if handler._closed:
            handler._wait_background_close()


atexit.register(_finish_background_closes)


def _close_all_for_exit() -> None:
    """A multiprocessing child is ending through ``os._exit``: no ``atexit``, no
    ``logging.shutdown()``. Close (deliver or spool) every open handler first."""
    for handler in list(_live_handlers):
        handler.close()


class _MultiprocessingToken:
    """What ``multiprocessing.util.register_after_fork`` holds weakly (an ``object()`` cannot be)."""


_MP_TOKEN: Final = _MultiprocessingToken()
_mp_hook_pid = 0


def _arm_multiprocessing_finalizer(_token: object = None) -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _close_all_for_exit, exitpriority=1)


def _install_multiprocessing_exit_hook() -> None:
    """Make multiprocessing children (fork, forkserver, spawn) close the handlers at exit.

    A child process ends with ``os._exit`` after running multiprocessing's own finalizers,
    so ``atexit`` never runs there. The finalizer registry is cleared when a child starts and
    the after-fork callbacks are run after that: registering one re-arms the finalizer in
    every child. Only when ``multiprocessing`` is in use: it is never imported for this.
    """
    global _mp_hook_pid
    util = sys.modules.get("multiprocessing.util")
    if util is None or _mp_hook_pid == os.getpid():
        return
    _mp_hook_pid = os.getpid()
    util.register_after_fork(_MP_TOKEN, _arm_multiprocessing_finalizer)
    _arm_multiprocessing_finalizer()


def _reinit_handlers_after_fork() -> None:
    for handler in list(_live_handlers):
        try:
            handler._after_fork_in_child()
        except Exception as exc:
            reporter.report("fork", "could not restart the handler after fork", exc)
    if _live_handlers:
        _install_multiprocessing_exit_hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_handlers_after_fork)
