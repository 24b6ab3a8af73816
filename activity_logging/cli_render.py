"""Text the verbs print: the query table and summary, the cleanup line, the verify report.

Pure: each function takes what a verb read and returns the text, printing nothing, so the
layout is tested without a database. (``status`` renders itself: ``status.render_status``.)
Every stored value goes through ``printable`` (from ``terminal_text``, re-exported here for
the verbs), so none reaches the terminal as a control character.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from .changes import format_changes
from .terminal_text import json_printable, printable

if TYPE_CHECKING:
    from .crud import ActivityRecord, ActivitySummary, ProducerSequence

_TABLE_COLUMNS: Final = (
    ("timestamp", 23), ("severity", 8), ("activity_type", 22), ("actor", 28), ("target", 24),
    ("description", 48),
)
#: ``--show-changes`` adds this last column, never cut: the changes are the point of it.
_CHANGES_COLUMN: Final = ("changes", 0)


def _cell(record: ActivityRecord, name: str) -> str:
    """The text of one cell: runs of whitespace made one space, then ``printable``."""
    return printable(_raw_cell(record, name))


def _raw_cell(record: ActivityRecord, name: str) -> str:
    if name == "timestamp":
        return record.timestamp.isoformat(sep=" ", timespec="milliseconds")[:23]
    if name == "actor":
        return ":".join(p for p in (record.actor_type, record.actor_id) if p) or "-"
    if name == "target":
        return ":".join(p for p in (record.target_type, record.target_id) if p) or "-"
    if name == "changes":
        return " ".join(format_changes(record.changes).split())
    value = getattr(record, name)
    return "-" if value is None else " ".join(str(value).split())


def _fit(text: str, width: int) -> str:
    return text if not width or len(text) <= width else text[: width - 1] + "…"


def render_table(records: Sequence[ActivityRecord], *, show_changes: bool = False) -> str:
    """Records as an aligned text table, one line each, long cells cut with ``…``; every
    stored value shown through ``printable`` (no control character reaches the terminal).

    ``show_changes`` adds a last column, ``field: old → new; ...`` (values as JSON), uncut.
    """
    columns = (*_TABLE_COLUMNS, _CHANGES_COLUMN) if show_changes else _TABLE_COLUMNS
    lines = ["  ".join(f"{name.upper():<{w}}" for name, w in columns).rstrip()]
    for rec in records:
        lines.append("  ".join(f"{_fit(_cell(rec, n), w):<{w}}" for n, w in columns).rstrip())
    return "\n".join(lines)


def render_summary(summary: ActivitySummary, *, bar_width: int = 40) -> str:
    """A summary as text: the total, then counts by type, by severity and by day (with bars);
    the stored type names shown through ``printable``."""
    last_day = (summary.until - timedelta(days=1)).date()
    lines = [f"{summary.total} activities, {summary.since.date()} to {last_day} "
             f"({summary.days} days, UTC)"]
    peak = max(summary.by_day.values(), default=0)
    for title, raw_counts in (("TYPE", summary.by_type), ("SEVERITY", summary.by_severity),
                              ("DAY", summary.by_day)):
        counts = {printable(str(key)): n for key, n in raw_counts.items()}
        width = max([len(title), *map(len, counts)])
        lines += ["", f"{title:<{width}}  {'COUNT':>9}"]
        for key, n in counts.items():
            line = f"{key:<{width}}  {n:>9}"
            if title == "DAY" and peak and n:
                line += "  " + "#" * max(1, round(n / peak * bar_width))
            lines.append(line)
        if not counts:
            lines.append("(none)")
    return "\n".join(lines)


def render_cleanup(result: Any, *, detach: bool = False) -> str:
    """One line saying what a ``retention.CleanupResult`` did, or would do in a dry run."""
    removed = [printable(p) for p in (result.detached_partitions if detach
                                       else result.dropped_partitions)]
    created = [printable(p) for p in result.created_partitions]
    verb = "detached" if detach else "dropped"
    head = (f"cutoff {result.cutoff.isoformat(timespec='seconds')} "
            f"({result.retention_days} days): ")
    if result.dry_run:
        return (f"dry run, nothing changed: {head}{result.deleted_rows} rows older than the "
                f"cutoff; partitions that would be {verb}: {', '.join(removed) or 'none'}; "
                f"would be created: {', '.join(created) or 'none'}")
    return (f"{head}{result.deleted_rows} rows deleted in {result.batches} batches; "
            f"partitions {verb}: {', '.join(removed) or 'none'}; "
            f"created: {', '.join(created) or 'none'}")


def render_sequence_report(reports: Sequence[ProducerSequence], *, max_gaps: int) -> str:
    """``verify``'s table: per producer its rows, seq range, missing and duplicated seqs, at
    most ``max_gaps`` gaps listed under it; then the verdict line. Producer ids (stored
    values) are shown through ``printable``."""
    lines = [f"{'PRODUCER':<40} {'ROWS':>10} {'FIRST':>10} {'LAST':>10} "
             f"{'MISSING':>8} {'DUPS':>6}"]
    for r in reports:
        lines.append(f"{printable(str(r.producer_id)):<40} {r.rows:>10} {r.first_seq:>10} "
                     f"{r.last_seq:>10} "
                     f"{r.missing:>8} {r.duplicates:>6}")
        for start, end in r.gaps[:max_gaps]:
            lines.append(f"    gap: seq {start}" + (f"..{end}" if end != start else ""))
        if len(r.gaps) > max_gaps:
            lines.append(f"    ... {len(r.gaps) - max_gaps} more gaps")
    missing = sum(r.missing for r in reports)
    verdict = "OK: no gaps" if missing == 0 else f"LOSS: {missing} records missing"
    lines.append(f"{verdict} ({len(reports)} producers, {sum(r.rows for r in reports)} rows, "
                 f"{sum(r.duplicates for r in reports)} duplicate seq)")
    return "\n".join(lines)


__all__ = [
    "json_printable",
    "printable",
    "render_cleanup",
    "render_sequence_report",
    "render_summary",
    "render_table",
]
