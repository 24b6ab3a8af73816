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

import logging
import logging.handlers
import os
import queue as queue_mod
import threading
import time
import uuid
import weakref
from collections import deque
from typing import Any, Final

from . import config
from ._internal import is_refused_logger, reporter
from .context import current_context
from .exceptions import ConfigurationError
from .record import (
    DEFAULT_REDACT_KEYS,
    MAX_MESSAGE_CHARS,
    MAX_RECORD_BYTES,
    QueuedRecord,
    Redactor,
    WireEncoder,
    exception_text,
    limit_extras,
    message_of,
    snapshot_extras,
)
from .sinks import Entry, Sink, make_sink
from .spool import Spool

_STANDARD_COUNT: Final = len(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)))
_RECORD_OVERHEAD: Final = 200  # bytes a queued record costs beyond its message and extra (estimate)
_MAX_ENTRIES_PER_SEND: Final = 8
_REFUSED_CACHE_LIMIT: Final = 10_000

_COUNTERS: Final = (
    "enqueued", "sent", "batches_sent", "dropped_queue_full", "dropped_closed", "refused",
    "errors", "listener_errors", "send_failures", "reconnects", "spooled", "spool_replayed",
    "dropped_spool_full",
    "lost", "truncated_at_call", "redacted_at_call",
)

_live_handlers: weakref.WeakSet[ActivityHandler] = weakref.WeakSet()


def _queued_bytes(items: list[QueuedRecord]) -> int:
    """The byte estimate ``emit`` added for these records (see ``queue_max_bytes``)."""
    total = _RECORD_OVERHEAD * len(items)
    for item in items:
        total += len(item[3])
        if item[4] is not None:
            total += len(item[4])
        if item[5] is not None:
            total += len(item[5])
    return total


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
        spool_path: Directory for the local spool used while the sink is down (off if empty).
        spool_max_bytes: Size limit of this producer's spool file.
        max_record_bytes: Encoded size limit of one record; larger ones are cut and counted.
        redact_keys: Comma-separated key fragments whose values are replaced by ``[REDACTED]``.
        context_filter: Add the current request context (``activity_context``, the middleware)
            to every record, never overwriting ``extra``: what ``ContextFilter`` does, done
            inside ``emit`` (still in the caller's thread) because a filter costs a few
            microseconds more per record. The record itself is left unchanged.
        close_timeout: Seconds ``close()`` (and a bare ``flush()``) wait for the sink.
        reconnect_delay: First back-off delay after a failed send; doubles up to 30 s.
        direct: Write straight to ``database_url`` even when ``REDIS_URL`` is set.

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
        queue_size: int = 100_000,
        queue_max_bytes: int = 256 * 1024 * 1024,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        spool_path: str | None = None,
        spool_max_bytes: int = 512 * 1024 * 1024,
        max_record_bytes: int = MAX_RECORD_BYTES,
        redact_keys: str = DEFAULT_REDACT_KEYS,
        context_filter: bool = True,
        close_timeout: float = 5.0,
        reconnect_delay: float = 1.0,
        direct: bool = False,
        level: int | str = logging.NOTSET,
    ) -> None:
        logging.Handler.__init__(self, level)
        for name, value, integer in (
            ("queue_size", queue_size, True), ("batch_size", batch_size, True),
            ("queue_max_bytes", queue_max_bytes, True),
            ("flush_interval", flush_interval, False), ("spool_max_bytes", spool_max_bytes, True),
            ("max_record_bytes", max_record_bytes, True), ("close_timeout", close_timeout, False),
            ("reconnect_delay", reconnect_delay, False),
        ):
            config.require_positive(name, value, integer=integer)
        if max_record_bytes < 1024:
            raise ConfigurationError(f"max_record_bytes must be at least 1024, got {max_record_bytes!r}")
        self.redis_url = None if direct else config.resolve_redis_url(redis_url)
        self.stream = config.resolve_stream(stream)
        self.database_url = config.resolve_database_url(database_url, default=config.DEFAULT_SQLITE_URL)
        self.schema = config.resolve_schema(schema)
        if not self.redis_url and self.database_url:
            from .schema import normalize_async_url

            normalize_async_url(self.database_url)  # validates the URL's form now, not at first send
        self.queue_size = queue_size
        self.queue_max_bytes = queue_max_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.spool_path = spool_path or None
        self.spool_max_bytes = spool_max_bytes
        self.max_record_bytes = max_record_bytes
        self.redact_keys = redact_keys
        self.close_timeout = close_timeout
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = 30.0
        self.context_filter = context_filter
        self._listener_face = ActivityListener(self)
        self._refused_cache: dict[str, bool] = {}
        self._closed = False
        self._init_runtime()
        _live_handlers.add(self)
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
        self._extras_limit = self.max_record_bytes - 1024
        self._encoder = WireEncoder(
            self.producer_id, max_record_bytes=self.max_record_bytes, redactor=self._redactor
        )
        self._sink: Sink = make_sink(self.redis_url, self.stream, self.database_url or "", self.schema)
        self._spool = (
            Spool(self.spool_path, self.producer_id, self.spool_max_bytes) if self.spool_path else None
        )
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._done = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._waiting = False
        self._wake_at = 1
        self._urgent = False
        self._stop_requested = False
        self._give_up_at: float | None = None
        self._held: list[tuple[Entry, int]] = []
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
            msg = record.msg
            if record.args or type(msg) is not str:
                msg = message_of(record)
            elif len(msg) > MAX_MESSAGE_CHARS:
                msg = msg[:MAX_MESSAGE_CHARS]
            attrs = record.__dict__
            ctx = current_context() if self.context_filter else None
            extras = snapshot_extras(attrs, ctx) if ctx or len(attrs) > _STANDARD_COUNT else None
            size = _RECORD_OVERHEAD + len(msg)
            if extras is not None:
                if len(extras) > self._extras_limit:  # cut now: the queue holds bounded records
                    extras, redacted = limit_extras(extras, self.max_record_bytes, self._redactor)
                    counts["truncated_at_call"] += 1
                    counts["redacted_at_call"] += redacted
                size += len(extras)
            exc = exception_text(record) if record.exc_info or record.exc_text else None
            if exc is not None:
                size += len(exc)
            dq.append((record.created, record.levelno, name, msg, extras, exc))
            self._bytes_in += size
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
        """Count the failure and report it (rate-limited); no traceback per record."""
        self._counts["errors"] += 1
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

    def _run(self) -> None:
        try:
            self._sink.prepare()
        except Exception as exc:  # e.g. an unwritable SQLite path: sends will retry and count
            self._counts["listener_errors"] += 1
            reporter.report("prepare", "could not prepare the sink", exc)
        while True:
            try:
                if not self._step():
                    return
            except Exception as exc:  # a bug must not kill the listener
                self._counts["listener_errors"] += 1
                reporter.report("listener", "listener loop error", exc)
                time.sleep(0.1)

    def _step(self) -> bool:
        """One turn of the listener; False when it should exit."""
        now = time.monotonic()
        if self._held or (self._down_until > now and self._spool is None):
            if self._give_up_now(now):
                self._lose_held()  # also whatever is still queued
                return not self._stop_requested
            if self._down_until > now:
                self._sleep(min(self._down_until - now, 0.25))
                return True
            if self._held:
                held = self._held
                if self._deliver([e for e, _ in held]):
                    self._held = []
                    self._account(sum(n for _, n in held), "sent", batches=len(held))
                return True
        if self._spool is not None and self._down_until <= now and self._spool.has_pending():
            self._replay_spool()  # then on to the queue: fresh records must not wait behind it
        dq = self._dq
        if not dq:
            if self._stop_requested:
                return False
            self._idle_wait()
            return True
        if len(dq) < self.batch_size and not self._urgent and not self._stop_requested:
            self._linger()
        entries: list[tuple[Entry, int]] = []
        while dq and len(entries) < _MAX_ENTRIES_PER_SEND:
            batch = self._take(self.batch_size)
            try:
                entries.append((self._encoder.encode_batch(batch), len(batch)))
            except Exception as exc:
                self._counts["listener_errors"] += 1
                self._account(len(batch), "lost")
                reporter.report("encode", f"could not encode a batch of {len(batch)} records", exc)
            if len(dq) < self.batch_size:
                break
        if not entries:
            return True
        if self._down_until > time.monotonic() and self._spool is not None:
            self._to_spool(entries)
        elif self._deliver([e for e, _ in entries]):
            self._account(sum(n for _, n in entries), "sent", batches=len(entries))
        elif self._spool is not None:
            self._to_spool(entries)
        else:
            self._held = entries
        return True

    def _take(self, limit: int) -> list[QueuedRecord]:
        dq = self._dq
        popleft = dq.popleft
        n = min(limit, len(dq))
        self._in_flight += n
        items = [popleft() for _ in range(n)]
        self._bytes_out += _queued_bytes(items)
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

    def _deliver(self, entries: list[Entry]) -> bool:
        try:
            self._sink.send(entries)
        except Exception as exc:
            self._counts["send_failures"] += 1
            self._down_until = time.monotonic() + self._backoff
            reporter.report(
                "send", f"sink unavailable, retrying in {self._backoff:.1f}s "
                f"({len(self._dq)} records queued)", exc,
            )
            self._backoff = min(self._backoff * 2, self.max_reconnect_delay)
            return False
        if self._down_until:
            self._counts["reconnects"] += 1
            self._down_until = 0.0
        self._backoff = self.reconnect_delay
        return True

    def _to_spool(self, entries: list[tuple[Entry, int]]) -> None:
        assert self._spool is not None
        for entry, n in entries:
            try:
                ok = self._spool.append(entry)
            except Exception as exc:
                ok = False
                self._counts["listener_errors"] += 1
                reporter.report("spool", "could not write to the spool", exc)
            if ok:
                self._account(n, "spooled")
            else:
                self._account(n, "dropped_spool_full")

    def _replay_spool(self) -> None:
        assert self._spool is not None
        try:
            replayed = self._spool.replay(self._sink.send)
        except Exception as exc:
            self._deliver_failed(exc)
            return
        if replayed:
            self._counts["spool_replayed"] += replayed  # records, like "spooled"
        if self._down_until:
            self._counts["reconnects"] += 1
            self._down_until = 0.0
        self._backoff = self.reconnect_delay

    def _deliver_failed(self, exc: BaseException) -> None:
        self._counts["send_failures"] += 1
        self._down_until = time.monotonic() + self._backoff
        reporter.report("send", f"spool replay failed, retrying in {self._backoff:.1f}s", exc)
        self._backoff = min(self._backoff * 2, self.max_reconnect_delay)

    def _give_up_now(self, now: float) -> bool:
        return self._give_up_at is not None and now >= self._give_up_at

    def _lose_held(self) -> None:
        """Closing with the sink still down and no spool: what is in hand and queued is lost."""
        lost = sum(n for _, n in self._held)
        self._held = []
        while self._dq:
            lost += len(self._take(self.batch_size))
        if lost:
            reporter.report("lost", f"closing with the sink unreachable: {lost} records lost")
        self._account(lost, "lost")

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

        "Left" means sent to the sink, spooled, or counted as lost. Returns True when that
        happened within ``timeout`` seconds (default ``close_timeout``). Never raises.
        """
        try:
            limit = self.close_timeout if timeout is None else max(0.0, timeout)
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
        except Exception as exc:
            reporter.report("flush", "flush failed", exc)
            return False

    def _stop_listener(self, timeout: float | None = None) -> None:
        """Ship what is queued (bounded by ``timeout``), then stop the listener thread."""
        limit = self.close_timeout if timeout is None else timeout
        thread = self._thread
        self.flush(limit)
        self._stop_requested = True
        self._give_up_at = time.monotonic()  # anything still in hand now is lost (counted)
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(1.0, limit))

    def close(self) -> None:
        """Flush (bounded by ``close_timeout``), stop the listener, release resources.

        Idempotent; never raises. Records logged after ``close`` are counted as
        ``dropped_closed``.
        """
        try:
            if not self._closed:
                self._stop_listener()
                self._closed = True
                self._sink.close()
                if self._spool is not None:
                    self._spool.close()
        except Exception as exc:
            reporter.report("close", "close failed", exc)
        finally:
            self._closed = True
            _live_handlers.discard(self)
            logging.Handler.close(self)

    def stats(self) -> dict[str, int]:
        """Counters and gauges: what was accepted, shipped, spooled, dropped or lost.

        ``enqueued`` = ``sent`` + ``spooled`` + ``dropped_spool_full`` + ``lost`` +
        records still in flight (``queue_depth`` + ``in_hand``). Thread-safe snapshot.
        """
        snapshot = dict(self._counts)
        snapshot["queue_depth"] = len(self._dq)
        snapshot["queue_size"] = self.queue_size
        snapshot["in_hand"] = self._in_flight
        snapshot["truncated"] = self._encoder.truncated + snapshot.pop("truncated_at_call")
        snapshot["redacted"] = self._encoder.redacted + snapshot.pop("redacted_at_call")
        snapshot["queue_bytes"] = max(0, self._bytes_in - self._bytes_out)
        snapshot["rejected"] = int(getattr(self._sink, "rejected", 0))
        snapshot["sanitized"] = self._encoder.sanitized
        snapshot["spool_bytes"] = self._spool.size_bytes if self._spool is not None else 0
        snapshot["connected"] = int(self._down_until == 0.0)
        return snapshot

    def _after_fork_in_child(self) -> None:
        """The child inherits the parent's queue but not its thread: start over, empty."""
        old_spool = self._spool
        if old_spool is not None and old_spool._file is not None:
            try:
                old_spool._file.close()  # the parent keeps its own descriptor and lock
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


def _reinit_handlers_after_fork() -> None:
    for handler in list(_live_handlers):
        try:
            handler._after_fork_in_child()
        except Exception as exc:
            reporter.report("fork", "could not restart the handler after fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_handlers_after_fork)
