"""Settings: explicit arguments first, then the environment, then defaults.

Pure: reads ``os.environ`` only when asked, does no I/O otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from .exceptions import ConfigurationError

DEFAULT_STREAM: Final = "activity_log_stream"
DEFAULT_GROUP: Final = "activity_log_workers"
DEFAULT_DEAD_STREAM: Final = "activity_log_dead"
DEFAULT_TABLE: Final = "activity_logs"
DEFAULT_SQLITE_URL: Final = "sqlite:///activity_logs.db"
DEFAULT_RETENTION_DAYS: Final = 90

ENV_REDIS_URL: Final = "REDIS_URL"
ENV_DATABASE_URL: Final = "DATABASE_URL"
ENV_RETENTION_DAYS: Final = "ACTIVITY_LOG_RETENTION_DAYS"
ENV_STREAM: Final = "ACTIVITY_LOG_STREAM"
ENV_SCHEMA: Final = "ACTIVITY_LOG_SCHEMA"


def _env(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def resolve_redis_url(value: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the Redis URL from the argument, else ``REDIS_URL``, else ``None`` (embedded mode)."""
    url = value if value else _env(ENV_REDIS_URL, environ)
    if url is None:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(f"redis_url must start with redis://, rediss:// or unix://, got {url!r}")
    return url


def resolve_database_url(
    value: str | None = None, environ: Mapping[str, str] | None = None, *, default: str | None = None
) -> str | None:
    """Return the database URL from the argument, else ``DATABASE_URL``, else ``default``."""
    url = value if value else _env(ENV_DATABASE_URL, environ)
    return url if url else default


def resolve_stream(value: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Return the stream name from the argument, else ``ACTIVITY_LOG_STREAM``, else the default."""
    stream = value if value else _env(ENV_STREAM, environ)
    return stream if stream else DEFAULT_STREAM


def resolve_schema(value: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the PostgreSQL schema holding the table (``ACTIVITY_LOG_SCHEMA``), else ``None``."""
    schema = value if value else _env(ENV_SCHEMA, environ)
    if schema is not None and not schema.replace("_", "").isalnum():
        raise ConfigurationError(f"schema must be letters, digits and underscores, got {schema!r}")
    return schema


def resolve_retention_days(value: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Return retention in days from the argument, else ``ACTIVITY_LOG_RETENTION_DAYS``, else 90."""
    if value is None:
        raw = _env(ENV_RETENTION_DAYS, environ)
        if raw is None:
            return DEFAULT_RETENTION_DAYS
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{ENV_RETENTION_DAYS} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ConfigurationError(f"retention days must be >= 1, got {value!r}")
    return value


def require_positive(name: str, value: float, *, integer: bool = False) -> None:
    """Raise ``ConfigurationError`` naming ``name`` unless ``value`` is a positive number."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        kind_name = "integer" if integer else "number"
        raise ConfigurationError(f"{name} must be a positive {kind_name}, got {value!r}")


DEFAULT_HEARTBEAT_TTL: Final = 15.0


def dead_stream_for(stream: str) -> str:
    """The dead-letter stream that belongs to ``stream``: ``activity_log_dead`` for the default."""
    return DEFAULT_DEAD_STREAM if stream == DEFAULT_STREAM else f"{stream}:dead"


def heartbeat_key(stream: str, consumer: str) -> str:
    """Redis key where worker ``consumer`` of ``stream`` writes its heartbeat (JSON, with a TTL)."""
    return f"{stream}:heartbeat:{consumer}"


def heartbeat_pattern(stream: str) -> str:
    """``SCAN`` pattern matching every worker heartbeat of ``stream``."""
    return f"{stream}:heartbeat:*"
