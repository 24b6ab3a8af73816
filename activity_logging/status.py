"""Pipeline health: what ``activity-logging status`` reports, gathered in one pass.

Replaces the checks operators did by hand (stream length, grepping worker logs, counting
recent rows). Healthy means: at least one live worker (when a Redis stream is in use), no
dead letters, no record waiting in the stream longer than ``max_lag`` seconds, and the
table reachable. Redis settings that can lose the stream (no AOF, an evicting
``maxmemory-policy``) are warnings, not failures (see DESIGN.md).

"Waiting" is measured from the stream itself: entry ids carry their creation time in
milliseconds, so the age of the oldest entry not yet acknowledged (pending with a consumer,
or not yet delivered) is exactly how far behind the worker is, whatever the traffic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from .config import (
    DEFAULT_GROUP,
    DEFAULT_HEARTBEAT_TTL,
    DEFAULT_STREAM,
    dead_stream_for,
    heartbeat_pattern,
)
from .exceptions import StoreUnavailableError
from .schema import redact_url

DEFAULT_MAX_LAG: Final = 300.0


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of the group: entries delivered to it and not acknowledged, idle time."""

    name: str
    pending: int
    idle_seconds: float


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as its heartbeat describes it; ``live`` when the beat is recent enough."""

    consumer: str
    host: str | None
    pid: int | None
    age_seconds: float
    live: bool
    counters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PipelineStatus:
    """Everything ``status`` shows. ``problems`` make it unhealthy; ``warnings`` do not."""

    checked_at: datetime
    database_url: str
    redis_url: str | None = None
    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    dead_stream: str = ""
    stream_length: int | None = None
    group_exists: bool | None = None
    undelivered: int | None = None
    pending: int | None = None
    oldest_waiting_seconds: float | None = None
    consumers: list[ConsumerInfo] = field(default_factory=list)
    dead_letters: int | None = None
    workers: list[WorkerInfo] = field(default_factory=list)
    redis_settings: dict[str, str] = field(default_factory=dict)
    newest_activity: datetime | None = None
    newest_activity_age_seconds: float | None = None
    rows_last_24h: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def live_workers(self) -> int:
        """How many workers have a recent heartbeat."""
        return sum(1 for w in self.workers if w.live)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``--json``)."""
        out = asdict(self)
        out["checked_at"] = self.checked_at.isoformat()
        out["newest_activity"] = self.newest_activity.isoformat() if self.newest_activity else None
        out["healthy"] = self.healthy
        out["live_workers"] = self.live_workers
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _decode_map(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


async def gather_redis(
    status: PipelineStatus, redis_url: str, *, heartbeat_ttl: float, max_lag: float
) -> None:
    """Fill the stream, group, consumer, dead-letter and worker parts of ``status``.

    Raises ``StoreUnavailableError`` when Redis cannot be reached.
    """
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    now_ms = int(time.time() * 1000)
    try:
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailableError(
                f"cannot reach Redis at {redact_url(redis_url)}: {type(exc).__name__}: {exc}"
            ) from exc
        stream, group = status.stream, status.group
        status.stream_length = int(await client.xlen(stream))
        status.dead_letters = int(await client.xlen(status.dead_stream))
        groups = []
        if await client.exists(stream):
            groups = [_decode_map(g) for g in await client.xinfo_groups(stream)]
        info = next((g for g in groups if _text(g.get("name")) == group), None)
        status.group_exists = info is not None
        oldest_ms: int | None = None
        if info is not None:
            status.pending = int(info.get("pending") or 0)
            lag = info.get("lag")
            last_id = _text(info.get("last-delivered-id") or "0-0")
            if lag is None:  # Redis < 7 (or a lag it cannot compute): count after last id
                lag = len(await client.xrange(stream, min=f"({last_id}", count=10_000) or [])
            status.undelivered = int(lag)
            if status.undelivered:
                first = await client.xrange(stream, min=f"({last_id}", count=1)
                if first:
                    oldest_ms = _entry_ms(first[0][0])
            if status.pending:
                summary = await client.xpending(stream, group)
                smallest = summary.get("min") if isinstance(summary, dict) else None
                if smallest:
                    ms = _entry_ms(smallest)
                    oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
            for raw in await client.xinfo_consumers(stream, group):
                c = _decode_map(raw)
                status.consumers.append(ConsumerInfo(
                    name=_text(c.get("name")), pending=int(c.get("pending") or 0),
                    idle_seconds=round(int(c.get("idle") or 0) / 1000, 3),
                ))
        if oldest_ms is not None:
            status.oldest_waiting_seconds = round(max(now_ms - oldest_ms, 0) / 1000, 3)
        now = time.time()
        async for key in client.scan_iter(match=heartbeat_pattern(stream), count=500):
            raw_beat = await client.get(key)
            if raw_beat is None:
                continue
            try:
                beat = orjson.loads(raw_beat)
                age = max(now - float(beat["ts"]), 0.0)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                status.warnings.append(f"unreadable heartbeat at {_text(key)!r}")
                continue
            pid = beat.get("pid")
            status.workers.append(WorkerInfo(
                consumer=str(beat.get("consumer") or _text(key).rsplit(":", 1)[-1]),
                host=beat.get("host"), pid=pid if isinstance(pid, int) else None,
                age_seconds=round(age, 3), live=age <= heartbeat_ttl,
                counters=beat.get("counters") if isinstance(beat.get("counters"), dict) else {},
            ))
        status.workers.sort(key=lambda w: w.consumer)
        try:
            config = await client.config_get("appendonly")
            config.update(await client.config_get("maxmemory-policy"))
            status.redis_settings = {_text(k): _text(v) for k, v in config.items()}
        except ResponseError as exc:  # managed Redis often disables CONFIG
            status.warnings.append(f"cannot read Redis persistence settings: {exc}")
    finally:
        await client.aclose()

    if status.redis_settings.get("appendonly", "yes") != "yes":
        status.warnings.append(
            "Redis persistence (AOF) is off: a restart loses the stream and its consumer group"
        )
    policy = status.redis_settings.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        status.warnings.append(
            f"Redis maxmemory-policy is {policy!r}, not 'noeviction': the stream can be evicted"
        )
    if status.dead_letters:
        status.problems.append(
            f"{status.dead_letters} dead letter(s) in {status.dead_stream!r}: "
            "records the worker could not store"
        )
    if status.live_workers == 0:
        status.problems.append(f"no live worker (no heartbeat under {heartbeat_ttl:g} s)")
    if not status.group_exists and status.stream_length:
        status.problems.append(f"consumer group {group!r} is missing on stream {stream!r}")
    if status.oldest_waiting_seconds is not None and status.oldest_waiting_seconds > max_lag:
        status.problems.append(
            f"oldest record waiting in the stream is {status.oldest_waiting_seconds:.0f} s old "
            f"(threshold {max_lag:g} s): workers are behind or stuck"
        )


async def gather_database(status: PipelineStatus, url: str, *, schema: str | None) -> None:
    """Fill the newest-activity, its age and the rows of the last 24 hours.

    Raises ``StoreUnavailableError`` when the database cannot be reached; a missing table
    (SQLSTATE 42P01, SQLite "no such table") is a problem, not an error. Any other database
    error (a missing database, schema or column) is raised, to be reported as it is.
    """
    from sqlalchemy.exc import DBAPIError

    from .crud import ActivityFilter, activity_log_crud
    from .db import create_async_engine_for
    from .retention import is_missing_table, reachable

    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url), engine.connect() as conn:
            newest = await activity_log_crud.get_newest_timestamp(conn)
            day = ActivityFilter(start=status.checked_at - timedelta(days=1))
            status.rows_last_24h = await activity_log_crud.count(conn, day)
    except DBAPIError as exc:
        if is_missing_table(exc):
            status.problems.append(
                "table activity_logs does not exist: run `activity-logging init-db`")
            return
        raise
    finally:
        await engine.dispose()
    status.newest_activity = newest
    if newest is not None:
        status.newest_activity_age_seconds = round(
            (status.checked_at - newest).total_seconds(), 3)


async def gather_status(
    database_url: str,
    redis_url: str | None = None,
    *,
    schema: str | None = None,
    stream: str = DEFAULT_STREAM,
    group: str = DEFAULT_GROUP,
    max_lag: float = DEFAULT_MAX_LAG,
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL,
) -> PipelineStatus:
    """Check the whole pipeline once. Without ``redis_url`` (embedded mode) only the store.

    Raises ``StoreUnavailableError`` when Redis or the database cannot be reached.
    """
    status = PipelineStatus(
        checked_at=datetime.now(UTC), database_url=redact_url(database_url),
        redis_url=redact_url(redis_url) if redis_url else None, stream=stream, group=group,
        dead_stream=dead_stream_for(stream),
    )
    if redis_url:
        await gather_redis(status, redis_url, heartbeat_ttl=heartbeat_ttl, max_lag=max_lag)
    await gather_database(status, database_url, schema=schema)
    return status


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_status(status: PipelineStatus) -> str:
    """A human-readable report, one fact per line, problems and warnings last."""
    lines = [f"pipeline: {'HEALTHY' if status.healthy else 'UNHEALTHY'}  "
             f"(checked {status.checked_at.isoformat(timespec='seconds')})"]
    if status.redis_url:
        lines += [
            f"redis:            {status.redis_url}",
            f"stream:           {status.stream}  length {status.stream_length}",
            f"group:            {status.group}  "
            + ("missing" if not status.group_exists else
               f"undelivered {status.undelivered}, pending {status.pending}"),
            f"oldest waiting:   {_age(status.oldest_waiting_seconds)}",
            f"dead letters:     {status.dead_letters}  ({status.dead_stream})",
            f"workers:          {status.live_workers} live of {len(status.workers)} seen",
        ]
        for w in status.workers:
            lines.append(f"  {w.consumer:<32} {'live ' if w.live else 'STALE'} host {w.host} "
                         f"pid {w.pid} beat {_age(w.age_seconds)} ago")
        for c in status.consumers:
            lines.append(
                f"  consumer {c.name:<23} pending {c.pending:<8} idle {_age(c.idle_seconds)}")
    else:
        lines.append("redis:            not configured (embedded mode: handler writes directly)")
    newest = "none"
    if status.newest_activity is not None:
        newest = (f"{status.newest_activity.isoformat(timespec='seconds')} "
                  f"({_age(status.newest_activity_age_seconds)} ago)")
    lines += [
        f"database:         {status.database_url}",
        f"newest activity:  {newest}",
        f"rows last 24 h:   {status.rows_last_24h}",
    ]
    lines += [f"PROBLEM: {p}" for p in status.problems]
    lines += [f"warning: {w}" for w in status.warnings]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_MAX_LAG",
    "ConsumerInfo",
    "PipelineStatus",
    "WorkerInfo",
    "gather_status",
    "render_status",
]
