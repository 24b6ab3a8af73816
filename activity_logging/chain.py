"""Checking a stored trail, producer by producer: the core of ``activity-logging verify``.

Rows come in ``(producer_id, seq, id)`` order (``chain_store.stream_rows``) and are fed one
at a time to ``ChainVerifier``, which keeps only the previous row of the current producer,
so memory does not grow with the table. For each producer it finds, in ``seq`` order:

* ``altered``: a row whose seal (``row_mac``) does not match its columns (an UPDATE, or a
  row INSERTed by someone without the key);
* ``unsigned``: a row without a seal where a key ring was given (an INSERT behind the
  library's back, or a producer that runs without the key);
* ``unsealed``: a chained row without a seal (stored by a worker that had no key);
* ``unknown_key``: a row sealed with a key the ring does not hold;
* ``duplicate``: a second row with the same ``seq``;
* ``missing``: a gap in ``seq`` (rows deleted, or lost on the way: a dead letter, a
  ``kill -9`` of the application);
* ``broken_link``: a row whose ``prev_mac`` is not the ``mac`` of the row before it;
* ``head_missing``: the first row is not the producer's first and no retention cut
  explains the rows before it (rows deleted beyond a cut, or a cut marker removed);
* ``open_tail``: the trail does not end with the producer's closing checkpoint and its
  newest row is older than ``open_grace`` seconds (the newest rows deleted, or the
  producer killed before it could close).

Pure: no I/O. ``signing`` holds the MACs' definitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from .signing import CHECKPOINT_TYPE, KeyRing, cut_matches, row_seal_matches

#: Kinds of problem that mean the trail is not what the producers wrote.
PROBLEM_KINDS: Final = (
    "altered", "unsigned", "unsealed", "unknown_key", "duplicate", "missing", "broken_link",
    "head_missing", "bad_cut", "open_tail",
)


@dataclass(frozen=True)
class Problem:
    """One finding: its kind, the producer, the ``seq`` (and row id) where it shows."""

    kind: str
    producer_id: str
    seq: int | None
    row_id: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "producer_id": self.producer_id, "seq": self.seq,
                "id": self.row_id, "detail": self.detail}


@dataclass
class ChainReport:
    """One producer's trail as checked: counts, the range seen, how it ends, and the
    first ``max_problems`` problems (``problem_count`` counts them all)."""

    producer_id: str
    rows: int = 0
    sealed: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_at: datetime | None = None
    closed: bool = False
    checkpoints: int = 0
    checkpoint_interval: float | None = None
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        return {"producer_id": self.producer_id, "rows": self.rows, "sealed": self.sealed,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "last_at": self.last_at.isoformat() if self.last_at else None,
                "closed": self.closed, "checkpoints": self.checkpoints, "ok": self.ok,
                "problem_count": self.problem_count,
                "problems": [p.to_dict() for p in self.problems]}


def is_checkpoint(row: Mapping[str, Any]) -> tuple[bool, bool]:
    """(is a checkpoint record, is the closing one)."""
    if row.get("activity_type") != CHECKPOINT_TYPE or row.get("logger") != "activity_logging.checkpoint":
        return False, False
    meta = row.get("metadata")
    mark = meta.get("checkpoint") if isinstance(meta, dict) else None
    return True, bool(isinstance(mark, dict) and mark.get("closing") is True)


class ChainVerifier:
    """Feed rows in ``(producer_id, seq, id)`` order with ``feed``; ``finish`` returns the
    reports. ``keyring`` None checks links and sequence only (an unauthenticated check:
    anyone can make rows that pass it). ``cuts`` are the retention cut markers by producer.
    ``windowed`` (a ``--since`` check) does not expect a producer's first row to be there;
    ``whole_table`` (every producer fed) also checks the cut markers of producers with no
    row left: only a trail that had closed may be cut to nothing.
    ``now`` and ``open_grace`` (seconds) decide when a trail that is not closed is stale."""

    def __init__(self, *, keyring: KeyRing | None, cuts: Mapping[str, Mapping[str, Any]],
                 now: datetime, open_grace: float, windowed: bool = False,
                 whole_table: bool = False, max_problems: int = 20) -> None:
        self.keyring = keyring
        self.cuts = cuts
        self.now = now
        self.open_grace = open_grace
        self.windowed = windowed
        self.whole_table = whole_table
        self.max_problems = max_problems
        self.reports: list[ChainReport] = []
        self._current: ChainReport | None = None
        self._prev: Mapping[str, Any] | None = None
        self._cut: tuple[int, Any] = (0, None)

    def _problem(self, report: ChainReport, kind: str, row: Mapping[str, Any] | None,
                 detail: str, seq: int | None = None) -> None:
        report.problem_count += 1
        if len(report.problems) < self.max_problems:
            rid = None if row is None else str(row.get("id"))
            report.problems.append(Problem(kind, report.producer_id,
                                           seq if seq is not None or row is None else row.get("seq"),
                                           rid, detail))

    def feed(self, row: Mapping[str, Any]) -> None:
        """Check one row against the one before it (same producer) and against its seal."""
        producer = str(row.get("producer_id"))
        report = self._current
        if report is None or report.producer_id != producer:
            if report is not None:
                self._end(report)
            report = self._current = ChainReport(producer)
            self.reports.append(report)
            self._prev = None
            self._start_cut(report, row)
        seq = int(row["seq"])
        report.rows += 1
        if report.first_seq is None:
            report.first_seq = seq
        report.last_seq = seq
        ts = row.get("timestamp")
        if isinstance(ts, datetime) and (report.last_at is None or ts > report.last_at):
            report.last_at = ts
        self._check_seal(report, row)
        prev = self._prev
        if prev is not None and seq == int(prev["seq"]):
            self._problem(report, "duplicate", row, f"a second row with seq {seq}")
        elif row.get("mac") is None:  # an unchained row: only its sequence can be checked
            if prev is not None and seq > int(prev["seq"]) + 1:
                self._missing(report, row, int(prev["seq"]) + 1, seq)
        else:
            self._check_link(report, row, seq, prev)
        is_cp, closing = is_checkpoint(row)
        if is_cp and (row.get("row_mac") or self.keyring is None):
            report.checkpoints += 1
            mark = row["metadata"]["checkpoint"]
            interval = mark.get("interval") if isinstance(mark, dict) else None
            if isinstance(interval, int | float) and not isinstance(interval, bool):
                report.checkpoint_interval = float(interval)
        report.closed = closing
        self._prev = row

    def _start_cut(self, report: ChainReport, row: Mapping[str, Any]) -> None:
        """The producer's retention cut: (last seq deleted, its link), or (0, None)."""
        self._cut = (0, None)
        cut = self.cuts.get(report.producer_id)
        if cut is None:
            return
        if self.keyring is not None and not cut_matches(cut, self.keyring):
            self._problem(report, "bad_cut", row, "the retention cut marker's MAC does not match")
            return
        self._cut = (int(cut["seq"]), cut.get("link"))

    def _missing(self, report: ChainReport, row: Mapping[str, Any], first: int, seq: int) -> None:
        self._problem(report, "missing", row,
                      f"seq {first}..{seq - 1} missing ({seq - first} rows)", seq=first)

    def _check_link(self, report: ChainReport, row: Mapping[str, Any], seq: int,
                    prev: Mapping[str, Any] | None) -> None:
        """A chained row's place: after the cut (rows at or below it may be gone, or kept
        because their time was newer than the cutoff), after its predecessor, or first."""
        cut_seq, cut_link = self._cut
        if seq <= cut_seq:
            return  # kept below the cut: its seal is checked, its neighbours may be gone
        if cut_seq and seq == cut_seq + 1:
            if row.get("prev_mac") != cut_link:
                self._problem(report, "head_missing", row,
                              f"seq {seq} does not follow the retention cut through seq {cut_seq}",
                              seq=seq)
            return
        if prev is None:
            if self.windowed:
                return  # a window starts anywhere
            if seq == 1 and not cut_seq:
                if row.get("prev_mac") != "":
                    self._problem(report, "broken_link", row,
                                  "the producer's first record names a predecessor")
                return
            what = (f"retention cut through seq {cut_seq}, but" if cut_seq
                    else "no retention cut marker covers the rows before it:")
            self._problem(report, "head_missing", row,
                          f"{what} the trail starts at seq {seq}", seq=cut_seq + 1)
            return
        prev_seq = int(prev["seq"])
        first_expected = max(prev_seq + 1, cut_seq + 1)
        if seq > first_expected:
            self._missing(report, row, first_expected, seq)
        elif prev.get("mac") is not None and row.get("prev_mac") != prev.get("mac"):
            self._problem(report, "broken_link", row,
                          f"prev_mac does not name seq {prev_seq}'s mac")

    def _check_seal(self, report: ChainReport, row: Mapping[str, Any]) -> None:
        if self.keyring is None:
            return
        if not row.get("key_id"):
            self._problem(report, "unsigned", row, "row has no seal (not written by a "
                          "producer with the key)")
            return
        if not row.get("row_mac"):
            self._problem(report, "unsealed", row, "row is chained but has no seal (stored by "
                          "a worker without the key, or its seal was removed)")
            return
        matches = row_seal_matches(row, self.keyring)
        if matches is None:
            self._problem(report, "unknown_key", row,
                          f"sealed with key {str(row.get('key_id'))[:32]!r}, not in the key ring")
        elif not matches:
            self._problem(report, "altered", row, "row_mac does not match the row's columns")
        else:
            report.sealed += 1

    def _end(self, report: ChainReport) -> None:
        prev = self._prev
        if prev is None or prev.get("mac") is None or report.closed:
            return
        last = report.last_at
        age = (self.now - last).total_seconds() if last is not None else 0.0
        # a producer writes a checkpoint every interval: three missed is not a quiet moment
        grace = max(self.open_grace, 3 * (report.checkpoint_interval or 0.0))
        if age > grace:
            self._problem(report, "open_tail", prev,
                          f"the trail ends at seq {report.last_seq} without its closing "
                          f"checkpoint, {age:.0f} s ago (newest rows deleted, or the producer "
                          "was killed)")

    def finish(self) -> list[ChainReport]:
        """End the last producer's trail; the reports, in producer order."""
        if self._current is not None:
            self._end(self._current)
            self._current = None
        if self.whole_table:
            seen = {r.producer_id for r in self.reports}
            for producer, cut in sorted(self.cuts.items()):
                if producer in seen:
                    continue
                report = ChainReport(producer)
                if self.keyring is not None and not cut_matches(cut, self.keyring):
                    self._problem(report, "bad_cut", None,
                                  "the retention cut marker's MAC does not match", seq=None)
                elif not cut.get("closed"):
                    self._problem(report, "open_tail", None,
                                  f"retention cut through seq {cut['seq']} and no row after it, "
                                  "but the trail had not ended there (its last deleted row was "
                                  "not the closing checkpoint): its newest rows were deleted",
                                  seq=int(cut["seq"]) + 1)
                if report.problem_count:
                    self.reports.append(report)
        return self.reports
