"""Text the verbs print: the query table and summary, the cleanup line, the verify report.

Pure: each function takes what a verb read and returns the text, printing nothing, so the
layout is tested without a database. (``status`` renders itself: ``status.render_status``.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from .changes import format_changes

if TYPE_CHECKING:
    from .crud import ActivityRecord, ActivitySummary, ProducerSequence

#: What a terminal may act on or hide rather than show: every control character (C0 with
#: TAB, LF and CR, DEL, C1 with CSI/OSC/NEL), the bidirectional embeddings, overrides,
#: isolates and marks (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), the line and
#: paragraph separators (U+2028/9), invisible format characters with no part in writing a
#: language (U+200B, U+2060-U+2064, U+FEFF, U+FFF9-U+FFFB) and lone surrogates (which
#: would make ``print`` raise). ZWNJ/ZWJ (U+200C/D) stay: Persian, Indic scripts and emoji
#: sequences need them.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


_SHORT: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to print on one terminal line: every character ``_UNSAFE`` names is
    shown as a visible escape (ESC as ``\\x1b``, LF as ``\\n``, RLO as ``\\u202e``); all
    else, non-ASCII letters and emoji included, is left as it is.

    For showing stored or remote values (rows, Redis names, heartbeats) to a person: a
    value cannot move the cursor, recolour or retitle the terminal, ring the bell, hide
    itself or reverse the text around it. A backslash is not doubled, so a literal
    ``\\x1b`` in a value reads like an escaped one; the exact value is in ``--json``.
    Pure, never raises; a clean ASCII string is returned as is after one C-speed check.
    """
    if text.isascii() and text.isprintable():
        return text
    return _UNSAFE.sub(_escape, text)


_TABLE_COLUMNS: Final = (
    ("timestamp", 23), ("severity", 8), ("activity_type", 22), ("actor", 28), ("target", 24),
    ("description", 48),
)
#: ``--show-changes`` adds this last column, never cut: the changes are the point of it.
_CHANGES_COLUMN: Final = ("changes", 0)


def _cell(record: ActivityRecord, name: str) -> str:
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
    """Records as an aligned text table, one line each, long cells cut with ``…``.

    ``show_changes`` adds a last column, ``field: old → new; ...`` (values as JSON), uncut.
    """
    columns = (*_TABLE_COLUMNS, _CHANGES_COLUMN) if show_changes else _TABLE_COLUMNS
    lines = ["  ".join(f"{name.upper():<{w}}" for name, w in columns).rstrip()]
    for rec in records:
        lines.append("  ".join(f"{_fit(_cell(rec, n), w):<{w}}" for n, w in columns).rstrip())
    return "\n".join(lines)


def render_summary(summary: ActivitySummary, *, bar_width: int = 40) -> str:
    """A summary as text: the total, then counts by type, by severity and by day (with bars)."""
    last_day = (summary.until - timedelta(days=1)).date()
    lines = [f"{summary.total} activities, {summary.since.date()} to {last_day} "
             f"({summary.days} days, UTC)"]
    peak = max(summary.by_day.values(), default=0)
    for title, counts in (("TYPE", summary.by_type), ("SEVERITY", summary.by_severity),
                          ("DAY", summary.by_day)):
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
    removed = result.detached_partitions if detach else result.dropped_partitions
    verb = "detached" if detach else "dropped"
    head = (f"cutoff {result.cutoff.isoformat(timespec='seconds')} "
            f"({result.retention_days} days): ")
    if result.dry_run:
        return (f"dry run, nothing changed: {head}{result.deleted_rows} rows older than the "
                f"cutoff; partitions that would be {verb}: {', '.join(removed) or 'none'}; "
                f"would be created: {', '.join(result.created_partitions) or 'none'}")
    return (f"{head}{result.deleted_rows} rows deleted in {result.batches} batches; "
            f"partitions {verb}: {', '.join(removed) or 'none'}; "
            f"created: {', '.join(result.created_partitions) or 'none'}")


def render_sequence_report(reports: Sequence[ProducerSequence], *, max_gaps: int) -> str:
    """``verify``'s table: per producer its rows, seq range, missing and duplicated seqs, at
    most ``max_gaps`` gaps listed under it; then the verdict line."""
    lines = [f"{'PRODUCER':<40} {'ROWS':>10} {'FIRST':>10} {'LAST':>10} "
             f"{'MISSING':>8} {'DUPS':>6}"]
    for r in reports:
        lines.append(f"{r.producer_id:<40} {r.rows:>10} {r.first_seq:>10} {r.last_seq:>10} "
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
