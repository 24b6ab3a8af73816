"""Where the handler's listener ships batches: a Redis Stream, or a store directly.

A sink's ``send(batches)`` either delivers every batch or raises; the listener then backs
off, holds or spools, and sends again. Re-sending is safe: each record keeps its id, and the
stores insert with ``ON CONFLICT (id) DO NOTHING``. The Redis sink is the edge where records
are encoded (``Batch.entry``, once per batch); the store sink never encodes: it builds rows
from the batch's records (``rows.rows_from_batch``). Sinks connect lazily, on first send.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._internal import reporter
from .exceptions import StoreUnavailableError
from .urls import is_sqlite
from .wire import Batch

if TYPE_CHECKING:
    import redis

    from .rows import Row
    from .signing import SigningKey
    from .store import Store

_T = TypeVar("_T")


class Sink(Protocol):
    """Delivers stream entries; ``send`` raises on failure, ``close`` never raises.

    ``prepare`` runs once when the listener starts: it imports and builds clients without
    touching the network. Doing it early matters: those imports create loggers, which takes
    the ``logging`` module lock, and ``dictConfig`` holds that lock while it flushes and
    closes the handlers it replaces. A first send during that flush would otherwise deadlock.
    """

    def prepare(self) -> None: ...

    def send(self, batches: list[Batch]) -> None: ...

    def unconfirmed(self, exc: BaseException) -> bool:
        """True when ``send`` failed with ``exc`` after the entries may have been delivered
        (no answer came): the handler then counts them as unconfirmed, never as lost."""
        ...

    @property
    def rejected(self) -> int:
        """Records dropped because they could not be stored (direct modes; 0 for Redis)."""
        ...

    def close(self) -> None: ...


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
            from .redis_clients import sync_client

            self._client = sync_client(
                self.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                health_check_interval=30,
            )
        return self._client

    def prepare(self) -> None:
        from .redis_clients import is_cluster

        if is_cluster(self.url):
            # A cluster client asks a node for the slot map as it is built: built at the
            # first send, so a handler made while the cluster is down still works.
            import redis.cluster  # noqa: F401  (imported now: at interpreter exit it cannot be)
        else:
            self._connect()  # builds the client; redis-py connects on the first command
        # what the first command needs, imported now: at interpreter exit it cannot be
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._timeout_error = RedisTimeoutError

    def unconfirmed(self, exc: BaseException) -> bool:
        """A timeout: the XADD may have been written and executed, only the answer is missing."""
        return isinstance(exc, self._timeout_error | TimeoutError)

    def send(self, batches: list[Batch]) -> None:
        client = self._connect()
        try:
            if len(batches) == 1:
                client.xadd(self.stream, batches[0].entry())  # type: ignore[arg-type]
                return
            pipe = client.pipeline(transaction=False)
            for batch in batches:
                pipe.xadd(self.stream, batch.entry())  # type: ignore[arg-type]
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


async def _getaddrinfo_inline(host: Any, port: Any, *, family: int = 0, type: int = 0,
                              proto: int = 0, flags: int = 0) -> list[Any]:
    """``loop.getaddrinfo`` without the default executor: asyncio resolves host names in a
    thread pool, which cannot start during interpreter shutdown (a short script's last
    send). The sink's own loop may block on a lookup: nothing else runs on it."""
    return socket.getaddrinfo(host, port, family, type, proto, flags)


class _LoopThread:
    """An event loop in a daemon thread of its own, which a sink runs coroutines on.

    The listener thread stays synchronous and waits for each coroutine with a timeout (a
    hung database cannot hold it, or ``close()``, past the send budget). Started when the
    sink is prepared, never lazily: no thread can start during interpreter shutdown, when a
    short script's last records are sent; for the same reason the loop resolves host names
    inline. A daemon, so it never holds the interpreter's exit.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.getaddrinfo = _getaddrinfo_inline  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coro`` on the loop; its result, its exception, or ``TimeoutError`` (cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the store within {timeout:.1f}s") from None

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop's thread, soon; does not wait. Never raises."""
        with contextlib.suppress(Exception):
            self._loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the loop and close it; never raises."""
        with contextlib.suppress(Exception):
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()


class StoreSink:
    """Writes straight to a ``store.Store`` (no Redis): SQLite embedded, or PostgreSQL.

    Rows go through ``store.store_rows``, the worker's own path: idempotent, bad rows
    isolated by bisection and counted in ``rejected`` (at once: there is no dead-letter
    stream to retry them from, and pauses would outlast the send's budget). The store runs
    on the sink's own event loop thread (``_LoopThread``), which alone touches its
    connection; the listener waits at most ``timeout`` per send.
    """

    def __init__(self, url: str, *, schema: str | None = None, timeout: float = 5.0,
                 signing_key: SigningKey | None = None) -> None:
        self.url = url
        self.signing_key = signing_key
        self.schema = schema
        self.timeout = timeout
        self.rejected = 0
        self._sqlite = is_sqlite(url)
        self._store: Store | None = None
        self._loop: _LoopThread | None = None
        self._closed = False
        self._connected = False
        self._connected_for_send = False

    def prepare(self) -> None:
        """Start the loop thread, import the store's modules, build it; SQLite opens now.

        A local file costs nothing to open, and opening it early surfaces a bad path at once.
        PostgreSQL connects on the first send (a handler built while it is down works).
        Called once, when the handler is built; a failure after the thread started (a bad
        path) leaves the sink to retry building the store on each send, without a new thread.
        """
        if self._loop is None:
            self._loop = _LoopThread(f"activity-store-{id(self):x}")
        # imported now, with SQLAlchemy and the driver, never at a first send during shutdown
        from . import rows, store

        self._rows_from_batch = rows.rows_from_batch
        self._store_rows = store.store_rows
        self._store = store.make_store(self.url, schema=self.schema, create=self._sqlite)
        if self._sqlite:
            self._loop.run(self._store.connect(), self.timeout)
            self._connected = True

    def send(self, batches: list[Batch]) -> None:
        if self._closed or self._loop is None:
            raise StoreUnavailableError("the store sink is closed or was never prepared")
        if self._store is None:
            self.prepare()  # the loop thread exists: nothing new is started
        assert self._store is not None
        loop, store = self._loop, self._store
        rows: list[Row] = []
        rejected = 0
        for batch in batches:
            # a batch replayed from the spool has only its entry: sealed_rows reads its tag
            batch_rows, batch_rejected = (
                self._rows_from_batch(batch) if batch.auth is None and batch.records is not None
                else sealed_rows(batch, self.signing_key))
            rows += batch_rows
            rejected += batch_rejected
        self._connected_for_send = False
        try:
            if not self._connected:  # failing here is a plain failure: nothing was sent
                loop.run(store.connect(), self.timeout)
                self._connected = True
            self._connected_for_send = True
            stored = loop.run(self._store_rows(store, rows, attempts=1, pause=0.0), self.timeout)
        except Exception:
            loop.call(store.abort)  # on the loop's thread, which owns the connection
            self._connected = False
            raise
        for refused in stored.rejected:
            reporter.report("reject", f"the store refused record {rows[refused.index]['id']}",
                            refused.error)
        self.rejected += rejected + len(stored.rejected)  # counted once the send succeeded

    def unconfirmed(self, exc: BaseException) -> bool:
        """No answer in time, or PostgreSQL's connection lost mid-transaction: the commit
        may have happened (a SQLite write either committed or raised)."""
        if not self._connected_for_send:
            return False
        if isinstance(exc, TimeoutError):
            return True
        return not self._sqlite and isinstance(exc, ConnectionError | OSError)

    def close(self) -> None:
        """Close the store and stop the loop; never raises. Later sends fail."""
        self._closed = True
        store, loop = self._store, self._loop
        self._store = self._loop = None
        try:
            if store is not None and loop is not None:
                loop.run(store.close(), min(self.timeout, 5.0))
        except Exception as exc:  # closing must never raise
            reporter.report("sink-close", "could not close the store", exc)
            if store is not None and loop is not None:
                loop.call(store.abort)
        finally:
            if loop is not None:
                loop.stop()


def make_sink(
    redis_url: str | None, stream: str, database_url: str, schema: str | None,
    *, socket_timeout: float = 5.0, signing_key: SigningKey | None = None,
) -> Sink:
    """Redis when configured; otherwise the database itself (SQLite embedded, or PostgreSQL),
    whose rows are sealed with ``signing_key`` when there is one."""
    if redis_url:
        return RedisStreamSink(redis_url, stream, socket_timeout=socket_timeout)
    return StoreSink(database_url, schema=schema, timeout=socket_timeout, signing_key=signing_key)


def sealed_rows(batch: Batch, key: SigningKey | None) -> tuple[list[Row], int]:
    """The rows of a batch, each signed one's rows with their place in the chain and their
    seal (the handler's direct mode, which builds rows itself; a batch replayed from the
    spool is read from its entry). (rows, records that could not be rows)."""
    from .rows import rows_from_batch
    from .signing import check_entry, seal

    auth = check_entry(batch.entry(), None)
    if auth is None:
        return rows_from_batch(batch)
    return rows_from_batch(batch, lambda row, position: seal(row, key, auth, position))
