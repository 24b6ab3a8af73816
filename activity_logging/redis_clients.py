"""Redis clients from a URL: one node, or a Redis Cluster.

A single node is ``redis://``, ``rediss://`` (TLS) or ``unix://``; a Redis Cluster is
``redis+cluster://host:port`` or ``rediss+cluster://host:port``: any one node of the
cluster, from which redis-py's cluster client discovers the others and routes each command
to the node serving its key's slot (following ``MOVED``/``ASK`` when slots move). The rest
of the URL (user, password, query options) means what it means for one node. A cluster has
no database numbers: a path other than ``/`` or ``/0`` is refused.

Every command this library sends names one key, or keys of one slot: an entry goes to one
stream (``XADD``), a worker reads one stream per command (``XREADGROUP``, ``XAUTOCLAIM``),
acknowledges on it (``XACK`` + ``XDEL``), and ``status`` reads one stream per ``MULTI``. So
nothing it does is refused with ``CROSSSLOT``; sharded streams (``shards``) give each shard
a hash tag of its own, so that shards spread over the cluster's nodes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .exceptions import ConfigurationError
from .urls import shown_url

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

CLUSTER_SCHEMES: Final = ("redis+cluster://", "rediss+cluster://")
NODE_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def is_cluster(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return url.startswith(CLUSTER_SCHEMES)


def node_url(url: str) -> str:
    """The URL redis-py's clients take: ``redis+cluster://`` becomes ``redis://`` (and the
    ``rediss`` form ``rediss://``); a single node's URL is returned as it is."""
    if not is_cluster(url):
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme.removesuffix('+cluster')}://{rest}"


def check_cluster_url(url: str) -> None:
    """``ConfigurationError`` for a cluster URL naming a database (a cluster has only db 0)."""
    if not is_cluster(url):
        return
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0") or "db=" in parts.query:
        raise ConfigurationError(
            f"a Redis Cluster has no database numbers: drop the path or db= from {shown_url(url)}")


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client (``redis.Redis``, or ``redis.cluster.RedisCluster`` for a cluster URL).

    The cluster client offers the same commands and pipelines, so it is typed as ``Redis``
    for its callers."""
    if is_cluster(url):
        from redis.cluster import RedisCluster

        client: Any = RedisCluster.from_url(node_url(url), **options)
        return client  # type: ignore[no-any-return]
    import redis as redis_mod

    return redis_mod.Redis.from_url(url, **options)


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client (``redis.asyncio.Redis``, or its ``RedisCluster`` for a cluster URL);
    typed as ``Redis`` for the same reason as ``sync_client``."""
    if is_cluster(url):
        from redis.asyncio.cluster import RedisCluster

        client: Any = RedisCluster.from_url(node_url(url), **options)
        return client  # type: ignore[no-any-return]
    import redis.asyncio as aioredis_mod

    return aioredis_mod.Redis.from_url(url, **options)


async def disconnect_all(client: aioredis.Redis) -> None:
    """Drop every connection of ``client``, in use or not (a cold stop's last resort); never
    raises. A cluster client holds a pool per node: each node's is dropped."""
    with contextlib.suppress(Exception):
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect(inuse_connections=True)
            return
        for node in client.get_nodes():  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                await node.disconnect()
