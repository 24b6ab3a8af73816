"""The one way rows are written: the ``Store`` protocol and bad-row isolation.

Every writer of ``activity_logs`` (the worker, and the handler's direct mode through
``sinks.StoreSink``) hands rows to a ``Store`` through ``store_rows``. A store inserts a batch
in one transaction, idempotently (``ON CONFLICT (id) DO NOTHING``), and says which errors
are the rows' fault (``is_data_error``: a bad value, which repeats on every retry) and
which are the database's (anything else: retry the batch later). ``store_rows`` splits a
batch the database refuses for a row's sake in halves until the bad rows stand alone, so
one bad record never blocks the others. Two stores: ``store_pg.PostgresStore`` (asyncpg,
``COPY``) and ``store_sqlite.SQLiteStore`` (stdlib sqlite3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .config import DEFAULT_TABLE
from .exceptions import ActivityLoggingError
from .urls import is_sqlite

Row = Mapping[str, Any]

#: Tries of a lone row the database refuses before it is given up (the worker dead-letters
#: it). One: a data error on a row alone is a property of its values, and repeats on every
#: try; only errors about the database (not data errors) are worth retrying, and those are
#: the caller's to retry, the whole batch at once.
DEFAULT_ATTEMPTS: Final = 1
#: Pause before try ``n`` of a lone refused row when ``attempts`` > 1: ``n * RETRY_PAUSE`` s.
RETRY_PAUSE: Final = 0.05


class Store(Protocol):
    """Writes ``activity_logs`` rows. One connection; not shared between event loops.

    ``connect`` raises ``StoreUnavailableError`` (unreachable) or ``ConfigurationError``
    (the table is missing); ``insert_activities`` inserts all rows in one transaction and
    returns how many were new, raising the driver's error as is; ``close`` never raises.
    """

    async def connect(self) -> None: ...

    async def insert_activities(self, rows: Sequence[Row]) -> int: ...

    def is_data_error(self, exc: BaseException) -> bool:
        """True when ``exc`` means the rows themselves were refused (retrying cannot help)."""
        ...

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]: ...

    async def close(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection at once, without a goodbye; never raises."""
        ...


@dataclass(frozen=True)
class Rejected:
    """A row the database refused ``attempts`` times; ``index`` is its place in the batch."""

    index: int
    error: BaseException
    attempts: int


@dataclass
class Stored:
    """What ``store_rows`` did: rows newly inserted, and the rows refused (in batch order).

    ``duplicates`` = rows already present (same id) = ``len(rows) - inserted - len(rejected)``.
    """

    inserted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    offered: int = 0

    @property
    def duplicates(self) -> int:
        return self.offered - self.inserted - len(self.rejected)


async def store_rows(
    store: Store, rows: Sequence[Row], *, attempts: int = DEFAULT_ATTEMPTS,
    pause: float = RETRY_PAUSE,
) -> Stored:
    """Insert ``rows`` through ``store``, isolating rows it refuses by bisection.

    The whole batch is tried first; on a data error it is split in halves, recursively, so
    ``k`` bad rows among ``n`` cost about ``2k·log2(n)`` inserts and every good row is stored.
    A lone refused row is reported in ``rejected`` at once (``attempts`` = 1, the default: a
    data error is deterministic), or after ``attempts`` tries with a pause between them.
    Any other error (connection lost, table missing) propagates: the caller retries the
    whole batch later, and what was committed meanwhile is skipped by ``ON CONFLICT``.
    """
    result = Stored(offered=len(rows))
    if rows:
        await _isolate(store, rows, 0, len(rows), result, attempts, pause)
    return result


async def _isolate(
    store: Store, rows: Sequence[Row], lo: int, hi: int, result: Stored, attempts: int,
    pause: float,
) -> None:
    tried = 0
    while True:
        tried += 1
        try:
            result.inserted += await store.insert_activities(rows[lo:hi])
            return
        except Exception as exc:
            if not store.is_data_error(exc):
                raise
            error: BaseException = exc
        if hi - lo > 1:  # split: the bad rows are in one half or both
            mid = (lo + hi) // 2
            await _isolate(store, rows, lo, mid, result, attempts, pause)
            await _isolate(store, rows, mid, hi, result, attempts, pause)
            return
        if tried >= attempts:
            result.rejected.append(Rejected(lo, error, tried))
            return
        await asyncio.sleep(pause * (tried + 1))


def is_bad_value(exc: BaseException) -> bool:
    """True when a driver refused a value before it reached the database (an int out of
    int64 range, an unparseable address): ``OverflowError``, ``ValueError``, ``TypeError``.

    Never for this library's own errors (``ConfigurationError`` and ``EntryFormatError`` are
    ``ValueError``s too): a missing table says nothing about the rows and must not get them
    split up and refused one by one.
    """
    return (isinstance(exc, OverflowError | ValueError | TypeError)
            and not isinstance(exc, ActivityLoggingError))


def make_store(
    url: str, *, schema: str | None = None, table: str = DEFAULT_TABLE, create: bool = False
) -> Store:
    """The store for ``url``: SQLite (``create`` makes the table when missing) or PostgreSQL.

    Validates the URL (``ConfigurationError``); does not connect.
    """
    if is_sqlite(url):
        from .store_sqlite import SQLiteStore

        return SQLiteStore(url, table=table, create=create)
    from .store_pg import PostgresStore

    return PostgresStore(url, schema=schema, table=table)
