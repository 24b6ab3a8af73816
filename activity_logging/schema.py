"""The ``activity_logs`` table (SQLAlchemy 2.0 Core) and database URL handling.

One model for both stores: native uuid / timestamptz / jsonb / inet on PostgreSQL, portable
equivalents on the embedded SQLite store. Pure: defines, never connects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.engine import make_url

from .config import DEFAULT_TABLE
from .exceptions import ConfigurationError


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; on SQLite stored as naive UTC and read back aware (UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# none_as_null: a missing value is SQL NULL on both stores (SQLite wrote the JSON text 'null')
JSONType: Final = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
InetType: Final = String(45).with_variant(INET(), "postgresql")

metadata_obj: Final = MetaData()


def make_table(metadata: MetaData, name: str = DEFAULT_TABLE, schema: str | None = None) -> Table:
    """Build the ``activity_logs`` table (and its indexes) on ``metadata``."""
    table = Table(
        name,
        metadata,
        Column("id", Uuid(as_uuid=True), primary_key=True),
        Column("timestamp", UTCDateTime(), nullable=False),
        Column("activity_type", Text, nullable=False),
        Column("description", Text),
        Column("severity", Text, nullable=False),
        Column("level", SmallInteger, nullable=False),
        Column("actor_type", Text),
        Column("actor_id", Text),
        Column("target_type", Text),
        Column("target_id", Text),
        Column("changes", JSONType),
        Column("metadata", JSONType),
        Column("ip_address", InetType),
        Column("user_agent", Text),
        Column("request_id", Text),
        Column("http_method", Text),
        Column("path", Text),
        Column("logger", Text),
        Column("hostname", Text),
        Column("process_id", Integer),
        Column("producer_id", Text),
        Column("seq", BigInteger),
        schema=schema,
    )
    # The queries people run: by time; who (actor) / what (target, type) over time; one request.
    Index(f"ix_{name}_timestamp", table.c.timestamp)
    # actor_id leads so "one actor's day" uses it with or without actor_type (ids rarely collide
    # across types, so the extra actor_type check filters almost nothing)
    Index(f"ix_{name}_actor_time", table.c.actor_id, table.c.actor_type, table.c.timestamp)
    Index(f"ix_{name}_target_time", table.c.target_type, table.c.target_id, table.c.timestamp)
    Index(f"ix_{name}_type_time", table.c.activity_type, table.c.timestamp)
    Index(f"ix_{name}_request_id", table.c.request_id)
    return table


activity_logs: Final = make_table(metadata_obj)


def normalize_async_url(url: str) -> str:
    """Return the SQLAlchemy async URL for a ``DATABASE_URL`` as people write it.

    ``postgres://`` / ``postgresql://`` / ``postgresql+asyncpg://`` → ``postgresql+asyncpg://``;
    ``sqlite:///file.db`` → ``sqlite+aiosqlite:///file.db``. Raises ``ConfigurationError``.
    """
    backend = url.split("://", 1)[0].lower() if "://" in url else ""
    if backend in ("postgres", "postgresql", "postgresql+asyncpg"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if backend in ("sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    raise ConfigurationError(
        f"database_url must be postgresql://, postgres://, postgresql+asyncpg:// or sqlite:///, got {url!r}"
    )


def normalize_sync_sqlite_url(url: str) -> str:
    """Return the synchronous (stdlib sqlite3) SQLAlchemy URL for a SQLite ``database_url``."""
    backend = url.split("://", 1)[0].lower() if "://" in url else ""
    if backend not in ("sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"):
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    return "sqlite://" + url.split("://", 1)[1]


def asyncpg_dsn(url: str) -> str:
    """Return a plain ``postgresql://`` DSN that ``asyncpg.connect`` accepts."""
    normalized = normalize_async_url(url)
    if not normalized.startswith("postgresql+asyncpg://"):
        raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
    return "postgresql://" + normalized.split("://", 1)[1]


def is_sqlite(url: str) -> bool:
    """True when ``url`` names the embedded SQLite store."""
    return url.split("://", 1)[0].lower().startswith("sqlite")


def redact_url(url: str) -> str:
    """``url`` with its password hidden, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"

