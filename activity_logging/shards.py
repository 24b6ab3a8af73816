"""Sharded streams: one logical stream as ``stream_shards`` Redis Streams.

With ``stream_shards=1`` (the default) the stream is the one key it is named after, as it
always was. With ``N > 1`` it is ``N`` streams, ``<stream>:{<tag>}``: every producer writes
to the one shard its producer id picks (``shard_for``), so one producer's records stay in
order in one stream and its sequence numbers verify as before; every worker reads every
shard (``shard_streams``), each through the same consumer group name, with claiming and
acknowledging per shard. Producers, workers and ``status`` must be given the same ``N``
(``ACTIVITY_LOG_STREAM_SHARDS`` serves all three); ``status`` reports a shard stream it
finds beyond its ``N``.

The hash tag of shard ``i`` is chosen so that its slot lies in the middle half of the
``i``-th ``N``-th of the cluster's 16,384 slots: on a Redis Cluster whose slots are spread evenly (what
``redis-cli --cluster create`` does), ``N`` shards land on ``min(N, masters)`` different
nodes, evenly when ``N`` is a multiple of the number of masters. On one Redis node the tag
is only part of the name. The choice is a pure function of ``i`` and ``N`` (CRC16, as Redis
Cluster defines it), so every process names the same keys.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from typing import Final

from .config import resolve_tunable
from .exceptions import ConfigurationError

#: A Redis Cluster has this many hash slots.
CLUSTER_SLOTS: Final = 16_384
#: Most shards one stream may have: many more than any node count, few enough that a
#: worker's per-shard readers stay cheap.
MAX_STREAM_SHARDS: Final = 256


def resolve_shards(value: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``stream_shards``: the argument, else ``ACTIVITY_LOG_STREAM_SHARDS``, else 1;
    ``ConfigurationError`` unless an integer in ``[1, MAX_STREAM_SHARDS]``."""
    shards = int(resolve_tunable("stream_shards", value, environ))
    if shards > MAX_STREAM_SHARDS:
        raise ConfigurationError(
            f"stream_shards must be at most {MAX_STREAM_SHARDS}, got {shards!r}")
    return shards


def check_shardable(stream: str, shards: int) -> None:
    """A sharded stream's name may not hold ``{`` or ``}``: Redis Cluster would hash every
    shard on the name's own tag, putting all of them on one node."""
    if shards > 1 and ("{" in stream or "}" in stream):
        raise ConfigurationError(
            f"stream {stream!r} holds a brace: with stream_shards > 1 its shards carry their "
            "own hash tag, so the name may not (use another name)")


def shard_streams(stream: str, shards: int) -> list[str]:
    """The Redis keys of ``stream`` in ``shards`` shards, in shard order."""
    if shards <= 1:
        return [stream]
    return [f"{stream}:{{{_tag(i, shards)}}}" for i in range(shards)]


def shard_for(producer_id: str, shards: int) -> int:
    """The shard a producer writes to: a stable hash of its id (CRC32), modulo ``shards``."""
    if shards <= 1:
        return 0
    return zlib.crc32(producer_id.encode()) % shards


def shard_stream(stream: str, shards: int, producer_id: str) -> str:
    """The one key producer ``producer_id`` writes its entries to."""
    if shards <= 1:
        return stream
    i = shard_for(producer_id, shards)
    return f"{stream}:{{{_tag(i, shards)}}}"


@functools.cache
def _tag(i: int, shards: int) -> str:
    """The first ``"<i>.<j>"`` whose slot falls in the middle half of shard ``i``'s part of
    the slot space (about ``2 * shards`` tries): away from its edges, so that a master
    whose slot range ends inside that part does not get the neighbour's shard."""
    from redis.crc import key_slot

    low = i * CLUSTER_SLOTS // shards
    high = (i + 1) * CLUSTER_SLOTS // shards
    quarter = (high - low) // 4
    low, high = low + quarter, high - quarter
    j = 0
    while True:
        tag = f"{i}.{j}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        j += 1
