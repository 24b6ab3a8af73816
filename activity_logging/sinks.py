"""Where the handler's listener ships encoded entries: a Redis Stream, or a store directly.

A sink's ``send(entries)`` either delivers every entry or raises; the listener then backs
off, holds or spools, and sends again. Re-sending is safe: each record keeps its id, and the
stores insert with ``ON CONFLICT (id) DO NOTHING``. Sinks connect lazily, on first send.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from ._internal import reporter
from .exceptions import EntryFormatError
from .record import build_activity, decode_entry
from .schema import is_sqlite, make_table, normalize_sync_sqlite_url

if TYPE_CHECKING:
    import redis
    from sqlalchemy import Engine, Table

Entry = dict[str, Any]


class Sink(Protocol):
    """Delivers stream entries; ``send`` raises on failure, ``close`` never raises.

    ``prepare`` runs once when the listener starts: it imports and builds clients without
    touching the network. Doing it early matters: those imports create loggers, which takes
    the ``logging`` module lock, and ``dictConfig`` holds that lock while it flushes and
    closes the handlers it replaces. A first send during that flush would otherwise deadlock.
    """

    def prepare(self) -> None: ...

    def send(self, entries: list[Entry]) -> None: ...

    def unconfirmed(self, exc: BaseException) -> bool:
        """True when ``send`` failed with ``exc`` after the entries may have been delivered
        (no answer came): the handler then counts them as unconfirmed, never as lost."""
        ...

    @property
    def rejected(self) -> int:
        """Records dropped because they could not be stored (direct modes; 0 for Redis)."""
        ...

    def close(self) -> None: ...


def entries_to_rows(entries: list[Entry]) -> tuple[list[dict[str, Any]], int]:
    """Decode entries and build one ``activity_logs`` row per record.

    Returns (rows, rejected): a record that cannot become a row (e.g. a timestamp outside
    what the database can store) is left out and counted, never allowed to block the others.
    """
    rows: list[dict[str, Any]] = []
    rejected = 0
    for entry in entries:
        try:
            meta, records = decode_entry(entry)
        except EntryFormatError as exc:
            rejected += _record_count(entry)
            reporter.report("reject", "an entry could not be decoded and was dropped", exc)
            continue
        for rec in records:
            try:
                rows.append(build_activity(rec, meta))
            except EntryFormatError as exc:
                rejected += 1
                reporter.report("reject", "a record could not become a row and was dropped", exc)
    return rows, rejected


def _record_count(entry: Entry) -> int:
    raw: Any = entry.get("n") or 1
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


class RedisStreamSink:
    """XADDs each entry to ``stream``; several entries go in one pipelined round trip."""

    def __init__(self, url: str, stream: str, *, socket_timeout: float = 5.0) -> None:
        self.url = url
        self.stream = stream
        self._socket_timeout = socket_timeout
        self._client: redis.Redis | None = None
        self._timeout_error: type[BaseException] = TimeoutError
        self.rejected = 0  # the worker isolates and dead-letters bad records on this path

    def _connect(self) -> redis.Redis:
        if self._client is None:
            import redis as redis_mod

            self._client = redis_mod.Redis.from_url(
                self.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                health_check_interval=30,
            )
        return self._client

    def prepare(self) -> None:
        self._connect()  # builds the client; redis-py connects on the first command
        # what the first command needs, imported now: at interpreter exit it cannot be
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._timeout_error = RedisTimeoutError

    def unconfirmed(self, exc: BaseException) -> bool:
        """A timeout: the XADD may have been written and executed, only the answer is missing."""
        return isinstance(exc, self._timeout_error | TimeoutError)

    def send(self, entries: list[Entry]) -> None:
        client = self._connect()
        try:
            if len(entries) == 1:
                client.xadd(self.stream, entries[0])  # type: ignore[arg-type]
                return
            pipe = client.pipeline(transaction=False)
            for entry in entries:
                pipe.xadd(self.stream, entry)  # type: ignore[arg-type]
            pipe.execute()
        except Exception:
            self._drop_client()
            raise

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        self._drop_client()


class SQLiteSink:
    """Writes straight to the embedded SQLite store (creates the table on first use)."""

    def __init__(self, url: str) -> None:
        self.url = normalize_sync_sqlite_url(url)
        self.rejected = 0
        self._engine: Engine | None = None
        self._table: Table | None = None

    def _connect(self) -> tuple[Engine, Table]:
        if self._engine is None or self._table is None:
            from sqlalchemy import MetaData, create_engine, event

            engine = create_engine(self.url)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers (queries, demo) never block us
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()

            table = make_table(MetaData())
            table.metadata.create_all(engine, checkfirst=True)
            self._engine, self._table = engine, table
        return self._engine, self._table

    def prepare(self) -> None:
        import sqlalchemy.dialects.sqlite  # noqa: F401 - imported now, see Sink.prepare

        self._connect()  # a local file: creating the table now is cheap and surfaces errors early

    def send(self, entries: list[Entry]) -> None:
        from sqlalchemy.dialects.sqlite import insert

        engine, table = self._connect()
        rows, rejected = entries_to_rows(entries)
        if rows:
            with engine.begin() as conn:
                conn.execute(insert(table).on_conflict_do_nothing(index_elements=["id"]), rows)
        self.rejected += rejected  # counted once the send succeeded (a retry builds them again)

    def unconfirmed(self, exc: BaseException) -> bool:
        """Never: a local transaction either committed or raised."""
        return False

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.dispose()


class PostgresSink:
    """Writes straight to PostgreSQL (no Redis configured), through ``db.PostgresStore``.

    Runs a private event loop in the listener thread; the application's loop is never used.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema
        self.rejected = 0
        self._connected_for_send = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: Any = None

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def prepare(self) -> None:
        from . import db  # noqa: F401 - imported now (with asyncpg), see Sink.prepare

    def send(self, entries: list[Entry]) -> None:
        from .db import PostgresStore, is_data_error

        rows, rejected = entries_to_rows(entries)
        self._connected_for_send = False
        if self._store is None:
            store = PostgresStore(self.url, schema=self.schema)
            self._run(store.connect())
            self._store = store
        self._connected_for_send = True
        try:
            try:
                self._run(self._store.insert_activities(rows))
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                # a row PostgreSQL refuses must not block the rest: store them one by one
                for row in rows:
                    try:
                        self._run(self._store.insert_activities([row]))
                    except Exception as row_exc:
                        if not is_data_error(row_exc):
                            raise
                        rejected += 1
                        reporter.report("reject", f"PostgreSQL refused record {row['id']}", row_exc)
        except Exception:
            store, self._store = self._store, None
            with contextlib.suppress(Exception):
                self._run(store.close())
            raise
        self.rejected += rejected

    def unconfirmed(self, exc: BaseException) -> bool:
        """A timeout or a connection lost mid-transaction: the commit may have happened."""
        return self._connected_for_send and isinstance(exc, TimeoutError | ConnectionError | OSError)

    def close(self) -> None:
        try:
            if self._store is not None:
                self._run(self._store.close())
        except Exception as exc:  # closing must never raise
            reporter.report("sink-close", "could not close the PostgreSQL store", exc)
        finally:
            self._store = None
            if self._loop is not None:
                self._loop.close()
                self._loop = None


def make_sink(
    redis_url: str | None, stream: str, database_url: str, schema: str | None,
    *, socket_timeout: float = 5.0,
) -> Sink:
    """Redis when configured; otherwise the database itself (SQLite embedded, or PostgreSQL)."""
    if redis_url:
        return RedisStreamSink(redis_url, stream, socket_timeout=socket_timeout)
    if is_sqlite(database_url):
        return SQLiteSink(database_url)
    return PostgresSink(database_url, schema=schema)
