"""The Redis half of ``activity-logging status``, reading: stream, group, consumers,
heartbeats, server.

``gather_redis`` copies what Redis reports onto a ``status.PipelineStatus`` (one ``MULTI``
for the stream and its group, so the worker cannot move between two readings);
``status_findings`` then says what it means (problems, warnings); ``status`` re-exports the
public names. See ``status`` for what counts as lost in transit and why. redis is imported
inside the functions that use it, as ``status`` explains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from ._internal import as_text
from .config import heartbeat_key, heartbeat_pattern
from .exceptions import StoreUnavailableError
from .urls import redact_url

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .status import PipelineStatus

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
    Every field is bounded (names cut to ``MAX_NAME_CHARS``) but not escaped: the text
    report escapes what it prints (``terminal_text.printable``).
    """

    consumer: str
    host: str | None
    pid: int | None
    age_seconds: float
    live: bool
    counters: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    #: How far ahead of this host's clock the beat is dated (seconds), when that is more
    #: than ``HEARTBEAT_MAX_AHEAD``: then the worker is not live. None otherwise.
    ahead_seconds: float | None = None
    #: Seconds the key has left before Redis expires it, when known.
    ttl_seconds: float | None = None
    #: False when the key has no expiry: a worker always sets one, so such a key is not a
    #: worker's beat.
    expires: bool = True


def int_or_none(value: Any) -> int | None:
    """An integer Redis reported, or None (absent, nil, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def entry_key(entry_id: Any) -> tuple[int, int]:
    """A stream entry id as ``(ms, seq)``, ordered as Redis orders ids."""
    ms, _, seq = as_text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def entry_ms(entry_id: Any) -> int:
    """The creation time (ms since the epoch, Redis' clock) in a stream entry id."""
    return entry_key(entry_id)[0]


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


async def gather_redis(status: PipelineStatus, redis_url: str, *, heartbeat_ttl: float) -> None:
    """Fill the stream, group, consumer, dead-letter, worker and server parts of ``status``
    (a worker is live when its heartbeat is under ``heartbeat_ttl`` seconds old).

    Adds only the warnings of what could not be read; ``status_findings.judge_redis`` says
    what the readings mean. A reading Redis refuses (``WRONGTYPE``: the stream's key holds
    something else; ``NOPERM``: an ACL) is a problem naming it, and the other readings go
    on. Raises ``StoreUnavailableError`` when Redis cannot be reached, or is lost midway.
    """
    from redis.exceptions import RedisClusterException, ResponseError

    from .redis_clients import async_client
    from .redis_errors import is_transient_redis_error, wrong_redis_kind
    from .shards import shard_streams
    from .status_shards import find_strays, read_shards

    names = shard_streams(status.stream, status.stream_shards)

    async def stream() -> None:
        if status.stream_shards > 1:
            await read_shards(client, status, names)
            return
        pending_min_ms = await _read_stream(client, status)
        await _read_oldest_waiting(client, status, pending_min_ms)

    async def consumers() -> None:
        if status.stream_shards == 1:  # a shard's are read with the shard
            await _read_consumers(client, status)

    client = async_client(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        await _ping(client, redis_url)
        steps: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            (f"stream {status.stream!r}", stream),
            (f"the consumers of group {status.group!r}", consumers),
            ("the streams named like shards", lambda: find_strays(client, status, names)),
            ("the heartbeats", lambda: _read_heartbeats(client, status, heartbeat_ttl)),
            ("the server's settings", lambda: _read_server(client, status)),
        )
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                if is_transient_redis_error(exc):
                    raise StoreUnavailableError(
                        f"lost Redis at {redact_url(redis_url)} while reading {what}: "
                        f"{type(exc).__name__}: {exc}") from exc
                if not isinstance(exc, ResponseError | RedisClusterException):
                    raise
                wrong = wrong_redis_kind(exc, redis_url)
                status.problems.append(f"{wrong}" if wrong is not None
                                       else f"cannot read {what} from Redis: {exc}")
    finally:
        await client.aclose()


async def _ping(client: aioredis.Redis, redis_url: str) -> None:
    """``StoreUnavailableError`` when Redis (or every node of a cluster) cannot be reached;
    ``ConfigurationError`` when the URL names the wrong kind of Redis (``redis+cluster://``
    at a single Redis)."""
    from .redis_errors import is_transient_redis_error, wrong_redis_kind

    try:
        await client.ping()
    except Exception as exc:
        wrong = wrong_redis_kind(exc, redis_url)
        if wrong is not None:
            raise wrong from exc
        if not is_transient_redis_error(exc):
            raise
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
    status.entries_added = int_or_none(info.get("entries-added"))  # Redis >= 7
    deleted = info.get("max-deleted-entry-id")
    status.max_deleted_entry_id = as_text(deleted) if deleted is not None else None
    first = info.get("first-entry")
    status.first_entry_id = as_text(first[0]) if first else None
    generated = info.get("last-generated-id")
    status.last_generated_id = as_text(generated) if generated is not None else None


def _apply_group_info(status: PipelineStatus, info: dict[str, Any]) -> None:
    status.pending = int_or_none(info.get("pending")) or 0
    status.last_delivered_id = as_text(info.get("last-delivered-id") or "0-0")
    status.entries_read = int_or_none(info.get("entries-read"))
    status.lag = int_or_none(info.get("lag"))
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
            name=as_text(c.get("name")), pending=int_or_none(c.get("pending")) or 0,
            idle_seconds=round((int_or_none(c.get("idle")) or 0) / 1000, 3),
        ))


#: A heartbeat dated more than this many seconds ahead of this host's clock is not live: a
#: worker's clock that is wrong, or a key someone else wrote (``SET <stream>:heartbeat:x``
#: with a time far ahead would otherwise count as a live worker for as long as it says).
HEARTBEAT_MAX_AHEAD: Final = 5.0
#: At most this many bytes of a heartbeat are read (a worker's is a few hundred); a longer
#: value is not ours and is reported unread.
MAX_HEARTBEAT_BYTES: Final = 16_384
#: At most this many heartbeat keys are read per ``status``; more is reported.
MAX_HEARTBEATS: Final = 1_000
#: Names (consumer, host) taken from a heartbeat are cut to this many characters.
MAX_NAME_CHARS: Final = 200
#: Heartbeat keys read per round trip.
_BEAT_BATCH: Final = 100


@dataclass(slots=True)
class _BeatFindings:
    """What was odd among the heartbeat keys: each list holds key names."""

    unreadable: list[str] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)
    not_strings: list[str] = field(default_factory=list)
    truncated: bool = False


async def _read_heartbeats(
    client: aioredis.Redis, status: PipelineStatus, heartbeat_ttl: float
) -> None:
    """Read at most ``MAX_HEARTBEATS`` heartbeat keys, each bounded to
    ``MAX_HEARTBEAT_BYTES`` (``STRLEN`` + ``GETRANGE`` + ``PTTL``, a batch of keys per round
    trip). A key that is not a string, too long, or not a heartbeat of ours is a warning,
    never an error; a beat from the future is a worker that is not live (see
    ``status_findings``)."""
    now = time.time()
    prefix = heartbeat_key(status.stream, "")
    found = _BeatFindings()
    keys: list[Any] = []
    async for key in client.scan_iter(match=heartbeat_pattern(status.stream), count=500):
        if len(keys) >= MAX_HEARTBEATS:
            found.truncated = True
            break
        keys.append(key)
    for i in range(0, len(keys), _BEAT_BATCH):
        batch = keys[i:i + _BEAT_BATCH]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.strlen(key)
            pipe.getrange(key, 0, MAX_HEARTBEAT_BYTES - 1)
            pipe.pttl(key)
        replies = await pipe.execute(raise_on_error=False)
        for j, key in enumerate(batch):
            length, raw, pttl = replies[3 * j:3 * j + 3]
            name = as_text(key)
            if isinstance(length, Exception) or isinstance(raw, Exception):
                found.not_strings.append(name)  # WRONGTYPE: a hash, a list... not ours
                continue
            if not length:
                continue  # expired between SCAN and the read
            if int(length) > MAX_HEARTBEAT_BYTES:
                found.oversized.append(name)
                continue
            pttl = None if isinstance(pttl, Exception) else int(pttl)
            if pttl == -2:
                continue  # expired between the reads
            worker = _worker_from_beat(
                _consumer_of(name, prefix), raw, now, heartbeat_ttl,
                ttl_seconds=pttl / 1000 if pttl is not None and pttl >= 0 else None,
                expires=pttl != -1)
            if worker is None:
                found.unreadable.append(name)
                continue
            status.workers.append(worker)
    status.workers.sort(key=lambda w: w.consumer)
    status.group_recreated = sum(
        int_or_none(w.counters.get("group_recreated")) or 0 for w in status.workers if w.live)
    _beat_warnings(status, found)


def _consumer_of(key: str, prefix: str) -> str:
    """The consumer a heartbeat key names: what follows ``<stream>:heartbeat:``."""
    name = key[len(prefix):] if key.startswith(prefix) else key.rsplit(":", 1)[-1]
    return name[:MAX_NAME_CHARS]


def _beat_warnings(status: PipelineStatus, found: _BeatFindings) -> None:
    def some(keys: list[str]) -> str:
        shown = ", ".join(repr(k[:MAX_NAME_CHARS]) for k in keys[:3])
        return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    if found.unreadable:
        status.warnings.append(
            f"{plural(len(found.unreadable), 'heartbeat', 'heartbeats')} not in a worker's "
            f"form (JSON with a finite ts): {some(found.unreadable)}")
    if found.oversized:
        status.warnings.append(
            f"{plural(len(found.oversized), 'heartbeat key', 'heartbeat keys')} over "
            f"{MAX_HEARTBEAT_BYTES} bytes, not read (a worker's is a few hundred): "
            f"{some(found.oversized)}")
    if found.not_strings:
        status.warnings.append(
            f"{plural(len(found.not_strings), 'heartbeat key', 'heartbeat keys')} of another "
            f"Redis type, not read: {some(found.not_strings)}")
    if found.truncated:
        status.warnings.append(
            f"more than {MAX_HEARTBEATS} heartbeat keys match "
            f"{heartbeat_pattern(status.stream)!r}: only the first {MAX_HEARTBEATS} were read")


def _finite(value: Any) -> float | None:
    """A JSON number that is finite, as a float; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _bounded_text(value: Any) -> str | None:
    return value[:MAX_NAME_CHARS] if isinstance(value, str) else None


def _worker_from_beat(
    consumer: str, raw: Any, now: float, heartbeat_ttl: float, *,
    ttl_seconds: float | None = None, expires: bool = True,
) -> WorkerInfo | None:
    """A ``WorkerInfo`` from a heartbeat's bytes, or None when they are not a worker's
    (not JSON, not an object, no finite ``ts``). Never raises.

    ``consumer`` comes from the key (the worker writes its beat under its own name). A beat
    dated more than ``HEARTBEAT_MAX_AHEAD`` seconds ahead of ``now`` is not live and says
    how far ahead it is (``ahead_seconds``); a little ahead (clock skew) is age 0.
    """
    try:
        beat = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    ts = _finite(beat.get("ts")) if isinstance(beat, dict) else None
    if ts is None:
        return None
    ahead = ts - now
    age = max(-ahead, 0.0)
    future = ahead > HEARTBEAT_MAX_AHEAD
    pid, started, counters = beat.get("pid"), beat.get("started"), beat.get("counters")
    return WorkerInfo(
        consumer=consumer, host=_bounded_text(beat.get("host")),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        age_seconds=round(age, 3), live=not future and age <= heartbeat_ttl,
        counters=counters if isinstance(counters, dict) else {},
        started=_finite(started),
        ahead_seconds=round(ahead, 3) if future else None,
        ttl_seconds=ttl_seconds, expires=expires,
    )


#: Where one node of a cluster may hold a setting that loses the stream, the pipeline is
#: judged by that node: these values win over the others.
_RISKY: Final = {"appendonly": "no", "save": ""}


async def _on_every_primary(client: aioredis.Redis, command: str, *args: Any) -> dict[str, Any]:
    """``command`` on one node, or on each primary of a cluster in turn: {node name: reply}
    (asked node by node: redis-py hands back a lone node's reply unwrapped)."""
    method = getattr(client, command)
    get_primaries = getattr(client, "get_primaries", None)
    if get_primaries is None:  # one node
        return {"": await method(*args)}
    return {node.name: await method(*args, target_nodes=node) for node in get_primaries()}


def _merged_settings(per_node: dict[str, dict[str, str]], status: PipelineStatus) -> dict[str, str]:
    """One value per setting; where a cluster's primaries differ, the one that can lose the
    stream (AOF off, no snapshots, an evicting policy), and a warning naming the nodes."""
    merged: dict[str, str] = {}
    names = {name for settings in per_node.values() for name in settings}
    for name in sorted(names):
        values = {node: settings.get(name) for node, settings in per_node.items()}
        distinct = {v for v in values.values() if v is not None}
        if len(distinct) > 1:
            status.warnings.append(
                f"the cluster's primaries differ in {name}: "
                + ", ".join(f"{node} {value!r}" for node, value in sorted(values.items())))
        risky = _RISKY.get(name)
        if risky in distinct:
            merged[name] = risky
        elif name == "maxmemory-policy" and distinct - {"noeviction"}:
            merged[name] = sorted(distinct - {"noeviction"})[0]
        elif distinct:
            merged[name] = sorted(distinct)[0]
    return merged


async def _read_server(client: aioredis.Redis, status: PipelineStatus) -> None:
    """Persistence settings and the server's run id and uptime (both often restricted on
    managed Redis: a refusal is a warning or nothing, never a failure). On a cluster, every
    primary is read: a setting that loses the stream on one of them is the cluster's, and
    the server shown is the primary that started last."""
    from redis.exceptions import ResponseError

    try:
        per_node: dict[str, dict[str, str]] = {}
        for name in ("appendonly", "save", "maxmemory-policy"):
            for node, reply in (await _on_every_primary(client, "config_get", name)).items():
                per_node.setdefault(node, {}).update(
                    {as_text(k): as_text(v) for k, v in reply.items()})
        status.redis_settings = _merged_settings(per_node, status)
    except ResponseError as exc:  # managed Redis often disables CONFIG
        status.warnings.append(f"cannot read Redis persistence settings: {exc}")
    try:
        servers = await _on_every_primary(client, "info", "server")
    except ResponseError:
        return
    node, server = min(servers.items(),
                       key=lambda item: int_or_none(item[1].get("uptime_in_seconds")) or 0)
    status.redis_run_id = str(server["run_id"]) if server.get("run_id") else None
    status.redis_version = str(server["redis_version"]) if server.get("redis_version") else None
    status.redis_uptime_seconds = int_or_none(server.get("uptime_in_seconds"))
    try:
        persistence = await _on_every_primary(client, "info", "persistence")
    except ResponseError:
        return
    status.redis_keys_loaded_at_start = int_or_none(
        persistence.get(node, {}).get("rdb_last_load_keys_loaded"))


__all__ = [
    "HEARTBEAT_MAX_AHEAD",
    "MAX_HEARTBEATS",
    "MAX_HEARTBEAT_BYTES",
    "ConsumerInfo",
    "WorkerInfo",
    "entry_key",
    "entry_ms",
    "format_age",
    "gather_redis",
    "int_or_none",
    "plural",
]
