"""The text report of ``activity-logging status``: one fact per line, problems and warnings last.

Pure: renders a ``status.PipelineStatus`` that ``status.gather_status`` filled. Much of it
comes from Redis (stream, group and consumer names, heartbeats, server replies), which
anyone who can write there controls: every line goes through ``terminal_text.printable``, so
none of it reaches the terminal as a control character, and the workers and consumers
listed are capped at ``MAX_LISTED`` each (``--json`` has them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .status_redis import format_age, plural
from .terminal_text import printable

if TYPE_CHECKING:
    from .status import PipelineStatus, SequenceGaps
    from .status_redis import WorkerInfo

#: At most this many workers, and this many consumers, get a line each in the text report.
MAX_LISTED: Final = 50


def window_text(gaps: SequenceGaps) -> str:
    """The rows the sequence check read, for people: ``"the last hour"``,
    ``"the newest 100000 rows (12.0 min)"``."""
    if gaps.capped:
        return f"the newest {gaps.rows} rows ({format_age(gaps.window_seconds)})"
    if gaps.window_seconds == 3600:
        return "the last hour"
    return f"the last {format_age(gaps.window_seconds)}"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _redis_lines(status: PipelineStatus) -> list[str]:
    server = ""
    if status.redis_run_id and status.redis_uptime_seconds is not None:
        server = (f"  (run_id {status.redis_run_id[:12]}, "
                  f"up {format_age(float(status.redis_uptime_seconds))})")
    lines = [
        f"redis:            {status.redis_url}{server}",
        f"stream:           {status.stream}  length {status.stream_length}, "
        f"entries added {_or_dash(status.entries_added)}",
        f"group:            {status.group}  "
        + ("missing" if not status.group_exists else
           f"undelivered {status.undelivered}, pending {status.pending}, "
           f"entries read {_or_dash(status.entries_read)}"),
        f"oldest waiting:   {format_age(status.oldest_waiting_seconds)}",
        f"workers:          {status.live_workers} live of {len(status.workers)} seen",
    ]
    if status.shards:
        lines[1] = (f"stream:           {status.stream}  {len(status.shards)} shards, length "
                    f"{status.stream_length} in all, entries added {_or_dash(status.entries_added)}")
        lines[3:3] = ([_shard_line(i, s) for i, s in enumerate(status.shards[:MAX_LISTED])]
                      + _more(len(status.shards), "shards"))
    lines += [_worker_line(w) for w in status.workers[:MAX_LISTED]]
    lines += _more(len(status.workers), "workers")
    for c in status.consumers[:MAX_LISTED]:
        lines.append(
            f"  consumer {c.name:<23} pending {c.pending:<8} idle {format_age(c.idle_seconds)}")
    lines += _more(len(status.consumers), "consumers")
    return lines


def _shard_line(i: int, shard: PipelineStatus) -> str:
    state = ("group missing" if not shard.group_exists else
             f"undelivered {shard.undelivered}, pending {shard.pending}")
    return (f"  shard {i:<3} {shard.stream:<28} length {_or_dash(shard.stream_length):<8} "
            f"{state}, oldest waiting {format_age(shard.oldest_waiting_seconds)}")


def _worker_line(w: WorkerInfo) -> str:
    if w.ahead_seconds is not None:
        state, beat = "AHEAD", f"beat {format_age(w.ahead_seconds)} in the future"
    else:
        state, beat = "live " if w.live else "STALE", f"beat {format_age(w.age_seconds)} ago"
    recreated = w.counters.get("group_recreated")
    return (f"  {w.consumer:<32} {state} host {w.host} pid {w.pid} {beat}"
            + ("" if w.expires else ", no expiry")
            + (f", recreated the group {recreated}x"
               if isinstance(recreated, int) and recreated else ""))


def _more(count: int, what: str) -> list[str]:
    return [f"  ... {count - MAX_LISTED} more {what} (--json lists all)"] if count > MAX_LISTED else []


def _loss_line(status: PipelineStatus) -> str:
    if status.lost_in_transit is None:
        return "lost in transit:  -"
    if not status.lost_in_transit:
        return "lost in transit:  none found"
    source = ("sequence gaps in recent rows" if status.lost_in_transit_unit == "records"
              else "removed from the stream unread")
    return f"lost in transit:  {status.lost_in_transit} {status.lost_in_transit_unit} ({source})"


def _sequence_line(status: PipelineStatus) -> str:
    gaps = status.recent_sequence
    if gaps is None:
        return "sequence check:   -"
    return (f"sequence check:   {gaps.rows} rows in {window_text(gaps)}, "
            f"{plural(gaps.producers, 'producer', 'producers')} compared, "
            f"{gaps.missing} missing")


def _authentication_line(status: PipelineStatus) -> str:
    state = status.authentication
    if state == "unauthenticated":
        detail = ("no signing key: anyone who can write to Redis or the table can forge or "
                  "rewrite history undetected (docs/security.md)")
    elif state == "unknown":
        detail = "the table cannot say"
    else:
        detail = (f"{status.auth_sealed} of the newest {status.auth_rows} rows sealed, key "
                  f"{', '.join(status.auth_keys)}; `activity-logging verify` checks the seals")
    return f"trail:            {state} ({detail})"


def render_status(status: PipelineStatus) -> str:
    """A human-readable report, one fact per line, problems and warnings last; each line
    escaped with ``printable`` (a value with a newline stays on its line)."""
    lines = [f"pipeline: {'HEALTHY' if status.healthy else 'UNHEALTHY'}  "
             f"(checked {status.checked_at.isoformat(timespec='seconds')})"]
    if status.redis_url:
        lines += _redis_lines(status)
    else:
        lines.append("redis:            not configured (embedded mode: handler writes directly)")
    newest = "none"
    if status.newest_activity is not None:
        newest = (f"{status.newest_activity.isoformat(timespec='seconds')} "
                  f"({format_age(status.newest_activity_age_seconds)} ago)")
    lines += [
        f"database:         {status.database_url}",
        f"newest activity:  {newest}",
        f"rows last 24 h:   {_or_dash(status.rows_last_24h)}",
        f"dead letters:     {_or_dash(status.dead_letters)}  (last 24 h: "
        f"{_or_dash(status.dead_letters_last_24h)}; activity-logging dead-letters list)",
        _sequence_line(status),
        _loss_line(status),
        _authentication_line(status),
    ]
    lines += [f"PROBLEM: {p}" for p in status.problems]
    lines += [f"warning: {w}" for w in status.warnings]
    return "\n".join(printable(line) for line in lines)


__all__ = ["MAX_LISTED", "render_status", "window_text"]
