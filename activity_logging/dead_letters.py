"""Dead letters: what the worker refused, kept durably and bounded in ``activity_log_dead_letters``.

A dead letter is a record (or a whole entry) the worker will never store: too big to
decode, undecodable, malformed, dated outside the accepted window, or refused by the
database. It is written to the table ``activity_log_dead_letters`` (same database and
schema as ``activity_logs``, PostgreSQL or SQLite) **before** the entry it came from is
acknowledged: if the write fails, the entry stays pending and is tried again, so a dead
letter is never lost; the unique key ``(source_stream, source_id, position)`` makes a
second write of the same one a no-op.

Each dead letter keeps at most ``MAX_EXCERPT_BYTES`` (64 KiB) of what it refused, with the
size and the sha256 of the whole, and an error of at most ``MAX_ERROR_CHARS``: an 8 MB or
a 5 GB entry costs the same row. The table is bounded by ``purge``: rows older than
``DEFAULT_MAX_AGE_DAYS`` and beyond the newest ``DEFAULT_MAX_ROWS`` go, run by the worker
at most every ``PURGE_INTERVAL`` seconds when its role may delete (a writer role may not:
then ``activity-logging dead-letters purge`` from cron, or the maintenance side, does it).

Writing is ``DeadLetterWriter``'s (one pooled engine per worker, opened at the first dead
letter); reading (``fetch``, ``get``, ``count``) and ``purge`` take a SQLAlchemy
``AsyncConnection`` from ``db.read_connection``, as every reader does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)

from .config import DEFAULT_TABLE
from .entry_limits import MAX_EXCERPT_BYTES, REFUSAL_REASONS
from .exceptions import PermissionDeniedError
from .schema import UTCDateTime

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger: Final = logging.getLogger("activity_logging.dead_letters")

DEAD_LETTER_TABLE: Final = "activity_log_dead_letters"
#: Characters of the error message a dead letter keeps.
MAX_ERROR_CHARS: Final = 4096
#: ``purge`` keeps dead letters this many days, unless told otherwise.
DEFAULT_MAX_AGE_DAYS: Final = 30
#: ``purge`` keeps at most this many (the newest), unless told otherwise.
DEFAULT_MAX_ROWS: Final = 100_000
#: Seconds between the worker's own purges (when its role may delete).
PURGE_INTERVAL: Final = 3600.0
#: ``position`` of a dead letter that stands for its whole entry (not one record of it).
WHOLE_ENTRY: Final = -1

#: Why a dead letter was written (the ``reason`` column).
REASONS: Final = REFUSAL_REASONS



def dead_letter_table_name(table: str = DEFAULT_TABLE) -> str:
    """The dead-letter table beside ``table``: ``activity_log_dead_letters`` for the default."""
    return DEAD_LETTER_TABLE if table == DEFAULT_TABLE else f"{table}_dead_letters"


def make_dead_letter_table(metadata: MetaData, name: str = DEAD_LETTER_TABLE,
                           schema: str | None = None) -> Table:
    """The dead-letter table on ``metadata``: the one definition of its columns.

    ``id`` is a ``bigserial`` on PostgreSQL (an ``INTEGER PRIMARY KEY``, SQLite's row id,
    on SQLite), so the newest have the highest ids; ``record`` holds the bounded excerpt,
    ``record_bytes`` and ``record_sha256`` the size and hash of the whole.
    """
    table = Table(
        name, metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        Column("dead_at", UTCDateTime(), nullable=False),
        Column("reason", Text, nullable=False),
        Column("source_stream", Text, nullable=False),
        Column("source_id", Text, nullable=False),
        Column("position", Integer, nullable=False),
        Column("record_id", Text),
        Column("consumer", Text),
        Column("error", Text),
        Column("attempts", Integer, nullable=False),
        Column("record", Text),
        Column("record_bytes", BigInteger, nullable=False),
        Column("record_sha256", Text, nullable=False),
        UniqueConstraint("source_stream", "source_id", "position", name=f"uq_{name}_source"),
        schema=schema,
    )
    Index(f"ix_{name}_dead_at", table.c.dead_at)
    return table


dead_letters: Final = make_dead_letter_table(MetaData())


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as written: what was refused (bounded), why, and where it came from."""

    reason: str
    source_stream: str
    source_id: str
    position: int
    error: str
    attempts: int
    record: str
    record_bytes: int
    record_sha256: str
    record_id: str | None = None
    consumer: str | None = None
    dead_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def values(self) -> dict[str, Any]:
        """The row's column values (``id`` left to the database), every text bounded and
        without NUL (PostgreSQL's text refuses it, and a dead letter that cannot be written
        would hold its entry pending for ever)."""
        return {
            "dead_at": self.dead_at, "reason": _clean(self.reason, 64),
            "source_stream": _clean(self.source_stream, 1024),
            "source_id": _clean(self.source_id, 64), "position": self.position,
            "record_id": None if self.record_id is None else _clean(self.record_id, 64),
            "consumer": None if self.consumer is None else _clean(self.consumer, 255),
            "error": _clean(self.error, MAX_ERROR_CHARS),
            "attempts": self.attempts, "record": _clean(self.record, MAX_EXCERPT_BYTES),
            "record_bytes": self.record_bytes, "record_sha256": _clean(self.record_sha256, 64),
        }


def _clean(text: str, limit: int) -> str:
    # a lone surrogate cannot be encoded by the driver: "?" (rare text, cheap enough)
    text = text[:limit].encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _insert(table: Table, dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``dialect`` (a rewrite of one is a no-op)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


class DeadLetterWriter:
    """Writes dead letters for one worker; its engine is made at the first write.

    ``write`` inserts in one transaction and returns how many were new; raises
    ``StoreUnavailableError`` when the database cannot be reached, ``PermissionDeniedError``
    when the role may not write the table (no retry cures that: grant the writer role
    ``INSERT`` on it and ``USAGE`` on its ``id`` sequence), and the driver's error (through
    SQLAlchemy) otherwise; the caller keeps the entries pending and tries again.
    A missing table is created (``CREATE TABLE IF NOT EXISTS``) when the role may; else
    the error says to run ``init-db``. Not shared between event loops.
    """

    def __init__(self, url: str, *, schema: str | None = None, table: str = DEFAULT_TABLE,
                 max_age_days: float = DEFAULT_MAX_AGE_DAYS, max_rows: int = DEFAULT_MAX_ROWS,
                 purge_interval: float = PURGE_INTERVAL) -> None:
        self.url = url
        self.schema = schema
        self.table = make_dead_letter_table(MetaData(), dead_letter_table_name(table))
        self.max_age_days = max_age_days
        self.max_rows = max_rows
        self.purge_interval = purge_interval
        self.purged = 0
        self._engine: AsyncEngine | None = None
        self._next_purge = 0.0
        self._may_purge = True

    def _get_engine(self) -> AsyncEngine:
        if self._engine is None:
            from .db import create_async_engine_for

            self._engine = create_async_engine_for(self.url, schema=self.schema, pool_size=1,
                                                   max_overflow=1)
        return self._engine

    async def write(self, letters: Sequence[DeadLetter]) -> int:
        """Insert ``letters`` (idempotent on their source); how many were new."""
        if not letters:
            return 0
        from .db import is_missing_table, is_permission_error, reachable, server_message

        engine = self._get_engine()
        rows = [letter.values() for letter in letters]
        try:
            async with reachable(self.url):
                try:
                    written = await self._insert(engine, rows)
                except Exception as exc:
                    if not is_missing_table(exc):
                        raise
                    logger.warning("table %s is missing: creating it (init-db creates it too)",
                                   self.table.name)
                    async with engine.begin() as conn:
                        await conn.run_sync(self.table.metadata.create_all, checkfirst=True)
                    written = await self._insert(engine, rows)
                await self._maybe_purge(engine)
        except Exception as exc:
            if isinstance(exc, PermissionDeniedError) or not is_permission_error(exc):
                raise
            raise PermissionDeniedError(
                f"this role may not write the dead-letter table {self.table.name} "
                f"({server_message(getattr(exc, 'orig', None) or exc)}): grant it INSERT on "
                f"the table and USAGE on {self.table.name}_id_seq, or run init-db") from exc
        return written

    async def _insert(self, engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
        async with engine.begin() as conn:
            result = await conn.execute(_insert(self.table, engine.dialect.name), rows)
        count = result.rowcount
        return len(rows) if count is None or count < 0 else int(count)

    async def _maybe_purge(self, engine: AsyncEngine) -> None:
        """The table's bound, at most every ``purge_interval`` s; a role that may not
        delete is told once (the maintenance side purges then) and not asked again."""
        import time

        now = time.monotonic()
        if not self._may_purge or now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        try:
            async with engine.begin() as conn:
                self.purged += await purge(conn, table=self.table,
                                           older_than=timedelta(days=self.max_age_days),
                                           keep=self.max_rows, commit=False)
        except Exception as exc:
            from .db import is_permission_error

            if not is_permission_error(exc):
                raise
            self._may_purge = False
            logger.info("this role may not delete from %s: `activity-logging dead-letters "
                        "purge` (maintenance) bounds it", self.table.name)

    async def close(self) -> None:
        """Dispose of the engine; never raises."""
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                await engine.dispose()
            except Exception as exc:
                logger.debug("closing the dead-letter engine: %s", exc)


# --- reading and purging (any AsyncConnection: the CLI's read_connection) ---------------------


async def create_table(url: str, *, schema: str | None = None, table: str = DEFAULT_TABLE) -> None:
    """Create the dead-letter table beside ``table`` if missing (``init-db``); idempotent.

    SQLite through the standard library, never aiosqlite's thread (a file that cannot be
    opened raises ``OSError`` with SQLite's reason); PostgreSQL raises as ``db.init_db``
    does (``StoreUnavailableError``, SQLAlchemy's ``DBAPIError``).
    """
    from .db import create_async_engine_for, reachable
    from .urls import is_sqlite, sqlite_file

    definition = make_dead_letter_table(MetaData(), dead_letter_table_name(table))
    if is_sqlite(url):
        import sqlite3

        from sqlalchemy.dialects.sqlite import pysqlite
        from sqlalchemy.schema import CreateIndex, CreateTable

        dialect = pysqlite.dialect()
        statements = [str(CreateTable(definition, if_not_exists=True).compile(dialect=dialect))]
        statements += [str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
                       for index in definition.indexes]
        path = sqlite_file(url)
        try:
            db = sqlite3.connect(str(path) if path is not None else ":memory:", timeout=5.0)
            try:
                with db:
                    for sql in statements:
                        db.execute(sql)
            finally:
                db.close()
        except sqlite3.Error as exc:  # as init_db reports a file it cannot open
            raise OSError(str(exc)) from exc
        return
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url), engine.begin() as conn:
            await conn.run_sync(definition.metadata.create_all, checkfirst=True)
    finally:
        await engine.dispose()


def _plain(mapping: Any) -> dict[str, Any]:
    """A result row as a dict with plain ``str`` keys (a column name is SQLAlchemy's
    ``quoted_name``, which orjson refuses as a key)."""
    return {str(key): value for key, value in mapping.items()}


def _table(table: Table | None) -> Table:
    return dead_letters if table is None else table


async def count(conn: AsyncConnection, *, table: Table | None = None) -> int:
    """How many dead letters the table holds."""
    t = _table(table)
    return int((await conn.execute(select(func.count()).select_from(t))).scalar_one())


async def fetch(conn: AsyncConnection, *, limit: int = 50, before_id: int | None = None,
                reason: str | None = None, table: Table | None = None) -> list[dict[str, Any]]:
    """The newest dead letters first (``before_id``: older than that id), without the
    ``record`` excerpt (``get`` shows it); at most ``limit``."""
    t = _table(table)
    query = select(*[c for c in t.c if c.name != "record"]).order_by(t.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(t.c.id < before_id)
    if reason is not None:
        query = query.where(t.c.reason == reason)
    return [_plain(row._mapping) for row in await conn.execute(query)]


async def get(conn: AsyncConnection, letter_id: int, *,
              table: Table | None = None) -> dict[str, Any] | None:
    """One dead letter with its excerpt, or None."""
    t = _table(table)
    row = (await conn.execute(select(t).where(t.c.id == letter_id))).first()
    return None if row is None else _plain(row._mapping)


async def purge(conn: AsyncConnection, *, older_than: timedelta | None = None,
                keep: int | None = None, table: Table | None = None, commit: bool = True) -> int:
    """Delete dead letters older than ``older_than`` and all but the newest ``keep``; how
    many went. ``commit`` commits on ``conn`` (a ``read_connection`` rolls back otherwise)."""
    t = _table(table)
    deleted = 0
    if older_than is not None:
        try:
            cutoff: datetime | None = datetime.now(UTC) - older_than
        except OverflowError:  # before year 1: nothing is that old
            cutoff = None
        if cutoff is not None:
            result = await conn.execute(delete(t).where(t.c.dead_at < cutoff))
            deleted += max(0, result.rowcount or 0)
    if keep is not None:
        # ids only grow: the newest ``keep`` are those above the keep-th highest id
        edge = (await conn.execute(
            select(t.c.id).order_by(t.c.id.desc()).offset(keep).limit(1))).scalar()
        if edge is not None:
            result = await conn.execute(delete(t).where(t.c.id <= edge))
            deleted += max(0, result.rowcount or 0)
    if commit:
        await conn.commit()
    return deleted
