"""How the library reaches its database: engines, read connections, table creation.

Two ways in, each for what it does best:

* SQLAlchemy async engines (asyncpg for PostgreSQL, aiosqlite for SQLite) for every read:
  ``read_connection`` is the one way the read side opens the database (queries, export,
  status, retention's counts and batched deletes, ``verify``); the viewer keeps a pooled
  engine of its own from ``create_async_engine_for``.
* A raw asyncpg connection (``connect_pg``) where only the driver can do the work: ``COPY``
  in ``store_pg``, partition DDL in ``partitions``, ``VACUUM`` in ``retention``.

Writing rows is ``store.py``'s job, not this module's; so is the SQLite table definition
and its PRAGMAs (``store_sqlite``), which ``init_db`` and every SQLite engine here reuse.

PostgreSQL isolation: every entry point takes ``schema``; when given, the connection's
``search_path`` is set to it and all SQL uses the unqualified table name.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import MetaData, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import DEFAULT_SQLITE_URL, DEFAULT_TABLE, resolve_read_database_url, resolve_schema
from .exceptions import (
    ActivityLoggingError,
    ConfigurationError,
    PermissionDeniedError,
    StoreUnavailableError,
)
from .urls import asyncpg_dsn, is_postgres, is_sqlite, normalize_async_url, redact_url

if TYPE_CHECKING:
    import asyncpg

logger: Final = logging.getLogger("activity_logging.db")

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: PostgreSQL SQLSTATE ``undefined_table``.
UNDEFINED_TABLE: Final = "42P01"
#: PostgreSQL SQLSTATE ``insufficient_privilege``: a role lacks a privilege (or ownership).
INSUFFICIENT_PRIVILEGE: Final = "42501"
#: PostgreSQL SQLSTATE class ``invalid_authorization_specification``: the login was refused.
AUTHORIZATION_CLASS: Final = "28"


def quote_identifier(identifier: str) -> str:
    """``identifier`` as a double-quoted SQL identifier (embedded quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


async def has_table(conn: AsyncConnection, name: str) -> bool:
    """Whether ``name`` exists, as the connection sees it (``search_path`` on PostgreSQL),
    asked without a statement that could fail: a failed one would end PostgreSQL's
    transaction, and with it the rest of a reading."""
    from sqlalchemy import inspect

    return await conn.run_sync(lambda sync: bool(inspect(sync).has_table(name)))


def create_async_engine_for(url: str, *, schema: str | None = None, **kwargs: Any) -> AsyncEngine:
    """Return an SQLAlchemy ``AsyncEngine`` for a ``DATABASE_URL`` as people write it.

    Accepts ``postgresql://``, ``postgres://``, ``postgresql+asyncpg://`` and ``sqlite:///``
    (see ``urls.normalize_async_url``). For PostgreSQL, ``schema`` becomes the connections'
    ``search_path`` (through asyncpg ``server_settings``); SQLite has no schemas and ignores
    it, and every SQLite connection gets ``store_sqlite.SQLITE_PRAGMAS``, the settings the
    writers use (except a read-only ``mode=ro`` one, which cannot write the journal mode and
    keeps the file's). Extra keyword arguments go to ``sqlalchemy.ext.asyncio.create_async_engine``.
    Raises ``ConfigurationError`` for an unsupported URL; does not connect.
    """
    async_url = normalize_async_url(url)
    if is_sqlite(url):
        from .store_sqlite import apply_pragmas  # SQLite only: PostgreSQL callers skip it

        engine = create_async_engine(async_url, **kwargs)
        # A read-only connection (``mode=ro``, the viewer's) cannot set the journal mode:
        # it reads whatever mode the writers set.
        if engine.url.query.get("mode") != "ro":
            event.listen(engine.sync_engine, "connect",
                         lambda dbapi_conn, _record: apply_pragmas(dbapi_conn))
        return engine
    if schema:
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

    For driver-only work (``COPY``, partition DDL, ``VACUUM``); reads use ``read_connection``.
    Raises ``ConfigurationError`` for a non-PostgreSQL URL, ``PermissionDeniedError`` when
    the server refuses the login (SQLSTATE class 28: bad password, no ``pg_hba.conf``
    entry, no such role; or 42501: no ``CONNECT`` on the database), and
    ``StoreUnavailableError`` (naming the URL with its password hidden) when the server
    cannot be reached.
    """
    import asyncpg  # the driver is loaded by who needs it, not by importing this module

    dsn = asyncpg_dsn(url)
    settings = {"search_path": schema} if schema else None
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, server_settings=settings, timeout=connect_timeout
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if is_permission_error(exc):  # a refused login never comes right by waiting
            raise login_refused(url, exc) from exc
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {redact_url(url)}: {type(exc).__name__}: {exc}"
        ) from exc
    return conn


# --- table creation --------------------------------------------------------------------------


async def init_db(
    url: str,
    *,
    schema: str | None = None,
    partitioned: bool = False,
    months_ahead: int = 3,
    table: str = DEFAULT_TABLE,
    layout: str | None = None,
) -> str | None:
    """Create the ``activity_logs`` table and its indexes if missing; idempotent.

    ``partitioned`` (PostgreSQL only) creates it ``PARTITION BY RANGE (timestamp)`` with the
    primary key ``(id, timestamp)`` and the partitions from the current month to
    ``months_ahead`` months ahead. An existing table is left as it is (a plain table is not
    converted). On SQLite the embedded store's own writer creates the plain table
    (``store_sqlite.SQLiteStore``: one definition of its DDL and PRAGMAs).

    ``layout`` (``ddl_variants.LAYOUTS``; default ``partitioned`` when ``partitioned``, else
    ``plain``) may also be ``citus``, ``citus-partitioned`` or ``timescaledb``: the table of
    that layout, then the extension's calls (``ddl_variants.extension_steps``: distribute
    the table on ``id`` and make the cut markers a reference table; or make a hypertable
    with compression), each only when not done yet. The extension must exist in the
    database (``ConfigurationError`` otherwise, before anything is created). Those layouts,
    and any table Citus or TimescaleDB manages already, get no daily rollup (a notice says
    so): its transition-table triggers are refused there.

    On PostgreSQL it also gives text search (``ActivityFilter.text``) its index
    (``ensure_text_index``): the ``pg_trgm`` extension and a GIN trigram index on
    ``description``, added to an existing table too (on a partitioned one, to the parent, so
    every partition has it). Returns ``None`` when all is in place, or a one-line notice
    when the extension cannot be created (no privilege, not installed on the server): the
    table is ready and text search works, without an index. SQLite always returns ``None``
    (it has no such index; text search scans). It also makes the daily rollup summaries read
    (``rollup.ensure_rollup``; a notice too when the server is older than PostgreSQL 15).

    Raises ``ConfigurationError`` (bad URL, partitioned SQLite), ``StoreUnavailableError``
    (PostgreSQL unreachable), ``OSError`` carrying SQLite's reason when the SQLite file
    cannot be opened or created (a local file is not a server that comes back), and
    SQLAlchemy's ``DBAPIError`` for what the server refused (no such database or schema).
    """
    from . import ddl_variants as variants  # builds on this module: imported when used

    layout = _layout(partitioned, layout)
    sqlite = is_sqlite(url)
    if layout != variants.PLAIN and sqlite:
        what = "partitioned tables need" if layout == variants.PARTITIONED else (
            f"layout {layout} needs")
        raise ConfigurationError(f"{what} PostgreSQL, got a sqlite URL")
    extension = variants.extension_of(layout)
    ext_schema: str | None = None
    if extension is not None:  # refused before anything is created
        conn_check = await connect_pg(url, schema=schema)
        try:
            ext_schema = await variants.require_extension(conn_check, layout)
        finally:
            await conn_check.close()
    from .dead_letters import create_table as create_dead_letter_table  # helper B's table

    await create_dead_letter_table(url, schema=schema, table=table)
    if sqlite:
        from .store_sqlite import SQLiteStore

        store = SQLiteStore(url, table=table, create=True)
        try:
            store.connect_now()
        except StoreUnavailableError as exc:
            raise OSError(str(exc.__cause__ or exc)) from exc
        finally:
            store.abort()
        return None
    # partitions builds on this module (quote_identifier): imported here, for that case only
    from .partitions import ensure_partitions

    metadata = MetaData()
    variants.layout_table(metadata, layout, table)
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url), engine.begin() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)
    finally:
        await engine.dispose()
    conn_pg = await connect_pg(url, schema=schema)
    try:
        if layout in variants.MONTHLY:
            await ensure_partitions(conn_pg, table=table, months_ahead=months_ahead)
        from .chain_store import ensure_chain_schema_pg

        await ensure_chain_schema_pg(conn_pg, table=table)  # upgrades a table made before the chain
        notice = await ensure_text_index(conn_pg, table=table)
        await variants.apply_steps(
            conn_pg, variants.extension_steps(layout, table, ext_schema=ext_schema))
        managed = extension or await variants.detect_layout(conn_pg, table)
        if managed is not None:
            rollup_notice: str | None = (
                f"no daily rollup on a {managed} table (its triggers are refused there): "
                "summaries read the rows (docs/scaling.md)")
        else:
            from .rollup import ensure_rollup  # the daily rollup of summaries (helper E's module)

            rollup_notice = await ensure_rollup(conn_pg, table=table)
        notice = "; ".join(n for n in (notice, rollup_notice) if n) or None
    finally:
        await conn_pg.close()
    return notice


def _layout(partitioned: bool, layout: str | None) -> str:
    """The layout ``init_db`` builds: ``layout``, else ``partitioned`` or ``plain``; raises
    ``ConfigurationError`` for an unknown one or ``partitioned`` with a layout not by month."""
    from . import ddl_variants as variants

    if layout is None:
        return variants.PARTITIONED if partitioned else variants.PLAIN
    variants.check_layout(layout)
    if partitioned and layout not in variants.MONTHLY:
        raise ConfigurationError(
            f"--partitioned does not go with layout {layout}: give --layout "
            f"{variants.PARTITIONED} or --layout {variants.CITUS_PARTITIONED}")
    return layout


TRGM_EXTENSION: Final = "pg_trgm"


def text_index_name(table: str = DEFAULT_TABLE) -> str:
    """Name of the GIN trigram index on ``description``: ``ix_activity_logs_description_trgm``."""
    return f"ix_{table}_description_trgm"


async def _trgm_schema(conn: asyncpg.Connection) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = $1", TRGM_EXTENSION)
    return found


async def ensure_text_index(conn: asyncpg.Connection, *, table: str = DEFAULT_TABLE) -> str | None:
    """Give ``table`` (resolved through ``conn``'s ``search_path``) its trigram index; idempotent.

    Creates the ``pg_trgm`` extension when the database lacks it, in schema ``public``,
    not the first schema of the connection's ``search_path`` (an application
    schema dropped with ``CASCADE`` would take the extension, and every other schema's
    index, with it). Then ``CREATE INDEX IF NOT EXISTS`` the GIN index ``text_index_name``
    on ``description`` with ``gin_trgm_ops`` (named with the extension's schema, so it
    needs no ``search_path``), which ``description ILIKE '%word%'`` (the text filter) uses.
    On a partitioned table the index goes on the parent: existing and future partitions
    get it.

    Returns ``None`` when the index exists (now or before), or a one-line notice when the
    extension is missing and cannot be created (the index is then not made). Any other
    server error (the table missing, say) raises asyncpg's ``PostgresError``.
    """
    import asyncpg

    ext_schema = await _trgm_schema(conn)
    if ext_schema is None:
        try:
            # Without SCHEMA the extension would land in the first schema of search_path.
            await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {TRGM_EXTENSION} SCHEMA public")
        except asyncpg.PostgresError as exc:
            ext_schema = await _trgm_schema(conn)  # another init-db may have just created it
            if ext_schema is None:
                database = await conn.fetchval("SELECT current_database()")
                reason = " ".join(str(getattr(exc, "message", None) or exc).split())  # no HINT
                return (f"text search has no index: cannot create the {TRGM_EXTENSION} "
                        f"extension ({reason}); to enable it, a superuser "
                        f"runs 'CREATE EXTENSION {TRGM_EXTENSION};' in database {database}, "
                        f"then init-db again")
        else:
            ext_schema = await _trgm_schema(conn) or "public"
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {quote_identifier(text_index_name(table))} "
        f"ON {quote_identifier(table)} USING gin "
        f"(description {quote_identifier(ext_schema)}.gin_trgm_ops)")
    return None


# --- what an error means ----------------------------------------------------------------------


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


def _error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (SQLAlchemy's ``.orig``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]


def is_missing_table(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says a table does not exist: PostgreSQL SQLSTATE
    42P01 (asyncpg's ``UndefinedTableError``, also under SQLAlchemy's ``.orig``) or SQLite's
    "no such table". A missing database, schema, column or function is not a missing table.
    """
    for current in _error_chain(exc):
        if getattr(current, "sqlstate", None) == UNDEFINED_TABLE:
            return True
        if isinstance(current, sqlite3.OperationalError) and str(current).startswith(
                "no such table"):
            return True
    return False


def permission_cause(exc: BaseException) -> BaseException | None:
    """The server error in ``exc``'s chain that refused this role something: SQLSTATE 42501
    (a missing privilege, or not the owner) or class 28 (the login refused); else ``None``.

    Already a ``PermissionDeniedError``: ``exc`` itself.
    """
    for current in _error_chain(exc):
        if isinstance(current, PermissionDeniedError):
            return current
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (
                sqlstate == INSUFFICIENT_PRIVILEGE or sqlstate[:2] == AUTHORIZATION_CLASS):
            return current
    return None


def is_permission_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a refusal of this role (``permission_cause``).

    Never the rows' fault and never cured by retrying: ``store_pg.is_data_error`` is False
    for it, and the worker and the CLI stop with one line instead of retrying.
    """
    return permission_cause(exc) is not None


def server_message(exc: BaseException) -> str:
    """The first line of the server's message in ``exc`` (no DETAIL or HINT)."""
    text = str(getattr(exc, "message", None) or exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def login_refused(url: str, exc: BaseException) -> PermissionDeniedError:
    """The ``PermissionDeniedError`` for a login the server refused (one line, no password)."""
    cause = permission_cause(exc) or exc
    return PermissionDeniedError(
        f"PostgreSQL at {redact_url(url)} refused the login: {server_message(cause)} "
        "(check the user and password in the URL, pg_hba.conf, and that the role has LOGIN "
        "and CONNECT on the database)")


def as_permission_error(exc: BaseException, *, role: str | None, doing: str,
                        fix: str) -> PermissionDeniedError:
    """A one-line ``PermissionDeniedError`` for ``exc`` (``is_permission_error`` must hold).

    ``doing`` says what was refused ("insert into activity_logs"), ``fix`` what to grant.
    """
    cause = permission_cause(exc) or exc
    if isinstance(cause, PermissionDeniedError):
        return cause
    who = f"role {role!r}" if role else "this role"
    return PermissionDeniedError(
        f"{who} may not {doing}: {server_message(cause)}; {fix}")


def _unreachable_error(url: str, exc: BaseException) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"cannot reach the database at {redact_url(url)}: {type(exc).__name__}: {exc}")


@contextlib.asynccontextmanager
async def reachable(url: str) -> AsyncIterator[None]:
    """Turn "cannot connect" into ``StoreUnavailableError`` naming the URL (password hidden).

    For a block that only talks to the database (the viewer's pooled requests): any
    network-level failure in it counts. Errors of this library pass through unchanged: they
    already say what is wrong.
    """
    try:
        yield
    except ActivityLoggingError:
        raise
    except Exception as exc:
        if is_unreachable(exc):
            raise _unreachable_error(url, exc) from exc
        raise


@contextlib.asynccontextmanager
async def read_connection(url: str, *, schema: str | None = None) -> AsyncIterator[AsyncConnection]:
    """One SQLAlchemy ``AsyncConnection`` to read with, its engine disposed of afterwards.

    The one way the read side (queries, export, status, retention, ``verify``) opens the
    database. The connection begins one transaction at its first statement and holds it
    until the block ends, when it is rolled back (commit inside the block to keep writes,
    as retention's batched deletes do), so a server-side cursor (``conn.stream``) lives as
    long as the block.

    ``PermissionDeniedError`` when the server refuses the login (``connect_pg``), and
    ``StoreUnavailableError`` (naming the URL, password hidden) when connecting fails, or
    when a database call in the block fails because the server went away (a SQLAlchemy
    ``DBAPIError`` caused by a network error). Everything else raised in the block passes
    through as it is: a ``BrokenPipeError`` from writing an export is the caller's, not
    "unreachable".
    """
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url):
            try:
                conn = await engine.connect()
            except DBAPIError as exc:
                if is_permission_error(exc):
                    raise login_refused(url, exc) from exc
                raise
        try:
            yield conn
        except DBAPIError as exc:
            if is_unreachable(exc):
                raise _unreachable_error(url, exc) from exc
            raise
        finally:
            try:
                await conn.close()
            except DBAPIError as exc:  # rolling back on a connection that is gone
                if not is_unreachable(exc):
                    raise
    finally:
        await engine.dispose()


def read_engine(
    database_url: str | None = None,
    read_database_url: str | None = None,
    *,
    schema: str | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """An ``AsyncEngine`` for reading the trail, on a read replica when one is configured: for
    an application that runs ``activity_log_crud``'s queries off the primary::

        engine = read_engine()  # ACTIVITY_LOG_READ_DATABASE_URL, else DATABASE_URL
        async with engine.connect() as conn:
            page = await activity_log_crud.get_page(conn, ActivityFilter(actor_id="a1"))
        # or AsyncSession(engine) / async_sessionmaker(engine)

    The URL is ``config.resolve_read_database_url``'s, as the CLI's read verbs and the viewer
    resolve it: ``read_database_url``, else ``database_url``, else
    ``ACTIVITY_LOG_READ_DATABASE_URL``, else ``DATABASE_URL``, else the embedded SQLite file;
    ``schema`` defaults to ``ACTIVITY_LOG_SCHEMA`` (a replica holds the primary's schema).
    On PostgreSQL every transaction is ``READ ONLY`` (``default_transaction_read_only``;
    ``connect_args={"server_settings": ...}`` may add settings or override it), so the
    engine cannot write to a primary it falls back to; SQLite opens the file as given.
    Other keyword arguments go to ``create_async_engine_for`` (``pool_size``, ...).

    Does not connect; the caller disposes of it (``await engine.dispose()``). Raises
    ``ConfigurationError`` for an unsupported URL.
    """
    url = resolve_read_database_url(read_database_url, database_url, default=DEFAULT_SQLITE_URL)
    assert url is not None  # a default was given
    if is_postgres(url):
        connect_args = dict(kwargs.pop("connect_args", None) or {})
        connect_args["server_settings"] = {"default_transaction_read_only": "on",
                                           **(connect_args.get("server_settings") or {})}
        kwargs["connect_args"] = connect_args
    return create_async_engine_for(url, schema=resolve_schema(schema), **kwargs)


__all__ = [
    "AUTHORIZATION_CLASS",
    "DEFAULT_CONNECT_TIMEOUT",
    "INSUFFICIENT_PRIVILEGE",
    "TRGM_EXTENSION",
    "UNDEFINED_TABLE",
    "as_permission_error",
    "connect_pg",
    "create_async_engine_for",
    "ensure_text_index",
    "init_db",
    "is_missing_table",
    "is_permission_error",
    "is_unreachable",
    "login_refused",
    "permission_cause",
    "quote_identifier",
    "reachable",
    "read_connection",
    "read_engine",
    "server_message",
    "text_index_name",
]
