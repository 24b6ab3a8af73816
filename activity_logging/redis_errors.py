"""Which Redis errors mean "wait and try again", and which mean "the URL is wrong".

Shared by the worker (which retries the first kind for as long as it takes) and ``status``
(which reports the first kind as Redis unreachable, exit 3). Imports redis, so the
handler's import path does not use it.
"""

from __future__ import annotations

import os
from typing import Final

import redis
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .exceptions import ConfigurationError
from .urls import redact_url

# A full Redis (maxmemory with noeviction) refuses writes until the worker has stored and
# deleted entries: waiting and retrying is right, nothing is acknowledged meanwhile. A Redis
# Cluster that lost a master answers CLUSTERDOWN (every slot, by default) or TRYAGAIN until
# it is back or failed over, and a cluster client none of whose nodes answers raises
# RedisClusterException: waiting is right there too.
REDIS_TRANSIENT: Final = (RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError,
                          ClusterDownError, TryAgainError, SlotNotCoveredError)
#: What redis-py's cluster client says when no node it knows answers (the cluster, or the
#: network to it, is down): transient. Its other ``RedisClusterException``s are not.
_CLUSTER_UNREACHABLE: Final = ("cannot be connected", "slots are not covered")
_REDIS_PACKAGE: Final = os.path.dirname(os.path.abspath(redis.__file__)) + os.sep


def wrong_redis_kind(exc: BaseException, url: str) -> ConfigurationError | None:
    """A ``ConfigurationError`` when ``exc`` says the URL names the wrong kind of Redis: a
    ``redis+cluster://`` URL at a single Redis, or a ``redis://`` URL at a cluster node
    (which answers ``MOVED`` for the slots it does not serve); else None."""
    if isinstance(exc, RedisClusterException) and "not enabled" in str(exc):
        return ConfigurationError(f"{redact_url(url)} is not a Redis Cluster ({exc}): use "
                                  "redis:// or rediss:// for a single Redis")
    if isinstance(exc, ResponseError) and str(exc).startswith("MOVED"):
        return ConfigurationError(f"{redact_url(url)} is a node of a Redis Cluster ({exc}): "
                                  "use redis+cluster:// (or rediss+cluster://)")
    return None


def is_transient_redis_error(exc: BaseException) -> bool:
    """True for a Redis failure that waiting cures: a lost or refused connection, a
    timeout, a full Redis, a cluster that lost a master or cannot be reached, and a client
    fault on a torn-down connection (``is_redis_client_fault``)."""
    if isinstance(exc, REDIS_TRANSIENT):
        return True
    if isinstance(exc, RedisClusterException):
        return any(text in str(exc) for text in _CLUSTER_UNREACHABLE)
    return is_redis_client_fault(exc)


def is_redis_client_fault(exc: BaseException) -> bool:
    """True for an error redis-py raised from inside its own code that is not one of its
    ``RedisError``s: a client bug on a connection torn down mid-command. Seen here as
    ``AttributeError: 'NoneType' object has no attribute 'writelines'`` from the asyncio
    cluster client when a master died under concurrent commands (the same family as
    redis/redis-py#3546). Transient like a lost connection: the command is retried and
    nothing is acknowledged meanwhile. An error raised in this library's own code is not."""
    if not isinstance(exc, AttributeError | TypeError):
        return False
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and os.path.abspath(
        last.tb_frame.f_code.co_filename).startswith(_REDIS_PACKAGE)
