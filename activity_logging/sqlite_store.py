"""``SQLiteStore``: the worker's writer for the embedded SQLite store (aiosqlite).

Same duck-typed interface as ``db.PostgresStore`` (``connect``, ``insert_activities``,
``ensure_partitions``, ``close``, ``connected``), so a worker can drain a stream into SQLite
on a developer's machine. Idempotent like the PostgreSQL path: ``INSERT ... ON CONFLICT (id)
DO NOTHING``, one transaction per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import MetaData, Table, event, text
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .config import DEFAULT_TABLE
from .exceptions import ConfigurationError, StoreUnavailableError
from .schema import make_table, normalize_async_url, redact_url


class SQLiteStore:
    """Bulk writer of activity rows into a SQLite file. Not shared between event loops."""

    def __init__(self, url: str, *, schema: str | None = None, table: str = DEFAULT_TABLE) -> None:
        self.url = normalize_async_url(url)
        if not self.url.startswith("sqlite+aiosqlite://"):
            raise ConfigurationError(f"not a sqlite URL: {redact_url(url)!r}")
        self.table_name = table
        self._table: Table = make_table(MetaData(), table)
        self._engine: AsyncEngine | None = None

    async def connect(self) -> None:
        """Open the file; raise ``ConfigurationError`` when the table is missing (run init-db)."""
        await self.close()
        engine = create_async_engine(self.url)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        try:
            async with engine.connect() as conn:
                found = await conn.scalar(
                    text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = :n"),
                    {"n": self.table_name},
                )
        except Exception as exc:
            await engine.dispose()
            raise StoreUnavailableError(f"cannot open {redact_url(self.url)}: {exc}") from exc
        if not found:
            await engine.dispose()
            raise ConfigurationError(
                f"table {self.table_name!r} does not exist in {redact_url(self.url)}: "
                "run `activity-logging init-db` first"
            )
        self._engine = engine

    @property
    def connected(self) -> bool:
        """True while the engine is open."""
        return self._engine is not None

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]:
        """SQLite tables are never partitioned: nothing to create."""
        return []

    async def insert_activities(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows`` in one transaction; returns how many were new (duplicates skipped)."""
        if not rows:
            return 0
        if self._engine is None:
            await self.connect()
        assert self._engine is not None
        async with self._engine.begin() as conn:
            result = await conn.execute(
                insert(self._table).on_conflict_do_nothing(index_elements=["id"]), list(rows)
            )
        return max(0, int(result.rowcount))

    async def close(self) -> None:
        """Dispose of the engine; never raises."""
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                await engine.dispose()
            except Exception:  # closing must never raise
                return
