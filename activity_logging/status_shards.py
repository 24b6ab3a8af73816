"""``status`` on a sharded stream: each shard read and judged as a stream of its own, and
the totals (``shards.shard_streams``).

Each shard gets a ``PipelineStatus`` of its own, filled by the same readers as an unsharded
stream (length, group, pending, lag, oldest waiting, consumers) and judged by the same
rules (entries lost before the group read them, a missing group, a lag over ``max_lag``),
its findings named after the shard. The pipeline's own fields then hold the totals: lengths,
pending and undelivered entries and lags summed, the oldest waiting record the oldest of
any shard, consumers merged by name. A stream that looks like a shard of this stream but
is not one of the ``stream_shards`` the check was given (producers configured with another
count) is a problem: no worker configured like this one reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .status_redis import (
    ConsumerInfo,
    _read_consumers,
    _read_oldest_waiting,
    _read_stream,
    entry_key,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .status import PipelineStatus

#: At most this many stray shard streams are named.
MAX_STRAYS: Final = 20


async def read_shards(client: aioredis.Redis, status: PipelineStatus, names: list[str]) -> None:
    """Read every shard into ``status.shards``, then sum them up into ``status``. A shard
    Redis refuses to read (``WRONGTYPE``, ``CLUSTERDOWN`` for its slots alone) is a problem
    of that shard, and the others are read all the same."""
    from redis.exceptions import ResponseError

    from .status import PipelineStatus

    for name in names:
        shard = PipelineStatus(checked_at=status.checked_at, database_url=status.database_url,
                               stream=name, group=status.group)
        try:
            pending_min_ms = await _read_stream(client, shard)
            await _read_oldest_waiting(client, shard, pending_min_ms)
            await _read_consumers(client, shard)
        except ResponseError as exc:
            shard.problems.append(f"cannot read this shard from Redis: {exc}")
        status.shards.append(shard)
    await _read_unsharded(client, status)
    _total(status)


async def _read_unsharded(client: aioredis.Redis, status: PipelineStatus) -> None:
    """With shards, the stream's own key must be empty: entries there were written by
    producers given no ``stream_shards`` (or left from before sharding), and no worker
    given N reads them."""
    length = int(await client.xlen(status.stream))
    if length:
        status.problems.append(
            f"stream {status.stream!r} itself holds {length} entries, but with "
            f"{status.stream_shards} shards no worker reads it: producers run without "
            "ACTIVITY_LOG_STREAM_SHARDS (or it held entries from before sharding). Give them "
            "the same count; drain what is there with a worker given --stream-shards 1")


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _total(status: PipelineStatus) -> None:
    shards = status.shards
    status.stream_length = _sum([s.stream_length for s in shards])
    status.group_exists = all(s.group_exists for s in shards)
    status.pending = sum(s.pending or 0 for s in shards)
    status.undelivered = sum(s.undelivered or 0 for s in shards)
    status.lag = _sum([s.lag for s in shards])
    status.entries_added = _sum([s.entries_added for s in shards])
    status.entries_read = _sum([s.entries_read for s in shards])
    waits = [s.oldest_waiting_seconds for s in shards if s.oldest_waiting_seconds is not None]
    status.oldest_waiting_seconds = max(waits) if waits else None
    for attr, pick in (("first_entry_id", min), ("last_delivered_id", max),
                       ("last_generated_id", max)):
        ids = [getattr(s, attr) for s in shards if getattr(s, attr) is not None]
        setattr(status, attr, pick(ids, key=entry_key) if ids else None)
    merged: dict[str, ConsumerInfo] = {}
    for shard in shards:
        for c in shard.consumers:
            was = merged.get(c.name)
            merged[c.name] = c if was is None else ConsumerInfo(
                c.name, was.pending + c.pending, min(was.idle_seconds, c.idle_seconds))
    status.consumers = sorted(merged.values(), key=lambda c: c.name)


async def find_strays(client: aioredis.Redis, status: PipelineStatus, names: list[str]) -> None:
    """A problem for each stream named like a shard of ``status.stream`` (``<stream>:{...}``)
    that is not one of ``names``: records there are read by no worker given this count."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in status.stream)
    known = set(names)
    strays: list[str] = []
    async for key in client.scan_iter(match=f"{escaped}:{{*}}", count=500, _type="stream"):
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if name not in known:
            strays.append(name)
            if len(strays) >= MAX_STRAYS:
                break
    if strays:
        listed = ", ".join(repr(n) for n in sorted(strays)[:5])
        more = f" and {len(strays) - 5} more" if len(strays) > 5 else ""
        status.problems.append(
            f"{len(strays)} stream(s) look like shards of {status.stream!r} but are not "
            f"among its {status.stream_shards} shard(s): {listed}{more}. Producers run with "
            "another stream_shards than this check (and, likely, the workers): give all of "
            "them the same ACTIVITY_LOG_STREAM_SHARDS")


def judge_shards(status: PipelineStatus, *, max_lag: float,
                 judge_stream: Callable[[PipelineStatus, float], None]) -> None:
    """Judge each shard as a stream (``judge_stream(shard, max_lag)``), its findings named
    after it, and total the entries lost."""
    lost: list[int | None] = []
    for i, shard in enumerate(status.shards):
        shard.redis_version = status.redis_version
        shard.redis_keys_loaded_at_start = status.redis_keys_loaded_at_start
        judge_stream(shard, max_lag)
        label = f"shard {i} of {len(status.shards)} ({shard.stream})"
        status.problems += [f"{label}: {p}" for p in shard.problems]
        status.warnings += [f"{label}: {w}" for w in shard.warnings]
        lost.append(shard.stream_entries_lost)
    status.stream_entries_lost = _sum(lost)  # None when a shard cannot say


def shard_summaries(status: PipelineStatus) -> list[dict[str, Any]]:
    """What ``--json`` shows of each shard."""
    return [{
        "stream": s.stream, "length": s.stream_length, "group_exists": s.group_exists,
        "undelivered": s.undelivered, "pending": s.pending, "lag": s.lag,
        "oldest_waiting_seconds": s.oldest_waiting_seconds,
        "stream_entries_lost": s.stream_entries_lost, "consumers": len(s.consumers),
        "problems": s.problems, "warnings": s.warnings,
    } for s in status.shards]
