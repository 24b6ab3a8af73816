"""Connections, table creation and monthly partitions: how the library reaches its database.

Two ways in, each for what it does best: SQLAlchemy async engines for table creation and
every read (``read_connection``: queries, export, status, retention, the viewer), on
asyncpg for PostgreSQL and aiosqlite for SQLite; and a raw asyncpg connection
(``connect_pg``) where only the driver can do the work: ``COPY`` in ``store_pg`` and
partition DDL here. Writing rows is ``store.py``'s job, not this module's.

PostgreSQL isolation: every entry point takes ``schema``; when given, the connection's
``search_path`` is set to it and all SQL uses the unqualified table name.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Column, Index, MetaData, PrimaryKeyConstraint, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import DEFAULT_TABLE
from .exceptions import ActivityLoggingError, ConfigurationError, StoreUnavailableError
from .schema import make_table
from .urls import asyncpg_dsn, is_sqlite, normalize_async_url, redact_url

if TYPE_CHECKING:
    import asyncpg

logger: Final = logging.getLogger("activity_logging.db")

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
UNDEFINED_TABLE: Final = "42P01"


def quote_identifier(identifier: str) -> str:
    """``identifier`` as a double-quoted SQL identifier (embedded quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


_quote = quote_identifier  # short internal name, used throughout this module


def create_async_engine_for(url: str, *, schema: str | None = None, **kwargs: Any) -> AsyncEngine:
    """Return an SQLAlchemy ``AsyncEngine`` for a ``DATABASE_URL`` as people write it.

    Accepts ``postgresql://``, ``postgres://``, ``postgresql+asyncpg://`` and ``sqlite:///``
    (see ``urls.normalize_async_url``). For PostgreSQL, ``schema`` becomes the connections'
    ``search_path`` (through asyncpg ``server_settings``); SQLite has no schemas and ignores
    it. Extra keyword arguments go to ``sqlalchemy.ext.asyncio.create_async_engine``.
    Raises ``ConfigurationError`` for an unsupported URL; does not connect.
    """
    async_url = normalize_async_url(url)
    if schema and not is_sqlite(url):
        connect_args = dict(kwargs.pop("connect_args", None) or {})
        settings = dict(connect_args.get("server_settings") or {})
        settings["search_path"] = schema
        connect_args["server_settings"] = settings
        kwargs["connect_args"] = connect_args
    return create_async_engine(async_url, **kwargs)


async def connect_pg(
    url: str, *, schema: str | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> asyncpg.Connection:
    """Open a raw asyncpg connection, with ``search_path`` set to ``schema`` when given.

    Raises ``ConfigurationError`` for a non-PostgreSQL URL and ``StoreUnavailableError``
    (naming the URL with its password hidden) when the server cannot be reached.
    """
    import asyncpg

    dsn = asyncpg_dsn(url)
    settings = {"search_path": schema} if schema else None
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, server_settings=settings, timeout=connect_timeout
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {redact_url(url)}: {type(exc).__name__}: {exc}"
        ) from exc
    return conn


# --- partitions ------------------------------------------------------------------------------


def partition_name(table: str, year: int, month: int) -> str:
    """Name of the monthly partition of ``table``: ``activity_logs_p202611``."""
    return f"{table}_p{year:04d}{month:02d}"


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """``[first instant of the month, first instant of the next month)`` in UTC."""
    ny, nm = _next_month(year, month)
    return datetime(year, month, 1, tzinfo=UTC), datetime(ny, nm, 1, tzinfo=UTC)


def months_from(now: datetime, months_ahead: int) -> list[tuple[int, int]]:
    """The month of ``now`` (UTC) and the ``months_ahead`` months after it."""
    current = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    months = [(current.year, current.month)]
    for _ in range(months_ahead):
        months.append(_next_month(*months[-1]))
    return months


async def is_partitioned(conn: asyncpg.Connection, table: str = DEFAULT_TABLE) -> bool:
    """True when ``table`` (resolved through ``search_path``) is a partitioned table."""
    kind = await conn.fetchval(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)", _quote(table)
    )
    return bool(kind == "p")


async def create_partitions(
    conn: asyncpg.Connection, months: Iterable[tuple[int, int]], *, table: str = DEFAULT_TABLE
) -> list[str]:
    """Create the monthly partitions of ``table`` for ``months`` that do not exist yet.

    Safe against concurrent workers: creation runs under a transaction-scoped advisory lock
    keyed on the table. Returns the names created (empty when all existed).
    """
    created: list[str] = []
    wanted = sorted(set(months))
    if not wanted:
        return created
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('activity_logging:' || $1))", table
        )
        for year, month in wanted:
            name = partition_name(table, year, month)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _quote(name)):
                continue
            start, end = month_bounds(year, month)
            # Bounds are our own datetimes rendered as ISO literals: no user input in this DDL.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_quote(name)} PARTITION OF {_quote(table)} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
            created.append(name)
    if created:
        logger.debug("created partitions %s", ", ".join(created))
    return created


async def ensure_partitions(
    conn: asyncpg.Connection,
    *,
    table: str = DEFAULT_TABLE,
    months_ahead: int = 3,
    now: datetime | None = None,
) -> list[str]:
    """Create the partitions of ``table`` for the current month and ``months_ahead`` after it.

    The worker calls this at start and periodically, so inserts never fail for want of a
    partition. Returns the names created. Does nothing (returns ``[]``) for a plain table.
    """
    if not await is_partitioned(conn, table):
        return []
    return await create_partitions(
        conn, months_from(now or datetime.now(UTC), months_ahead), table=table
    )


# --- table creation --------------------------------------------------------------------------


def make_partitioned_table(metadata: MetaData, name: str = DEFAULT_TABLE) -> Table:
    """The ``activity_logs`` model, range-partitioned by month on ``timestamp``.

    Same columns and indexes as ``schema.make_table``; the primary key becomes
    ``(id, timestamp)`` because a partitioned table's unique keys must include the
    partition key.
    """
    base = make_table(MetaData(), name)
    table = Table(
        name,
        metadata,
        *[Column(c.name, c.type, nullable=c.nullable) for c in base.columns],
        PrimaryKeyConstraint("id", "timestamp", name=f"{name}_pkey"),
        postgresql_partition_by='RANGE ("timestamp")',
    )
    for index in base.indexes:
        Index(index.name, *[table.c[col.name] for col in index.columns])
    return table


async def init_db(
    url: str,
    *,
    schema: str | None = None,
    partitioned: bool = False,
    months_ahead: int = 3,
    table: str = DEFAULT_TABLE,
) -> None:
    """Create the ``activity_logs`` table and its indexes if missing; idempotent.

    ``partitioned`` (PostgreSQL only) creates it ``PARTITION BY RANGE (timestamp)`` with the
    primary key ``(id, timestamp)`` and the partitions from the current month to
    ``months_ahead`` months ahead. An existing table is left as it is (a plain table is not
    converted). On SQLite it creates the plain table. Raises ``ConfigurationError`` (bad
    URL, partitioned SQLite) or ``StoreUnavailableError`` (unreachable database).
    """
    sqlite = is_sqlite(url)
    if partitioned and sqlite:
        raise ConfigurationError("partitioned tables need PostgreSQL, got a sqlite URL")
    metadata = MetaData()
    if partitioned:
        make_partitioned_table(metadata, table)
    else:
        make_table(metadata, table)
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url), engine.begin() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)
    finally:
        await engine.dispose()
    if partitioned:
        conn_pg = await connect_pg(url, schema=schema)
        try:
            await ensure_partitions(conn_pg, table=table, months_ahead=months_ahead)
        finally:
            await conn_pg.close()


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a network-level failure: the server is away."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | TimeoutError):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_missing_table(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says a table does not exist: PostgreSQL SQLSTATE
    42P01 (asyncpg's ``UndefinedTableError``, also under SQLAlchemy's ``.orig``) or SQLite's
    "no such table". A missing database, schema, column or function is not a missing table.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "sqlstate", None) == UNDEFINED_TABLE:
            return True
        if isinstance(current, sqlite3.OperationalError) and str(current).startswith(
                "no such table"):
            return True
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


@contextlib.asynccontextmanager
async def reachable(url: str) -> AsyncIterator[None]:
    """Turn "cannot connect" into ``StoreUnavailableError`` naming the URL (password hidden).

    Errors of this library pass through unchanged: they already say what is wrong.
    """
    try:
        yield
    except ActivityLoggingError:
        raise
    except Exception as exc:
        if is_unreachable(exc):
            raise StoreUnavailableError(
                f"cannot reach the database at {redact_url(url)}: {type(exc).__name__}: {exc}"
            ) from exc
        raise


@contextlib.asynccontextmanager
async def read_connection(url: str, *, schema: str | None = None) -> AsyncIterator[AsyncConnection]:
    """One SQLAlchemy ``AsyncConnection`` to read with, its engine disposed of afterwards.

    The one way the read side (queries, export, status, retention, the viewer's CLI) opens
    the database. Failing to connect raises ``StoreUnavailableError`` naming the URL with its
    password hidden; errors raised inside the block pass through as they are (a broken pipe
    while exporting is the caller's, not "unreachable").
    """
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url):
            conn = await engine.connect()
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        await engine.dispose()
