"""What the Redis readings of ``activity-logging status`` mean: problems and warnings.

``judge_redis`` reads the fields ``status_redis.gather_redis`` filled on a
``status.PipelineStatus`` and appends a problem (unhealthy) or a warning (healthy, but
worth knowing) for each finding: dead letters, no live worker, a missing group, a lag
over ``max_lag``, entries that left the stream unread, Redis settings or restarts that
lose the stream. Pure: no I/O. See ``status`` for what counts as lost in transit and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .config import heartbeat_key
from .status_redis import HEARTBEAT_MAX_AHEAD, entry_key, format_age, int_or_none, plural

if TYPE_CHECKING:
    from .status import PipelineStatus

#: Clock slack (seconds) when comparing a worker's start with Redis' uptime.
RESTART_SLACK: Final = 5.0


def judge_redis(status: PipelineStatus, *, heartbeat_ttl: float, max_lag: float) -> None:
    """Turn what was read into problems and warnings (a sharded stream: each shard's own,
    ``status_shards.judge_shards``)."""
    _settings_warnings(status)
    _heartbeat_warnings(status)
    _restart_warnings(status)
    _vanished_problem(status)
    if status.live_workers == 0:
        status.problems.append(f"no live worker (no heartbeat under {heartbeat_ttl:g} s)")
    if status.shards:
        from .status_shards import judge_shards

        judge_shards(status, max_lag=max_lag, judge_stream=judge_stream)
    else:
        judge_stream(status, max_lag)


def judge_stream(status: PipelineStatus, max_lag: float) -> None:
    """The findings of one stream: entries lost before the group read them, a missing
    group, a record waiting longer than ``max_lag``."""
    _stream_loss(status)
    if not status.group_exists and status.stream_length:
        status.problems.append(
            f"consumer group {status.group!r} is missing on stream {status.stream!r}")
    if status.oldest_waiting_seconds is not None and status.oldest_waiting_seconds > max_lag:
        status.problems.append(
            f"oldest record waiting in the stream is {status.oldest_waiting_seconds:.0f} s old "
            f"(threshold {max_lag:g} s): workers are behind or stuck"
        )


def _settings_warnings(status: PipelineStatus) -> None:
    if status.redis_settings.get("appendonly", "yes") != "yes":
        status.warnings.append(
            "Redis persistence (AOF) is off: a restart loses the stream and its consumer group"
        )
    policy = status.redis_settings.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        status.warnings.append(
            f"Redis maxmemory-policy is {policy!r}, not 'noeviction': the stream can be evicted"
        )


def _heartbeat_warnings(status: PipelineStatus) -> None:
    """Heartbeats a worker of this library would not write: dated in the future (not live:
    a clock set wrong, or a key written by hand to make ``status`` healthy), naming a
    consumer the group does not know although it has delivered entries (live all the same:
    a worker beats before its first read), or without an expiry (a worker's beat always
    expires). Warnings: a real live worker next to them keeps the pipeline healthy; without
    one, "no live worker" is the problem. Only signed heartbeats could tell a forged
    present-time beat from a worker's; these catch the forgeries that cost nothing."""
    ahead = [w for w in status.workers if w.ahead_seconds is not None]
    if ahead:
        names = ", ".join(f"{w.consumer!r} ({format_age(w.ahead_seconds)} ahead)"
                          for w in ahead[:5])
        more = f" and {len(ahead) - 5} more" if len(ahead) > 5 else ""
        status.warnings.append(
            f"{plural(len(ahead), 'heartbeat is', 'heartbeats are')} dated in the future, "
            f"more than {HEARTBEAT_MAX_AHEAD:g} s ahead of this host's clock: {names}{more}; "
            "not counted as live. A clock is wrong (this host's or the worker's), or the key "
            "was written by someone else (check who can write to this Redis; "
            f"`DEL {heartbeat_key(status.stream, '<consumer>')}` clears one)")
    delivered = status.last_delivered_id not in (None, "0-0")
    if status.group_exists and delivered:  # Redis 7.0 adds a consumer at its first entry
        known = {c.name for c in status.consumers}
        strangers = [w for w in status.workers if w.live and w.consumer not in known]
        if strangers:
            names = ", ".join(repr(w.consumer) for w in strangers[:5])
            more = f" and {len(strangers) - 5} more" if len(strangers) > 5 else ""
            status.warnings.append(
                f"{plural(len(strangers), 'live heartbeat names', 'live heartbeats name')} "
                f"no consumer of group {status.group!r}: {names}{more}. A worker joins the "
                "group at its first read: it has only just started, or the key was written "
                "by someone else")
    forever = [w for w in status.workers if not w.expires]
    if forever:
        names = ", ".join(repr(w.consumer) for w in forever[:5])
        more = f" and {len(forever) - 5} more" if len(forever) > 5 else ""
        status.warnings.append(
            f"{plural(len(forever), 'heartbeat key has', 'heartbeat keys have')} no expiry, "
            f"which a worker's never lacks: {names}{more} (written by someone else?)")


def _vanished_problem(status: PipelineStatus) -> None:
    """Entries a live worker found deleted while they were pending: records lost in transit."""
    vanished = [(w.consumer, int_or_none(w.counters.get("entries_vanished")) or 0)
                for w in status.workers if w.live]
    total = sum(n for _, n in vanished)
    if total:
        names = ", ".join(name for name, n in vanished if n)
        status.problems.append(
            f"worker {names} found {plural(total, 'entry', 'entries')} deleted from the stream "
            "while pending (trimmed before they were stored): their records are lost in "
            "transit; run `activity-logging verify`")


def _restart_warnings(status: PipelineStatus) -> None:
    """A Redis that lost the stream under a live worker: the worker recreated its group, or
    (before it noticed) Redis started after it did while AOF was off.

    Warnings: whether the stream held anything then is not known here. What it held shows
    as sequence gaps once the producers log again, and those are problems.
    """
    recreated = [w for w in status.workers
                 if w.live and (int_or_none(w.counters.get("group_recreated")) or 0) > 0]
    if recreated:
        names = ", ".join(w.consumer for w in recreated)
        status.warnings.append(
            f"worker {names} recreated consumer group {status.group!r} "
            f"({plural(status.group_recreated, 'time', 'times')} since it started): Redis "
            "lost the stream (restarted without persistence, or the key was deleted), and "
            "with it any entries waiting; run `activity-logging verify`"
        )
        return
    uptime = status.redis_uptime_seconds
    if uptime is None or status.redis_settings.get("appendonly") != "no":
        return
    redis_started = status.checked_at.timestamp() - uptime
    before = [w for w in status.workers
              if w.live and w.started is not None and w.started < redis_started - RESTART_SLACK]
    if before:
        kept = ("entries added since the last RDB snapshot"
                if status.redis_settings.get("save") else "every entry")
        status.warnings.append(
            f"Redis restarted {format_age(float(uptime))} ago, after worker {before[0].consumer} "
            f"started, with AOF off: the restart lost {kept} waiting in the stream; "
            "run `activity-logging verify`"
        )


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (text or "").split(".")[:3])
    except ValueError:
        return ()


def _lag_untrustworthy(status: PipelineStatus) -> bool:
    """Redis before 7.2.4 rebuilds ``entries-read`` wrongly when it loads its AOF after a
    rewrite (``XREADGROUP`` is written as ``XCLAIM ... LASTID``, without it), so a group
    that has read everything can report a lag that is not there. Only then is the lag
    doubted: Redis loaded keys from disk when it started, and the group has read up to the
    stream's last generated id (a trim of unread entries on a Redis that was not reloaded
    stays a problem)."""
    generated, delivered = status.last_generated_id, status.last_delivered_id
    if not generated or not delivered or entry_key(delivered) < entry_key(generated):
        return False
    if status.redis_keys_loaded_at_start == 0:  # nothing was reloaded from disk at its start
        return False
    version = _version(status.redis_version)
    return not version or version < (7, 2, 4)


def _stream_loss(status: PipelineStatus) -> None:
    """Entries that left the stream before the group read them (see the module docstring)."""
    if not status.group_exists or status.stream_length is None:
        return
    if status.lag is not None:
        # Exact when nothing is pending; pending entries still in the stream count against
        # it, so it never overstates.
        status.stream_entries_lost = max(status.lag - status.stream_length, 0)
        if status.stream_entries_lost and _lag_untrustworthy(status):
            status.warnings.append(
                f"consumer group {status.group!r} reports a lag of {status.lag} but has read "
                f"up to the stream's last id ({status.last_generated_id}): Redis "
                f"{status.redis_version} reloads a group's entries-read wrongly from its AOF "
                "(fixed in Redis 7.2.4, redis/redis#12898), so the lag cannot tell whether "
                "entries were trimmed unread; the sequence check below can: run "
                "`activity-logging verify` if in doubt")
            status.stream_entries_lost = None
            return
        if status.stream_entries_lost:
            status.problems.append(
                f"the stream lost {plural(status.stream_entries_lost, 'entry', 'entries')} "
                f"before consumer group {status.group!r} read them (XTRIM, or XADD with "
                "MAXLEN/MINID), with every record they carried: run `activity-logging verify` "
                "(docs/cli.md: how to clear this once handled)"
            )
        return
    deleted, delivered = status.max_deleted_entry_id, status.last_delivered_id
    if deleted and delivered and entry_key(deleted) > entry_key(delivered):
        # The worker only deletes what was delivered to it: a deletion past the group's
        # position is someone else's XDEL of entries nobody read.
        status.problems.append(
            f"entries were deleted from {status.stream!r} before consumer group "
            f"{status.group!r} read them (max-deleted-entry-id {deleted} is past "
            f"last-delivered-id {delivered}): run `activity-logging verify`"
        )


__all__ = ["RESTART_SLACK", "judge_redis", "judge_stream"]
