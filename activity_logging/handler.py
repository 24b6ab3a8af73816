"""``ActivityHandler``: a ``QueueHandler`` that owns a bounded queue and the thread that ships it.

The caller's side (``emit``) is kept tiny: refuse our own loggers, snapshot the record into
its wire bytes (``snapshot.Snapshotter.take``: id, seq and one orjson call), append them to a
bounded deque, count. It never blocks and never raises. The listener thread
(``listener.ListenerLoop``) takes batches from the deque, redacts them and hands them to a
sink: the Redis Stream (one entry per batch), or the database directly (embedded SQLite
default). When the sink fails it backs off (1 s doubling up to 30 s) and either holds the
batch in hand (the deque then fills and further records are dropped and counted) or, with
``spool_path``, writes entries to a local spool that is replayed on reconnect. Every record
that does not reach the sink is counted in ``stats()``. Exit, fork and multiprocessing
children are handled in ``handler_lifecycle``.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue as queue_mod
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from typing import Any, Final

from . import config
from ._internal import Backoff, is_refused_logger, reporter
from .entry_limits import MAX_ENTRY_BYTES, MAX_ENTRY_RECORDS
from .exceptions import ConfigurationError
from .handler_lifecycle import (
    arguments_dropped_by_dictconfig,
    holds_logging_lock,
    install_multiprocessing_exit_hook,
    live_handlers,
)
from .listener import Held, ListenerLoop
from .redact import DEFAULT_REDACT_KEYS, Redactor
from .shards import check_shardable, resolve_shards, shard_stream
from .signing import CHECKPOINT_TYPE, EntrySigner, resolve_keyring
from .sinks import Sink, make_sink
from .snapshot import QueuedRecord, Snapshotter, queued_size
from .spool import Spool
from .wire import WireEncoder

_REFUSED_CACHE_LIMIT: Final = 10_000

_COUNTERS: Final = (
    "enqueued", "sent", "batches_sent", "dropped_queue_full", "dropped_closed", "dropped_emit_error",
    "refused", "listener_errors", "send_failures", "send_timeouts", "reconnects",
    "spooled", "spool_replayed", "spool_adopted", "spool_adopted_damaged", "spool_write_failures",
    "dropped_spool_full", "dropped_unencodable", "lost", "lost_spool_damaged", "unconfirmed",
    "checkpoints",
)
# Outcomes of accepted records other than "sent" and "spooled": with the gauges they balance
# ``enqueued`` (see ``ActivityHandler.stats``).
_LOSS_OUTCOMES: Final = (
    "dropped_spool_full", "dropped_unencodable", "lost", "lost_spool_damaged", "unconfirmed",
)
_FLUSH_THEN_CLOSE_WINDOW: Final = 1.0  # a close this soon after a timed-out flush shares its budget
#: The logger name of checkpoint records (the handler makes them itself: never refused).
CHECKPOINT_LOGGER: Final = "activity_logging.checkpoint"

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
        handler = self._handler
        handler.acquire()  # as Handler.handle does: emit numbers records under the lock
        try:
            handler.emit(item)
        finally:
            handler.release()


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


class ActivityHandler(ListenerLoop, logging.handlers.QueueHandler):
    """Ships log records as activities: bounded queue → listener thread → Redis Stream or store.

    Every argument is a plain value so ``logging.config.dictConfig`` can build it (``'()'`` or
    ``"class"``). With no ``redis_url`` (argument or ``REDIS_URL``) records go straight to the
    database at ``database_url`` (argument or ``DATABASE_URL``; default the embedded
    ``sqlite:///activity_logs.db``).

    Args:
        queue: Ignored. Accepted because Python 3.12+'s ``dictConfig`` passes an unbounded
            ``queue.Queue()`` positionally; the handler always keeps its own bounded queue.
        redis_url: Redis to ship to (``redis://``, ``rediss://``, ``unix://``; a Redis Cluster
            as ``redis+cluster://`` or ``rediss+cluster://`` and any one of its nodes).
        stream: Stream name (default ``activity_log_stream`` or ``ACTIVITY_LOG_STREAM``).
        stream_shards: Shards of the stream (``ACTIVITY_LOG_STREAM_SHARDS``, default 1): with
            more than one, this producer writes to the one its producer id picks
            (``shards.shard_stream``); workers and ``status`` must be given the same number.
        database_url: Store written directly when no Redis is configured.
        schema: PostgreSQL schema of the table in direct mode (``ACTIVITY_LOG_SCHEMA``).
        queue_size: Records held in memory at most; beyond it records are dropped and counted.
        queue_max_bytes: Bytes of records held in memory at most: their encoded UTF-8 bytes
            plus a fixed overhead each, counted from ``emit`` until they leave the handler
            (queued, or in the listener's hands: batching, sending, held while Redis is
            down); beyond it records are dropped and counted like a full queue.
        batch_size: Records per stream entry at most.
        flush_interval: Seconds a record may wait for its batch to fill before it is shipped.
        spool_path: Directory for the local spool used while Redis is down. Default (also
            ``ACTIVITY_LOG_SPOOL_PATH``): on when shipping to Redis, in the per-user state
            directory (``~/.local/state/activity_logging/spool/<server+stream>``); ``"off"``
            or ``""`` switch it off. Direct mode spools only where a path is given.
        spool_max_bytes: Size limit of this producer's spool file.
        max_record_bytes: Encoded size limit of one record; larger ones are cut and counted.
        redact_keys: Comma-separated entries; a key whose word parts hold one has its value
            replaced by ``[REDACTED]`` (syntax and defaults in ``activity_logging.redact``).
        redact_free_text: Also scrub the message, exception text, ``description`` and
            ``error_message`` of ``key=value`` with a secret key, Bearer/Basic credentials
            and JWTs (default True).
        context_filter: Add the current request context (``activity_context``, the middleware)
            to every record, never overwriting ``extra``: what ``ContextFilter`` does, done
            inside ``emit`` (still in the caller's thread) because a filter costs a few
            microseconds more per record. The record itself is left unchanged.
        close_timeout: Seconds ``close()`` (and a bare ``flush()``) wait for the sink, in total:
            what is not delivered by then is spooled or counted. ``logging.shutdown()``'s
            flush-then-close shares one budget.
        reconnect_delay: First back-off delay after a failed send; doubles up to 30 s.
        direct: Write straight to ``database_url`` even when ``REDIS_URL`` is set.
        signing_key: The key ring that signs this producer's entries and chains its records
            (``signing.KeyRing.parse``: ``secret`` or ``id:secret``, several separated by
            commas; the first signs). Default ``ACTIVITY_LOG_SIGNING_KEY`` (or a file named by
            ``ACTIVITY_LOG_SIGNING_KEY_FILE``); ``""`` turns signing off. Without a key the
            trail is unauthenticated. See docs/security.md.
        checkpoint_interval: With a key, seconds between this producer's checkpoint records
            (one more is written by ``close()``), so ``verify`` can tell a trail cut short
            from one that ended (``ACTIVITY_LOG_CHECKPOINT_INTERVAL``, default 60).
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
        redact_free_text: bool = True,
        context_filter: bool = True,
        close_timeout: float | None = None,
        reconnect_delay: float | None = None,
        direct: bool = False,
        signing_key: str | None = None,
        checkpoint_interval: float | None = None,
        stream_shards: int | None = None,
        level: int | str = logging.NOTSET,
        handlers: Any = None,
        listener: Any = None,
        respect_handler_level: Any = None,
        **unknown: Any,
    ) -> None:
        if queue is not None and sys.version_info[:2] == (3, 12):
            dropped = arguments_dropped_by_dictconfig()
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
            ("checkpoint_interval", checkpoint_interval),
        )}
        if tuned["max_record_bytes"] < 1024:
            raise ConfigurationError(
                f"max_record_bytes must be at least 1024, got {tuned['max_record_bytes']!r}")
        if tuned["checkpoint_interval"] < 1.0:
            raise ConfigurationError(f"checkpoint_interval must be at least 1 second, got "
                                     f"{tuned['checkpoint_interval']!r}")
        redis_url = None if direct else config.resolve_redis_url(redis_url)
        stream = config.resolve_stream(stream)
        shards = resolve_shards(stream_shards) if redis_url else 1
        check_shardable(stream, shards)
        database_url = config.resolve_database_url(database_url, default=config.DEFAULT_SQLITE_URL)
        schema = config.resolve_schema(schema)
        if not redis_url and database_url:
            from .urls import normalize_async_url

            normalize_async_url(database_url)  # validates the URL's form now, not at first send
        keyring = resolve_keyring(signing_key)
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
        self.redact_free_text = bool(redact_free_text)
        self.close_timeout = float(tuned["close_timeout"])
        self.reconnect_delay = float(tuned["reconnect_delay"])
        self.max_reconnect_delay = 30.0
        self.context_filter = context_filter
        self._keyring = keyring
        self.checkpoint_interval = float(tuned["checkpoint_interval"])
        self.stream_shards = shards
        self._listener_face = ActivityListener(self)
        self._refused_cache: dict[str, bool] = {}
        self._closed = False
        # A send must give up before close() does, so that close can still spool what it held.
        self._send_timeout = min(5.0, max(0.25, self.close_timeout / 2))
        self._flush_timed_out: tuple[float, float] | None = None  # (started, ended) of a bare flush
        self._init_runtime()
        live_handlers.add(self)
        install_multiprocessing_exit_hook()
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
        self._redactor = Redactor(self.redact_keys, free_text=self.redact_free_text)
        self._snapshot = Snapshotter(max_record_bytes=self.max_record_bytes,
                                     redactor=self._redactor, context=self.context_filter)
        key = self._keyring.current if self._keyring is not None else None
        self._encoder = WireEncoder(self.producer_id,
                                    signer=EntrySigner(key) if key is not None else None)
        # this producer's shard (the stream itself unless sharded): its records stay in order
        self.shard_stream = shard_stream(self.stream, self.stream_shards, self.producer_id)
        self._sink: Sink = make_sink(self.redis_url, self.shard_stream, self.database_url or "", self.schema,
                                     socket_timeout=self._send_timeout, signing_key=key)
        self._last_checkpoint = time.monotonic()
        self._spool = (
            Spool(self.spool_path, self.producer_id, self.spool_max_bytes,
                  # this producer's own entries are never refused on replay, however large
                  max_entry_records=max(MAX_ENTRY_RECORDS, self.batch_size),
                  max_entry_bytes=max(MAX_ENTRY_BYTES, self.batch_size * self.max_record_bytes))
            if self.spool_path else None
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
        self._listener_ended = False
        self._give_up_at: float | None = None
        self._replay_until = 0.0
        # entries in hand after a failed send, each with whether a send of it got no answer
        # (it may be stored: counted "unconfirmed", never "lost", if it is given up)
        self._held: list[Held] = []
        self._in_flight = 0  # taken from the queue, not yet sent/spooled/lost: counts against queue_size
        # bytes of queued records: added by callers (under the handler lock), removed by the
        # listener; two counters, each written by one side only, so neither needs a lock
        self._bytes_in = 0
        self._bytes_out = 0
        self._hand_bytes = 0  # of the records in hand (taken, not yet accounted): still counted
        self._down_until = 0.0
        self._backoff = Backoff(self.reconnect_delay, self.max_reconnect_delay)
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

    def _append_checkpoint(self, *, closing: bool) -> None:
        """Queue a checkpoint record: the producer's chain head as of now (its own ``seq``
        and link), and whether the trail ends with it. Called under the handler lock, so it
        takes its place in ``seq`` order; it may pass a full queue by this one record (a
        checkpoint lost to a full queue would read as a trail cut short). Never raises."""
        try:
            record = logging.LogRecord(CHECKPOINT_LOGGER, logging.INFO, __file__, 0,
                                       CHECKPOINT_TYPE, None, None)
            record.activity_type = CHECKPOINT_TYPE
            record.actor_type = "system"
            record.checkpoint = {"closing": closing, "interval": self.checkpoint_interval,
                                 "enqueued": self._counts["enqueued"]}
            item = self._snapshot.take(record)
            self._dq.append(item)
            self._bytes_in += queued_size(item)
            self._counts["enqueued"] += 1
            self._counts["checkpoints"] += 1
            self._last_checkpoint = time.monotonic()
            self._wake.set()
        except Exception as exc:
            reporter.report("checkpoint", "could not queue a checkpoint record", exc)

    def _maybe_checkpoint(self) -> None:
        """The listener's periodic checkpoint (signed trails only), even when idle."""
        if (self._keyring is None or self._closed
                or time.monotonic() - self._last_checkpoint < self.checkpoint_interval):
            return
        self.acquire()
        try:
            if not self._closed:
                self._append_checkpoint(closing=False)
        finally:
            self.release()

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
            self._listener_ended = False
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

    # --- flush, close, stats -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        # (``Handler.flush()`` returns None; returning whether it completed is strictly more)
        """Wait until every record accepted before this call has left the handler.

        "Left" means sent to the sink, spooled, or counted as dropped or lost. Returns True
        when that happened within ``timeout`` seconds (default ``close_timeout``). Never raises.
        """
        started = time.monotonic()
        if holds_logging_lock():  # inside dictConfig: see _close_in_background; never wait here
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
                if self._keyring is not None:
                    self._append_checkpoint(closing=True)  # the last record: the trail ended here
                self._closed = True
            finally:
                self.release()
            if holds_logging_lock():
                self._close_in_background()
                return
            budget = self._close_budget()
            deadline = time.monotonic() + budget
            self._stop_listener(budget)
            self._drain_inline(deadline)
            thread = self._thread
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                self._hand_release_to_listener()
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
            live_handlers.discard(self)

    def _close_in_background(self) -> None:
        """``close`` from a thread holding the ``logging`` module lock (a second ``dictConfig``
        replacing this handler): the libraries the listener drives take that lock (a logger
        level check after dictConfig cleared the level cache), so waiting here would stall
        until ``close_timeout`` and then strand the queue. The listener finishes instead:
        it ships or spools everything accepted (giving up after ``close_timeout``), then
        releases the sink; at interpreter exit that finish is waited for."""
        self._replay_until = time.monotonic() + self.close_timeout - self._send_timeout
        self._stop_requested = True
        self._give_up_at = time.monotonic() + self.close_timeout
        self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._close_when_done = True
            self._release()
        else:
            self._hand_release_to_listener()

    def _hand_release_to_listener(self) -> None:
        """The listener releases the sink and spool as its last act; when it has ended
        already, they are released here. Decided under the lock the listener takes to end, so
        exactly one of the two does it (a listener that is alive after the check still is)."""
        with self._cond:
            self._close_when_done = True
            ended = self._listener_ended
        if ended:
            self._release()

    def _wait_background_close(self) -> None:
        thread = self._thread
        if (self._close_when_done and thread is not None and thread.is_alive()
                and thread is not threading.current_thread() and not holds_logging_lock()):
            thread.join(self.close_timeout + 1.0)

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
        target = f"redis stream {self.shard_stream!r}" if self.redis_url else "database (direct)"
        return f"<ActivityHandler {target} ({logging.getLevelName(self.level)})>"


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



