"""The listener thread of ``ActivityHandler``: batch, redact, send, back off, spool, account.

``ListenerLoop`` is the half of the handler that runs in its own thread (``_run``): it
takes up to ``batch_size`` queued records at a time, lets a partial batch linger up to
``flush_interval``, redacts secrets (``Redactor.redact_records``) and hands up to
``MAX_BATCHES_PER_SEND`` batches to the sink in one call. When the sink fails it backs off
(``reconnect_delay`` doubling up to ``max_reconnect_delay``, ``_internal.Backoff``) and
either holds the batches in hand or, with a spool, writes them to disk and replays them
when the sink is back. Every record leaves through ``_account`` under exactly one counter.

A mixin, not a class of its own: it works on the handler's state, which
``ActivityHandler._init_runtime`` sets up (the deque ``_dq``, ``_counts``, ``_sink``,
``_spool``, ``_encoder``, ``_redactor`` and the flags that ``flush``/``close`` set).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from ._internal import Backoff, reporter
from .exceptions import EntryFormatError
from .snapshot import QueuedRecord, queued_size
from .spool import ReplayResult, Spool, SpoolReplayError
from .wire import Batch, Entry

if TYPE_CHECKING:
    from .redact import Redactor
    from .sinks import Sink
    from .wire import WireEncoder

#: Batches handed to the sink in one call (one pipelined round trip to Redis).
MAX_BATCHES_PER_SEND: Final = 8

Held = tuple[Batch, int, bool]  # (batch, records, maybe stored)


class _ReplayStopped(Exception):
    """A spool replay interrupted on purpose: a close began, or its budget ran out."""


SENT: Final = 0
FAILED: Final = 1
UNCONFIRMED: Final = 2


class ListenerLoop:
    """The listener's side of ``ActivityHandler`` (see the module docstring)."""

    # set up by ActivityHandler._init_runtime and __init__
    _dq: deque[QueuedRecord]
    _counts: dict[str, int]
    _sink: Sink
    _spool: Spool | None
    _encoder: WireEncoder
    _redactor: Redactor
    _held: list[Held]
    _cond: threading.Condition

    def _maybe_checkpoint(self) -> None: ...  # ActivityHandler: the periodic checkpoint
    _wake: threading.Event
    _backoff: Backoff
    batch_size: int
    flush_interval: float
    _in_flight: int
    _done: int
    _bytes_out: int
    _hand_bytes: int
    _down_until: float
    _give_up_at: float | None
    _replay_until: float
    _waiting: bool
    _wake_at: int
    _urgent: bool
    _stop_requested: bool
    _close_when_done: bool
    _listener_ended: bool
    _thread: threading.Thread | None

    def _release(self) -> None:  # ActivityHandler: the listener's last act when closing
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._step():
                        break
                except Exception as exc:  # a bug must not kill the listener
                    self._counts["listener_errors"] += 1
                    reporter.report("listener", "listener loop error", exc)
                    time.sleep(0.1)
        finally:
            # Under the lock close() takes to hand the release over: exactly one side
            # releases, even when close() looks at this thread between its last check and
            # its exit.
            with self._cond:
                self._listener_ended = True
                release = self._close_when_done
            if release:
                self._release()

    def _step(self) -> bool:
        """One turn of the listener; False when it should exit."""
        self._maybe_checkpoint()
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
                if outcome == SENT:
                    self._held = []
                    self._account(sum(n for _, n, _ in held), "sent", batches=len(held))
                else:
                    held = [(e, n, maybe or outcome == UNCONFIRMED) for e, n, maybe in held]
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
        while dq and len(batches) < MAX_BATCHES_PER_SEND:
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
        if outcome == SENT:
            self._account(sum(b.n for b in batches), "sent", batches=len(batches))
        elif self._spool is not None:  # resent from the spool later: the ids make that safe
            self._to_spool([(b, b.n, outcome == UNCONFIRMED) for b in batches])
        else:
            self._held = [(b, b.n, outcome == UNCONFIRMED) for b in batches]
        return True

    def _batch(self, items: list[QueuedRecord]) -> Batch | None:
        """One batch for ``items``, secrets redacted; records that cannot be encoded are
        counted, alone."""
        encoder = self._encoder
        before = encoder.unencodable
        try:
            self._redactor.redact_in_place(items)
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
        self._hand_bytes += sum(map(queued_size, items))
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
        """Send ``batches``; ``SENT``, ``FAILED`` or ``UNCONFIRMED`` (no answer: maybe stored)."""
        try:
            self._sink.send(batches)
        except Exception as exc:
            unconfirmed = self._unconfirmed(exc)
            self._counts["send_timeouts" if unconfirmed else "send_failures"] += 1
            self._mark_down(f"sink unavailable ({len(self._dq)} records queued)", exc)
            return UNCONFIRMED if unconfirmed else FAILED
        self._mark_up()
        return SENT

    def _unconfirmed(self, exc: BaseException) -> bool:
        try:
            return bool(self._sink.unconfirmed(exc))
        except Exception:  # a sink without the method (tests' fakes): a plain failure
            return False

    def _mark_down(self, what: str, exc: BaseException) -> None:
        delay = self._backoff.next()
        self._down_until = time.monotonic() + delay
        reporter.report("send", f"{what}, retrying in {delay:.1f}s", exc)

    def _mark_up(self) -> None:
        if self._down_until:
            self._counts["reconnects"] += 1
            self._down_until = 0.0
        self._backoff.reset()

    def _to_spool(self, entries: list[Held]) -> None:
        """Spool each entry; what the spool cannot take stays in hand (retried) or, when
        closing, is left in hand for ``_give_up`` to count after every other entry was tried."""
        assert self._spool is not None
        failed: list[Held] = []
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
                        self._down_until = time.monotonic() + self._backoff.delay
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
        if n:
            # In-hand records keep counting against queue_max_bytes until they leave; records
            # leave in any order (held, spooled, sent), so each takes the average share, and
            # the last to leave takes what is left: exact whenever the hand is empty.
            held_bytes, held = self._hand_bytes, self._in_flight
            release = held_bytes if n >= held else held_bytes * n // held
            self._hand_bytes = held_bytes - release
            self._bytes_out += release
        self._in_flight -= n
        with self._cond:
            self._done += n
            self._cond.notify_all()

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
                if outcome == SENT:
                    self._account(made.n, "sent", batches=1)
                else:
                    self._held.append((made, made.n, outcome == UNCONFIRMED))
                    break
        self._give_up()
