"""``SQLiteStore``: the embedded store's writer of the ``Store`` protocol (stdlib sqlite3).

The one way rows reach a SQLite file, for the handler's direct mode and for a worker
draining into SQLite alike: ``INSERT ... ON CONFLICT (id) DO NOTHING`` in one transaction
per batch. Values are stored exactly as SQLAlchemy stores them (its own bind processors,
taken from the table), so every reader (``crud``, export, the viewer) reads them back.

Plain sqlite3 rather than aiosqlite: aiosqlite keeps a non-daemon thread per open
connection, and a handler's connection stays open until ``logging.shutdown`` runs at exit,
which is only after the interpreter has waited for every non-daemon thread: a short script
would never exit. The calls are short local writes, made directly from the coroutine.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from sqlalchemy import MetaData, Table
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from .config import DEFAULT_TABLE
from .exceptions import ConfigurationError, StoreUnavailableError
from .private_files import prepare_sqlite_file
from .schema import make_cuts_table, make_table
from .signing import SIGNING_COLUMNS
from .store import is_bad_value
from .urls import is_sqlite, redact_url, sqlite_file

#: Connection settings of every SQLite connection the library opens, writers and readers
#: (``db.create_async_engine_for`` applies the same list): WAL, so readers never block the
#: writer; NORMAL sync, durable across application crashes (not power loss) in WAL mode;
#: a busy writer waited for up to 5 s.
SQLITE_PRAGMAS: Final = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                         "PRAGMA busy_timeout=5000")


def apply_pragmas(dbapi_conn: Any) -> None:
    """Run ``SQLITE_PRAGMAS`` on a DB-API connection (sqlite3, or aiosqlite's adapter)."""
    cur = dbapi_conn.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cur.execute(pragma)
    finally:
        cur.close()


def _orjson_text(value: Any) -> str:
    return orjson.dumps(value).decode()


_DIALECT: Final = pysqlite.dialect(json_serializer=_orjson_text)
_Processor = Callable[[Any], Any] | None


def is_data_error(exc: BaseException) -> bool:
    """True when SQLite (or the value conversion before it) refused a row's values.

    ``IntegrityError`` (a NOT NULL column), ``InterfaceError`` (a value it cannot bind),
    ``DataError`` and the conversions' bad values (``store.is_bad_value``) repeat for the same
    row; ``OperationalError`` (locked, disk full, I/O), this library's own errors (a missing
    table) and the rest are about the database.
    """
    return (isinstance(exc, sqlite3.IntegrityError | sqlite3.InterfaceError | sqlite3.DataError)
            or is_bad_value(exc))


class SQLiteStore:
    """Idempotent bulk writer of activity rows into a SQLite file.

    Thread-safe (one lock around the connection); ``create`` makes the table and its indexes
    when the file has none (the embedded default), else ``connect`` raises
    ``ConfigurationError`` asking for ``init-db``.
    """

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE, create: bool = False,
                 schema: str | None = None) -> None:
        if not is_sqlite(url):
            raise ConfigurationError(f"not a sqlite URL: {redact_url(url)!r}")
        file = sqlite_file(url)
        self.path = str(file) if file is not None else ":memory:"
        self.url = url
        self.table_name = table
        self.create = create
        self._table: Table = make_table(MetaData(), table)
        columns = list(self._table.columns)
        names = ", ".join(_DIALECT.identifier_preparer.quote(c.name) for c in columns)
        self._insert_sql = (
            f"INSERT INTO {_DIALECT.identifier_preparer.quote(table)} ({names}) "
            f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT (id) DO NOTHING"
        )
        self._keys = tuple(c.name for c in columns)
        self._processors: tuple[_Processor, ...] = tuple(
            c.type._cached_bind_processor(_DIALECT) for c in columns
        )
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # --- the Store protocol (async face of the synchronous calls below) ----------------------

    async def connect(self) -> None:
        """Open the file (and create the table when ``create``); see ``connect_now``."""
        self.connect_now()

    async def insert_activities(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows`` in one transaction; how many were new (duplicates skipped)."""
        return self.insert_now(rows)

    def is_data_error(self, exc: BaseException) -> bool:
        """See the module function ``is_data_error``."""
        return is_data_error(exc)

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]:
        """SQLite tables are never partitioned: nothing to create."""
        return []

    async def close(self) -> None:
        """Close the connection; idempotent, never raises."""
        self.abort()

    def abort(self) -> None:
        """Close the connection; never raises (a local file has nothing to abort)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- synchronous work --------------------------------------------------------------------

    def connect_now(self) -> None:
        """(Re)open the file, creating a missing one 0600 (``private_files``). Raises
        ``StoreUnavailableError`` when it cannot be opened and ``ConfigurationError`` when
        the table is missing and ``create`` is off."""
        self.abort()
        if self.path != ":memory:":
            prepare_sqlite_file(Path(self.path))  # made 0600; an open one reported once
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open {redact_url(self.url)}: {exc}") from exc
        try:
            apply_pragmas(conn)
            found = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                 "AND name = ?", (self.table_name,)).fetchone()[0]
            if not found:
                if not self.create:
                    raise ConfigurationError(
                        f"table {self.table_name!r} does not exist in {redact_url(self.url)}: "
                        "run `activity-logging init-db` first")
                self._create_table(conn)
            else:
                self._add_chain_columns(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailableError(f"cannot open {redact_url(self.url)}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conn = conn

    def _create_table(self, conn: sqlite3.Connection) -> None:
        """The table and its indexes, as ``schema.make_table`` defines them; idempotent."""
        statements = [str(CreateTable(self._table, if_not_exists=True).compile(dialect=_DIALECT)),
                      str(CreateTable(make_cuts_table(MetaData(), self.table_name),
                                      if_not_exists=True).compile(dialect=_DIALECT))]
        statements += [str(CreateIndex(index, if_not_exists=True).compile(dialect=_DIALECT))
                       for index in sorted(self._table.indexes, key=lambda i: str(i.name))]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in statements:
                conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _add_chain_columns(self, conn: sqlite3.Connection) -> None:
        """Upgrade a table made before the chain (signing.py): add its columns (and the cut
        markers' table). ``ALTER TABLE ... ADD COLUMN`` rewrites nothing in SQLite."""
        table = _DIALECT.identifier_preparer.quote_identifier(self.table_name)
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column in (c for c in SIGNING_COLUMNS if c not in have):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        cuts = make_cuts_table(MetaData(), self.table_name)
        conn.execute(str(CreateTable(cuts, if_not_exists=True).compile(dialect=_DIALECT)))

    def insert_now(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Synchronous ``insert_activities``: all rows or none, in one transaction."""
        if not rows:
            return 0
        params = [self._params(row) for row in rows]  # a bad value raises before BEGIN
        if self._conn is None:
            self.connect_now()
        with self._lock:
            conn = self._conn
            if conn is None:  # closed meanwhile, by another thread
                raise StoreUnavailableError(f"{redact_url(self.url)} was closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.executemany(self._insert_sql, params)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return max(0, cur.rowcount)

    def _params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(value if proc is None or value is None else proc(value)
                     for proc, value in zip(self._processors,
                                            (row[key] for key in self._keys), strict=True))
