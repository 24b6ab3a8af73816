"""Engines, table creation, monthly partitions and the bulk idempotent insert.

Two ways in: SQLAlchemy async engines (``create_async_engine_for``) for table creation,
queries and the embedded SQLite store, and raw asyncpg (``connect_pg``, ``PostgresStore``)
for the hot path, where ``COPY`` into a per-connection temporary stage followed by
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` is the fastest idempotent insert measured
(see docs/performance.md and benchmarks/bench_worker.py).

PostgreSQL isolation: every entry point takes ``schema``; when given, the connection's
``search_path`` is set to it and all SQL uses the unqualified table name.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import Column, Index, MetaData, PrimaryKeyConstraint, Table
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .config import DEFAULT_TABLE
from .exceptions import ActivityLoggingError, ConfigurationError, StoreUnavailableError
from .record import ACTIVITY_COLUMNS
from .schema import asyncpg_dsn, is_sqlite, make_table, normalize_async_url, redact_url

if TYPE_CHECKING:
    import asyncpg

logger: Final = logging.getLogger("activity_logging.db")

STAGE_TABLE: Final = "_activity_stage"
_UNIQUE_VIOLATION: Final = "23505"
_STAGE_AFTER_CONFLICT: Final = 20
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

# SQLSTATE classes: what a failed insert means for the records in it.
# 22 data exception, 23 integrity violation (bar unique, which ON CONFLICT absorbs),
# 54 program limit exceeded (e.g. a jsonb value too large): the *records* are at fault,
# so the batch is split to isolate them. Everything else (connection loss, 57 operator
# intervention/restart, 53 resources, 40 serialization, 42 a missing table) is about the
# *database*: retry the whole batch later, dead-letter nothing.
_DATA_ERROR_CLASSES: Final = ("22", "23", "54")


def quote_identifier(identifier: str) -> str:
    """``identifier`` as a double-quoted SQL identifier (embedded quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


_quote = quote_identifier  # short internal name, used throughout this module


def is_data_error(exc: BaseException) -> bool:
    """True when PostgreSQL rejected the rows themselves (bad value), not the connection.

    Such an error repeats every time the same rows are inserted, so the caller must isolate
    the offending record instead of retrying the batch.
    """
    if isinstance(exc, OverflowError | ValueError | TypeError):
        # asyncpg's client-side encoders refuse the value before it reaches the server
        # (an int out of int64 range, an unparseable inet): same meaning, a bad record.
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _DATA_ERROR_CLASSES


def create_async_engine_for(url: str, *, schema: str | None = None, **kwargs: Any) -> AsyncEngine:
    """Return an SQLAlchemy ``AsyncEngine`` for a ``DATABASE_URL`` as people write it.

    Accepts ``postgresql://``, ``postgres://``, ``postgresql+asyncpg://`` and ``sqlite:///``
    (see ``schema.normalize_async_url``). For PostgreSQL, ``schema`` becomes the connections'
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


_is_unreachable = is_unreachable


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
        if _is_unreachable(exc):
            raise StoreUnavailableError(
                f"cannot reach the database at {redact_url(url)}: {type(exc).__name__}: {exc}"
            ) from exc
        raise


# --- the bulk insert -------------------------------------------------------------------------


#: One ``build_activity`` row as the tuple ``COPY`` expects, built in C (``operator.itemgetter``).
row_tuple: Final[Callable[[Mapping[str, Any]], tuple[Any, ...]]] = itemgetter(*ACTIVITY_COLUMNS)


def _jsonb_encode(value: Any) -> bytes:
    # jsonb binary wire format: a version byte (1) followed by the JSON text.
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


def _inet_encode(value: Any) -> bytes:
    # inet binary wire format: family (2 = IPv4, 3 = IPv6), mask bits, is_cidr, length, address.
    # socket.inet_pton parses in C; the value was already validated by build_activity.
    text = str(value)
    if ":" in text:
        packed = socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0])
        return bytes((3, 128, 0, 16)) + packed
    return bytes((2, 32, 0, 4)) + socket.inet_pton(socket.AF_INET, text)


def _inet_decode(data: bytes) -> str:
    family = socket.AF_INET6 if data[0] == 3 else socket.AF_INET
    return socket.inet_ntop(family, data[4:])


async def set_fast_codecs(conn: asyncpg.Connection) -> None:
    """Make ``conn`` take rows as ``build_activity`` produces them, with the least work.

    jsonb: decoded JSON in, encoded by orjson (binary format); inet: the already validated
    string packed by ``socket.inet_pton`` rather than parsed again by ``ipaddress``.
    """
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode, format="binary"
    )
    await conn.set_type_codec(
        "inet", schema="pg_catalog", encoder=_inet_encode, decoder=_inet_decode, format="binary"
    )


class PostgresStore:
    """Idempotent bulk writer of activity rows into PostgreSQL over one asyncpg connection.

    Not shared between event loops or tasks: each worker (or the handler's direct mode, from
    its own private loop) owns one. Holds no global state. ``insert_activities`` is the hot
    path: ``COPY`` straight into the table, and when a row is already there (a redelivery),
    ``COPY`` into a temporary stage then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, each
    in one transaction, so a record delivered twice is stored once.
    """

    def __init__(self, url: str, *, schema: str | None = None, table: str = DEFAULT_TABLE) -> None:
        asyncpg_dsn(url)  # validate now: ConfigurationError at construction, not at first use
        self.url = url
        self.schema = schema
        self.table = table
        self.conn: asyncpg.Connection | None = None
        self.partitioned = False
        self._known_months: set[tuple[int, int]] = set()
        self._stage_batches_left = 0
        cols = ", ".join(_quote(c) for c in ACTIVITY_COLUMNS)
        self._insert_sql = (
            f"INSERT INTO {_quote(table)} ({cols}) SELECT {cols} FROM {STAGE_TABLE} "
            "ON CONFLICT DO NOTHING"
        )

    async def connect(self) -> None:
        """(Re)connect and prepare the stage table. Raises ``StoreUnavailableError``.

        Also raises ``ConfigurationError`` when the table does not exist (run ``init-db``).
        """
        await self.close()
        conn = await connect_pg(self.url, schema=self.schema)
        try:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _quote(self.table)):
                raise ConfigurationError(
                    f"table {self.table!r} does not exist in {redact_url(self.url)}"
                    + (f" schema {self.schema!r}" if self.schema else "")
                    + ": run `activity-logging init-db` first"
                )
            # ON COMMIT DELETE ROWS empties the stage at every commit; no TRUNCATE round trip.
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} "
                f"(LIKE {_quote(self.table)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self.partitioned = await is_partitioned(conn, self.table)
            await set_fast_codecs(conn)
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        self._known_months.clear()

    @property
    def connected(self) -> bool:
        """True while the connection is open (it may still turn out dead on next use)."""
        return self.conn is not None and not self.conn.is_closed()

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]:
        """Create upcoming monthly partitions if the table is partitioned; see module function."""
        conn = await self._conn()
        if not self.partitioned:
            return []
        return await ensure_partitions(conn, table=self.table, months_ahead=months_ahead)

    async def _conn(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            await self.connect()
        assert self.conn is not None
        return self.conn

    async def _ensure_months(
        self, conn: asyncpg.Connection, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        # A backlog can hold records from months before the current one, or clocks can be
        # off: make sure every month in the batch has its partition before inserting.
        months = {(r["timestamp"].year, r["timestamp"].month) for r in rows} - self._known_months
        if months:
            await create_partitions(conn, months, table=self.table)
            self._known_months |= months

    async def insert_activities(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows`` (``record.build_activity`` dicts) in one transaction.

        Returns how many rows were newly inserted; the rest were already stored (same id)
        and were skipped. All or nothing: on any error nothing is committed. Raises the
        asyncpg error as is (``is_data_error`` tells a bad record from a database problem)
        and ``StoreUnavailableError`` when it cannot connect.
        """
        if not rows:
            return 0
        conn = await self._conn()
        if self.partitioned:
            await self._ensure_months(conn, rows)
        records = [row_tuple(r) for r in rows]
        if self._stage_batches_left <= 0:
            # Optimistic: duplicates only appear after a redelivery, so COPY straight into the
            # table (~1.3x faster than the stage, see benchmarks/bench_worker.py) and fall back
            # to the stage when a row turns out to be there already.
            try:
                async with conn.transaction():
                    status = await conn.copy_records_to_table(
                        self.table, records=records, columns=ACTIVITY_COLUMNS
                    )
                return int(status.rsplit(" ", 1)[-1])
            except Exception as exc:
                if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
                    raise
                # Redeliveries come in runs (a dead worker's whole backlog): stay on the
                # conflict-tolerant path for a while before trying the fast one again.
                self._stage_batches_left = _STAGE_AFTER_CONFLICT
        self._stage_batches_left -= 1
        async with conn.transaction():
            await conn.copy_records_to_table(STAGE_TABLE, records=records, columns=ACTIVITY_COLUMNS)
            status = await conn.execute(self._insert_sql)
        return int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        """Close the connection; idempotent, never raises."""
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()
