"""Settings: explicit arguments first, then the environment, then defaults.

Pure: reads ``os.environ`` only when asked, does no I/O otherwise.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from .exceptions import ConfigurationError
from .redis_clients import CLUSTER_SCHEMES, NODE_SCHEMES, check_cluster_url
from .urls import check_authority, shown_url

DEFAULT_STREAM: Final = "activity_log_stream"
DEFAULT_GROUP: Final = "activity_log_workers"
DEFAULT_DEAD_STREAM: Final = "activity_log_dead"
DEFAULT_TABLE: Final = "activity_logs"
DEFAULT_SQLITE_URL: Final = "sqlite:///activity_logs.db"
DEFAULT_RETENTION_DAYS: Final = 90

ENV_REDIS_URL: Final = "REDIS_URL"
ENV_DATABASE_URL: Final = "DATABASE_URL"
ENV_READ_DATABASE_URL: Final = "ACTIVITY_LOG_READ_DATABASE_URL"
ENV_RETENTION_DAYS: Final = "ACTIVITY_LOG_RETENTION_DAYS"
ENV_STREAM: Final = "ACTIVITY_LOG_STREAM"
ENV_SCHEMA: Final = "ACTIVITY_LOG_SCHEMA"
ENV_SPOOL_PATH: Final = "ACTIVITY_LOG_SPOOL_PATH"
SPOOL_OFF: Final = frozenset({"off", "none", "false", "0", "no"})


def _env(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def resolve_redis_url(value: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the Redis URL from the argument, else ``REDIS_URL``, else ``None`` (embedded mode).

    ``redis+cluster://`` and ``rediss+cluster://`` name a Redis Cluster (``redis_clients``).

    Raises ``ConfigurationError`` for another scheme, or a host and port that do not parse
    (``urls.check_authority``), naming the URL with its password hidden.
    """
    url = value if value else _env(ENV_REDIS_URL, environ)
    if url is None:
        return None
    if not url.startswith((*NODE_SCHEMES, *CLUSTER_SCHEMES)):
        raise ConfigurationError(
            "redis_url must start with redis://, rediss://, unix:// or, for a Redis Cluster, "
            f"redis+cluster:// or rediss+cluster://, got {shown_url(url)}")
    if not url.startswith("unix://"):
        check_authority(url, "redis_url")
    check_cluster_url(url)
    return url


def resolve_database_url(
    value: str | None = None, environ: Mapping[str, str] | None = None, *, default: str | None = None
) -> str | None:
    """Return the database URL from the argument, else ``DATABASE_URL``, else ``default``."""
    url = value if value else _env(ENV_DATABASE_URL, environ)
    return url if url else default


def resolve_read_database_url(
    value: str | None = None,
    database_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    default: str | None = None,
) -> str | None:
    """Return the URL the read side (queries, export, the viewer) opens, e.g. a read replica.

    The read argument ``value``, else the database argument ``database_url`` (a store named
    explicitly is read there, whatever the environment says), else
    ``ACTIVITY_LOG_READ_DATABASE_URL``, else ``DATABASE_URL``, else ``default``: so, with
    nothing set for the read side, reads go where writes go. ``database_url`` is the
    primary's *argument* (``None`` when not given), not its resolved value.
    """
    if value:
        return value
    if database_url:
        return database_url
    url = _env(ENV_READ_DATABASE_URL, environ)
    return url if url else resolve_database_url(None, environ, default=default)


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


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user state directory: ``$XDG_STATE_HOME/activity_logging``, else
    ``~/.local/state/activity_logging`` (the XDG base-directory default), else, for a user
    without a usable home (an arbitrary container uid), ``<tmp>/activity_logging-<uid>``
    (created 0700 by the spool; a directory another user made there is refused by it)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or ""
    if base.strip() and os.path.isabs(base):
        return Path(base) / "activity_logging"
    home = env.get("HOME") if environ is not None else None
    try:
        root = Path(home) if home else Path.home()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry for this uid
        root = None
    if root is None or not root.is_absolute() or str(root) == "/":
        return Path(tempfile.gettempdir()) / f"activity_logging-{os.getuid()}"
    return root / ".local" / "state" / "activity_logging"


def resolve_spool_path(
    value: str | None, *, redis_url: str | None, stream: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """Where the handler spools entries while Redis is down; ``None`` when the spool is off.

    The argument wins, then ``ACTIVITY_LOG_SPOOL_PATH``; ``""`` or ``"off"`` (also ``none``,
    ``false``, ``no``, ``0``) switch the spool off. Without either, a handler shipping to
    Redis spools under the per-user state directory, in a folder named after the Redis
    server and stream (credentials left out), so that a spool is only ever replayed into
    the stream it was meant for. Direct mode (no Redis) has no default spool.
    """
    raw = value if value is not None else _env(ENV_SPOOL_PATH, environ)
    if raw is not None:
        text = raw.strip()
        return None if not text or text.lower() in SPOOL_OFF else text
    if not redis_url:
        return None
    target = f"{_without_credentials(redis_url)}\0{stream}".encode()
    return str(default_state_dir(environ) / "spool" / hashlib.sha256(target).hexdigest()[:16])


def _without_credentials(url: str) -> str:
    """Which Redis database a URL names, without its credentials: scheme, host, port (the
    default filled in), socket path and the effective db (``?db=`` wins over ``/N``), so
    two spellings of one database share a spool and two databases never do."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"redis_url has an invalid port: {exc}") from None
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix":
        return f"unix:{parts.path}?db={query.get('db', '0')}"
    host = (parts.hostname or "localhost").lower()
    db = query.get("db") or parts.path.strip("/") or "0"
    return f"{parts.scheme}://{host}:{port or 6379}/{db}"


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


#: The handler's tuning knobs: (kind, default). An argument wins, then ``ACTIVITY_LOG_<NAME>``
#: (``ACTIVITY_LOG_QUEUE_SIZE``, ...), then the default: written here once, read everywhere.
HANDLER_TUNABLES: Final[dict[str, tuple[type[int] | type[float], int | float]]] = {
    "queue_size": (int, 100_000),
    "queue_max_bytes": (int, 256 * 1024 * 1024),
    "batch_size": (int, 500),
    "flush_interval": (float, 0.05),
    "spool_max_bytes": (int, 512 * 1024 * 1024),
    "max_record_bytes": (int, 65_536),
    "close_timeout": (float, 5.0),
    "reconnect_delay": (float, 1.0),
    "checkpoint_interval": (float, 60.0),
    "stream_shards": (int, 1),
}


def tunable_env(name: str) -> str:
    """The environment variable of handler tunable ``name``: ``ACTIVITY_LOG_QUEUE_SIZE``, ..."""
    return f"ACTIVITY_LOG_{name.upper()}"


def resolve_tunable(
    name: str, value: float | None, environ: Mapping[str, str] | None = None
) -> int | float:
    """Handler tunable ``name``: the argument, else its environment variable, else the default.

    Raises ``ConfigurationError`` naming the argument (or the variable) and the bad value.
    """
    kind, default = HANDLER_TUNABLES[name]
    source = name
    if value is None:
        raw = _env(tunable_env(name), environ)
        if raw is None:
            return default
        source = tunable_env(name)
        try:
            value = int(raw) if kind is int else float(raw)
        except ValueError:
            raise ConfigurationError(f"{source} must be a positive {kind.__name__}, got {raw!r}") from None
    require_positive(source, value, integer=kind is int)
    return value


def require_positive(name: str, value: float, *, integer: bool = False) -> None:
    """Raise ``ConfigurationError`` naming ``name`` unless ``value`` is a positive, finite number."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
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
    """``SCAN`` pattern matching every worker heartbeat of ``stream`` and nothing else: the
    glob characters a stream name may hold (``* ? [ ] \\``) are escaped, so stream ``a*``
    does not read the heartbeats of ``abc``."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in stream)
    return f"{escaped}:heartbeat:*"
