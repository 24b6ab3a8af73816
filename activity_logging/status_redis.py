"""The Redis half of ``activity-logging status``: stream, group, consumers, heartbeats, server.

``gather_redis`` reads what Redis reports (one ``MULTI`` for the stream and its group, so
the worker cannot move between two readings) and turns it into problems and warnings on a
``status.PipelineStatus``; ``status`` re-exports the public names. See ``status`` for what
counts as lost in transit and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from ._internal import as_text
from .config import heartbeat_pattern
from .exceptions import StoreUnavailableError
from .urls import redact_url

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .status import PipelineStatus

#: Clock slack (seconds) when comparing a worker's start with Redis' uptime.
RESTART_SLACK: Final = 5.0


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of the group: entries delivered to it and not acknowledged, idle time."""

    name: str
    pending: int
    idle_seconds: float


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as its heartbeat describes it; ``live`` when the beat is recent enough.

    ``started`` is when the worker started (epoch seconds, its own clock), when it says.
    """

    consumer: str
    host: str | None
    pid: int | None
    age_seconds: float
    live: bool
    counters: dict[str, Any] = field(default_factory=dict)
    started: float | None = None


def _int(value: Any) -> int | None:
    """An integer Redis reported, or None (absent, nil, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _entry_id(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = as_text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def entry_ms(entry_id: Any) -> int:
    """The creation time (ms since the epoch, Redis' clock) in a stream entry id."""
    return _entry_id(entry_id)[0]


def _decode_map(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {as_text(k): v for k, v in raw.items()}
    items = list(raw)
    return {as_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def plural(n: int, one: str, many: str) -> str:
    """``"1 entry"``, ``"3 entries"``."""
    return f"{n} {one if n == 1 else many}"


def format_age(seconds: float | None) -> str:
    """A duration for people: ``"4.2 s"``, ``"12.5 min"``, ``"3.0 h"``; ``"-"`` for None."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- reading ---------------------------------------------------------------------------------


async def gather_redis(
    status: PipelineStatus, redis_url: str, *, heartbeat_ttl: float, max_lag: float
) -> None:
    """Fill the stream, group, consumer, dead-letter, worker and server parts of ``status``.

    Raises ``StoreUnavailableError`` when Redis cannot be reached.
    """
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        await _ping(client, redis_url)
        pending_min_ms = await _read_stream(client, status)
        await _read_oldest_waiting(client, status, pending_min_ms)
        await _read_consumers(client, status)
        await _read_heartbeats(client, status, heartbeat_ttl)
        await _read_server(client, status)
    finally:
        await client.aclose()
    _judge_redis(status, heartbeat_ttl=heartbeat_ttl, max_lag=max_lag)


async def _ping(client: aioredis.Redis, redis_url: str) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailableError(
            f"cannot reach Redis at {redact_url(redis_url)}: {type(exc).__name__}: {exc}"
        ) from exc


async def _read_stream(client: aioredis.Redis, status: PipelineStatus) -> int | None:
    """The stream's length and info, its group and pending summary in one ``MULTI`` on the
    one key (a consistent picture), then the dead letters.

    Returns the creation time (ms) of the oldest pending entry, if any. A missing stream or
    group is an error reply inside the transaction, read as "absent".
    """
    pipe = client.pipeline(transaction=True)
    pipe.xlen(status.stream)
    pipe.xinfo_stream(status.stream)
    pipe.xinfo_groups(status.stream)
    pipe.xpending(status.stream, status.group)
    length, stream_info, groups, summary = await pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):  # e.g. WRONGTYPE: not a stream at all
        raise length
    status.stream_length = int(length)
    status.dead_letters = int(await client.xlen(status.dead_stream))
    if not isinstance(stream_info, Exception):
        _apply_stream_info(status, _decode_map(stream_info))
    found = [] if isinstance(groups, Exception) else [_decode_map(g) for g in groups]
    info = next((g for g in found if as_text(g.get("name")) == status.group), None)
    status.group_exists = info is not None
    if info is None:
        return None
    _apply_group_info(status, info)
    smallest = summary.get("min") if isinstance(summary, dict) else None
    return entry_ms(smallest) if smallest else None


def _apply_stream_info(status: PipelineStatus, info: dict[str, Any]) -> None:
    status.entries_added = _int(info.get("entries-added"))  # Redis >= 7
    deleted = info.get("max-deleted-entry-id")
    status.max_deleted_entry_id = as_text(deleted) if deleted is not None else None
    first = info.get("first-entry")
    status.first_entry_id = as_text(first[0]) if first else None
    generated = info.get("last-generated-id")
    status.last_generated_id = as_text(generated) if generated is not None else None


def _apply_group_info(status: PipelineStatus, info: dict[str, Any]) -> None:
    status.pending = _int(info.get("pending")) or 0
    status.last_delivered_id = as_text(info.get("last-delivered-id") or "0-0")
    status.entries_read = _int(info.get("entries-read"))
    status.lag = _int(info.get("lag"))
    if status.lag is not None:
        status.undelivered = status.lag
    else:
        # Redis < 7, or a lag it cannot compute (entries deleted out of order by several
        # workers): what is in the stream and not pending, since the worker deletes what it
        # stored. Cheap, unlike reading the entries themselves.
        status.undelivered = max((status.stream_length or 0) - status.pending, 0)


async def _read_oldest_waiting(
    client: aioredis.Redis, status: PipelineStatus, pending_min_ms: int | None
) -> None:
    oldest_ms = pending_min_ms
    if status.undelivered and status.last_delivered_id is not None:
        first = await client.xrange(status.stream, min=f"({status.last_delivered_id}", count=1)
        if first:
            ms = entry_ms(first[0][0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    if oldest_ms is not None:
        now_ms = int(time.time() * 1000)
        status.oldest_waiting_seconds = round(max(now_ms - oldest_ms, 0) / 1000, 3)


async def _read_consumers(client: aioredis.Redis, status: PipelineStatus) -> None:
    if not status.group_exists:
        return
    for raw in await client.xinfo_consumers(status.stream, status.group):
        c = _decode_map(raw)
        status.consumers.append(ConsumerInfo(
            name=as_text(c.get("name")), pending=_int(c.get("pending")) or 0,
            idle_seconds=round((_int(c.get("idle")) or 0) / 1000, 3),
        ))


async def _read_heartbeats(
    client: aioredis.Redis, status: PipelineStatus, heartbeat_ttl: float
) -> None:
    now = time.time()
    async for key in client.scan_iter(match=heartbeat_pattern(status.stream), count=500):
        raw_beat = await client.get(key)
        if raw_beat is None:
            continue
        worker = _worker_from_beat(as_text(key), raw_beat, now, heartbeat_ttl)
        if worker is None:
            status.warnings.append(f"unreadable heartbeat at {as_text(key)!r}")
            continue
        status.workers.append(worker)
    status.workers.sort(key=lambda w: w.consumer)
    status.group_recreated = sum(
        _int(w.counters.get("group_recreated")) or 0 for w in status.workers if w.live)


def _worker_from_beat(key: str, raw: Any, now: float, heartbeat_ttl: float) -> WorkerInfo | None:
    try:
        beat = orjson.loads(raw)
        age = max(now - float(beat["ts"]), 0.0)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not isinstance(beat, dict):
        return None
    pid, started, counters = beat.get("pid"), beat.get("started"), beat.get("counters")
    return WorkerInfo(
        consumer=str(beat.get("consumer") or key.rsplit(":", 1)[-1]),
        host=beat.get("host"), pid=pid if isinstance(pid, int) else None,
        age_seconds=round(age, 3), live=age <= heartbeat_ttl,
        counters=counters if isinstance(counters, dict) else {},
        started=float(started) if isinstance(started, int | float) else None,
    )


async def _read_server(client: aioredis.Redis, status: PipelineStatus) -> None:
    """Persistence settings and the server's run id and uptime (both often restricted on
    managed Redis: a refusal is a warning or nothing, never a failure)."""
    from redis.exceptions import ResponseError

    try:
        config: dict[Any, Any] = {}
        for name in ("appendonly", "save", "maxmemory-policy"):
            config.update(await client.config_get(name))
        status.redis_settings = {as_text(k): as_text(v) for k, v in config.items()}
    except ResponseError as exc:  # managed Redis often disables CONFIG
        status.warnings.append(f"cannot read Redis persistence settings: {exc}")
    try:
        server = await client.info("server")
    except ResponseError:
        return
    status.redis_run_id = str(server["run_id"]) if server.get("run_id") else None
    status.redis_version = str(server["redis_version"]) if server.get("redis_version") else None
    status.redis_uptime_seconds = _int(server.get("uptime_in_seconds"))
    try:
        persistence = await client.info("persistence")
    except ResponseError:
        return
    status.redis_keys_loaded_at_start = _int(persistence.get("rdb_last_load_keys_loaded"))


def _judge_redis(status: PipelineStatus, *, heartbeat_ttl: float, max_lag: float) -> None:
    """Turn what was read into problems and warnings."""
    _settings_warnings(status)
    _restart_warnings(status)
    _stream_loss(status)
    _vanished_problem(status)
    if status.dead_letters:
        status.problems.append(
            f"{status.dead_letters} dead letter(s) in {status.dead_stream!r}: "
            "records the worker could not store"
        )
    if status.live_workers == 0:
        status.problems.append(f"no live worker (no heartbeat under {heartbeat_ttl:g} s)")
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


def _vanished_problem(status: PipelineStatus) -> None:
    """Entries a live worker found deleted while they were pending: records lost in transit."""
    vanished = [(w.consumer, _int(w.counters.get("entries_vanished")) or 0)
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
                 if w.live and (_int(w.counters.get("group_recreated")) or 0) > 0]
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
    if not generated or not delivered or _entry_id(delivered) < _entry_id(generated):
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
    if deleted and delivered and _entry_id(deleted) > _entry_id(delivered):
        # The worker only deletes what was delivered to it: a deletion past the group's
        # position is someone else's XDEL of entries nobody read.
        status.problems.append(
            f"entries were deleted from {status.stream!r} before consumer group "
            f"{status.group!r} read them (max-deleted-entry-id {deleted} is past "
            f"last-delivered-id {delivered}): run `activity-logging verify`"
        )


__all__ = [
    "RESTART_SLACK",
    "ConsumerInfo",
    "WorkerInfo",
    "entry_ms",
    "format_age",
    "gather_redis",
    "plural",
]
