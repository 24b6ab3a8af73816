"""The viewer's database access: a read-only engine, pages both ways, one activity, export.

Read-only at the connection, not by convention: PostgreSQL connections start every
transaction ``READ ONLY`` (``default_transaction_read_only``) and SQLite files are opened
with ``mode=ro``, so even a bug in this package could not write. Use a role that can only
``SELECT`` for a second line of defence (docs/viewer.md).

Every listing is a keyset page of ``crud.ActivityLogCRUD.get_page`` (never OFFSET); a page
back is the same query in the other order from the first row shown, reversed.

A server answers many requests: it keeps one pooled engine (``create_read_only_engine``)
for its lifetime, where a one-shot reader takes ``db.read_connection`` (an engine per
call). Each request's database work runs inside ``db.reachable``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from ..crud import activity_log_crud
from ..crud_results import ActivityRecord, ActivitySummary
from ..crud_select import ActivityFilter, Order, build_select
from ..db import create_async_engine_for, quote_identifier, reachable
from ..exceptions import ConfigurationError
from ..export import EXPORT_FORMATS, encode_csv, encode_jsonl
from ..schema import activity_logs
from ..urls import is_sqlite, normalize_async_url, shown_url, sqlite_file

EXPORT_BATCH_ROWS: Final = 2_000
DEFAULT_STATEMENT_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page in the view's order, with the cursors of the pages on either side.

    ``next_cursor`` continues after the last item (``None``: this is the last page);
    ``back_cursor`` reaches the page before the first item (``None``: this is the first).
    """

    items: list[ActivityRecord]
    next_cursor: str | None
    back_cursor: str | None


def read_only_sqlite_url(url: str) -> str:
    """The SQLAlchemy URL that opens the SQLite file of ``url`` read-only (``mode=ro`` URI).

    A missing file is an error when connecting ("unable to open database file"), never an
    empty database created. Raises ``ConfigurationError`` for ``:memory:``.
    """
    path = sqlite_file(url)
    if path is None:
        raise ConfigurationError(f"the viewer needs a SQLite database file, got {shown_url(url)}")
    parsed = make_url(normalize_async_url(url))
    query = {k: v for k, v in parsed.query.items() if k not in ("mode", "uri")}
    query.update(mode="ro", uri="true")
    return parsed.set(
        database="file:" + quote(os.path.abspath(path)), query=query
    ).render_as_string(hide_password=False)


def create_read_only_engine(
    url: str, *, schema: str | None = None, statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
) -> AsyncEngine:
    """An ``AsyncEngine`` that can only read ``url``'s store. Does not connect.

    PostgreSQL: a small pool (checked before use, so a database restart costs no request),
    ``default_transaction_read_only=on``, ``statement_timeout`` in seconds (0 = none) so no
    page can hold the database for long, and ``application_name`` for ``pg_stat_activity``.
    SQLite: ``mode=ro`` and no pool (a connection per request, nothing left open).
    """
    if is_sqlite(url):
        return create_async_engine_for(read_only_sqlite_url(url), poolclass=NullPool)
    settings = {
        "default_transaction_read_only": "on",
        "statement_timeout": str(int(statement_timeout * 1000)),
        "application_name": "activity-logging-viewer",
    }
    return create_async_engine_for(
        url, schema=schema, pool_size=5, max_overflow=5, pool_pre_ping=True,
        connect_args={"server_settings": settings},
    )


class ViewerStore:
    """The viewer's queries over one read-only engine. Safe to share between requests."""

    def __init__(
        self, url: str, *, schema: str | None = None,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self.url = url
        self.schema = schema
        self.engine = create_read_only_engine(url, schema=schema,
                                              statement_timeout=statement_timeout)

    async def page(
        self,
        filters: ActivityFilter,
        *,
        limit: int,
        order: Order = "desc",
        cursor: str | None = None,
        back: str | None = None,
    ) -> ListPage:
        """The page after ``cursor`` (or, with ``back``, the page before it) in ``order``.

        Raises ``ConfigurationError`` for a malformed cursor or limit.
        """
        async with reachable(self.url), self.engine.connect() as conn:
            if back is not None:
                reverse: Order = "asc" if order == "desc" else "desc"
                found = await activity_log_crud.get_page(
                    conn, filters, limit=limit, cursor=back, order=reverse)
                items = found.items[::-1]
                return ListPage(
                    items,
                    next_cursor=items[-1].cursor if items else None,
                    back_cursor=items[0].cursor if items and found.next_cursor else None,
                )
            found = await activity_log_crud.get_page(
                conn, filters, limit=limit, cursor=cursor, order=order)
        items = found.items
        return ListPage(
            items, next_cursor=found.next_cursor,
            back_cursor=items[0].cursor if cursor is not None and items else None,
        )

    async def get(self, activity_id: uuid.UUID) -> ActivityRecord | None:
        """The activity with this id, or ``None``."""
        stmt = build_select(limit=1).where(activity_logs.c.id == activity_id)
        async with reachable(self.url), self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else ActivityRecord.from_row(row)

    async def summary(self, days: int) -> ActivitySummary:
        """``crud``'s counts over the last ``days`` UTC days."""
        async with reachable(self.url), self.engine.connect() as conn:
            return await activity_log_crud.get_activity_summary(conn, days=days)

    async def export(self, filters: ActivityFilter, fmt: str) -> AsyncIterator[bytes]:
        """Every matching activity, oldest first, encoded as ``export.py`` encodes it
        (``jsonl``, or ``csv`` with its header), a batch per chunk, in constant memory."""
        if fmt not in EXPORT_FORMATS:
            raise ConfigurationError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
        encode = encode_jsonl if fmt == "jsonl" else encode_csv
        if fmt == "csv":
            yield encode_csv([], header=True)
        # A server-side cursor lives as long as its transaction: one for the whole export.
        async with (
            reachable(self.url),
            self.engine.connect() as conn,
            conn.begin(),
            contextlib.aclosing(activity_log_crud.iter_batches(
                conn, filters, batch_size=EXPORT_BATCH_ROWS)) as batches,
        ):
            async for batch in batches:
                yield encode(batch)

    async def check(self) -> None:
        """Read one row: raises ``StoreUnavailableError`` or the database error (no such
        table, no such file) that every page would otherwise show."""
        async with reachable(self.url), self.engine.connect() as conn:
            await conn.execute(
                text(f"SELECT 1 FROM {quote_identifier(activity_logs.name)} LIMIT 1"))

    async def close(self) -> None:
        """Close pooled connections; idempotent."""
        await self.engine.dispose()


__all__ = [
    "DEFAULT_STATEMENT_TIMEOUT",
    "EXPORT_BATCH_ROWS",
    "ListPage",
    "ViewerStore",
    "create_read_only_engine",
    "read_only_sqlite_url",
]
