"""ActivityContextMiddleware on the lifespan scope: shutdown messages wait for the flush.

The server side is played by ``LifespanServer`` (what uvicorn's ``LifespanOn`` does: queue
``lifespan.startup``, then ``lifespan.shutdown``); the handlers are real ``ActivityHandler``s on
an embedded SQLite store with a long ``flush_interval``, so a record is in the store early
only when something flushed it. The real-process version (uvicorn, SIGTERM, Redis) is
tests/faults/test_server_shutdown.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from activity_logging import ActivityContextMiddleware, ActivityHandler, middleware_lifespan
from activity_logging import handler_lifecycle as handler_module
from activity_logging._internal import RateLimitedReporter
from activity_logging.exceptions import ConfigurationError
from tests.ledger import keys_from_sqlite, ledger_of

ASGIApp = Callable[..., Any]
LONG_FLUSH_INTERVAL = 60.0  # far longer than any test: only a flush ships a record early


class LifespanServer:
    """Drives one lifespan like an ASGI server; records what the app sent, and when."""

    def __init__(self, on_startup: Callable[[], None] = lambda: None,
                 on_shutdown_sent: Callable[[str], None] = lambda kind: None) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.on_startup = on_startup
        self.on_shutdown_sent = on_shutdown_sent

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        self.sent.append(kind)
        if kind == "lifespan.startup.complete":
            self.on_startup()  # the "requests" of the server's life
            await self.inbox.put({"type": "lifespan.shutdown"})
        elif kind.startswith("lifespan.shutdown."):
            self.on_shutdown_sent(kind)

    async def run(self, app: ASGIApp) -> None:
        await self.inbox.put({"type": "lifespan.startup"})
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        await asyncio.wait_for(app(scope, self.receive, self.send), timeout=60)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """An embedded store with an ActivityHandler on the "activity" logger that lingers."""
    path = tmp_path / "lifespan.db"
    handler = ActivityHandler(database_url=f"sqlite:///{path}",
                              flush_interval=LONG_FLUSH_INTERVAL)
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield str(path)
    handler.close()


@pytest.fixture
def fresh_reporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifespan's reporter without the rate limit state of earlier tests."""
    monkeypatch.setattr(middleware_lifespan, "reporter", RateLimitedReporter())


def log_record(tag: str, n: int | str) -> None:
    logging.getLogger("activity").info("lifespan_test", extra={"target_id": f"{tag}-{n}"})


def log_records(tag: str, count: int) -> None:
    for n in range(count):
        log_record(tag, n)


def framework_app(kind: str, tag: str, *, fail_shutdown: bool = False) -> ASGIApp:
    """A FastAPI or Starlette app as users build it: lifespan + ``app.add_middleware``."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        log_record(tag, "shutdown")
        if fail_shutdown:
            raise RuntimeError("shutdown step failed")

    app: Starlette = FastAPI(lifespan=lifespan) if kind == "fastapi" else Starlette(lifespan=lifespan)
    app.add_middleware(ActivityContextMiddleware)
    return app


@pytest.mark.parametrize("kind", ["fastapi", "starlette"])
def test_shutdown_complete_reaches_the_server_only_after_every_record_is_stored(
    kind: str, store: str, unique_name: str
) -> None:
    tag = unique_name
    at_shutdown: list[Counter[str]] = []
    server = LifespanServer(
        on_startup=lambda: log_records(tag, 5),
        on_shutdown_sent=lambda kind: at_shutdown.append(keys_from_sqlite(store, tag)),
    )
    asyncio.run(server.run(framework_app(kind, tag)))
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    ledger_of(6, at_shutdown[0]).assert_balanced()  # stored before the server heard "complete"


def test_shutdown_failed_is_forwarded_after_the_flush_and_the_error_propagates(
    store: str, unique_name: str
) -> None:
    tag = unique_name
    at_shutdown: list[Counter[str]] = []
    server = LifespanServer(
        on_shutdown_sent=lambda kind: at_shutdown.append(keys_from_sqlite(store, tag)))
    with pytest.raises(RuntimeError, match="shutdown step failed"):
        asyncio.run(server.run(framework_app("starlette", tag, fail_shutdown=True)))
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    ledger_of(1, at_shutdown[0]).assert_balanced()


def test_app_refusing_the_lifespan_scope_gets_a_minimal_lifespan_that_flushes(
    store: str, unique_name: str
) -> None:
    tag = unique_name

    async def no_lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        # what Django's ASGIHandler does with a lifespan scope
        raise ValueError(f"can only handle HTTP, not {scope['type']}")

    at_shutdown: list[Counter[str]] = []
    server = LifespanServer(
        on_startup=lambda: log_records(tag, 3),
        on_shutdown_sent=lambda kind: at_shutdown.append(keys_from_sqlite(store, tag)),
    )
    asyncio.run(server.run(ActivityContextMiddleware(no_lifespan_app)))
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    ledger_of(3, at_shutdown[0]).assert_balanced()


def test_lifespan_that_fails_after_reading_its_first_message_propagates_unchanged() -> None:
    error = RuntimeError("database unreachable at startup")

    async def failing_lifespan(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise error

    server = LifespanServer()
    with pytest.raises(RuntimeError) as raised:
        asyncio.run(server.run(ActivityContextMiddleware(failing_lifespan)))
    assert raised.value is error
    assert server.sent == []  # the middleware did not answer in the app's place


def test_lifespan_raising_at_shutdown_without_a_message_is_flushed_before_it_propagates(
    store: str, unique_name: str
) -> None:
    tag = unique_name

    async def lifespan_crashing_at_shutdown(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        log_record(tag, "shutdown")
        raise RuntimeError("cleanup failed")  # no lifespan.shutdown.failed: a raw ASGI app

    server = LifespanServer(on_startup=lambda: log_records(tag, 2))
    with pytest.raises(RuntimeError, match="cleanup failed"):
        asyncio.run(server.run(ActivityContextMiddleware(lifespan_crashing_at_shutdown)))
    # the linger is far longer than this test: only the middleware's flush stored them
    ledger_of(3, keys_from_sqlite(store, tag)).assert_balanced()


def test_shutdown_flush_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_ran = threading.Event()
    seen: list[bool] = []

    def flush_until_the_loop_runs(timeout: float | None = None) -> bool:
        # set by a task on the event loop: only reachable if the loop is not blocked by us
        seen.append(loop_ran.wait(30))
        return True

    monkeypatch.setattr(handler_module, "flush_handlers", flush_until_the_loop_runs)

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()

        async def tick() -> None:
            await asyncio.sleep(0)
            loop_ran.set()

        task = asyncio.ensure_future(tick())
        await send({"type": "lifespan.shutdown.complete"})
        await task

    server = LifespanServer()
    asyncio.run(server.run(ActivityContextMiddleware(lifespan_app)))
    assert seen == [True]
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize("option", [None, 0.0, 1.5])
def test_shutdown_flush_timeout_is_passed_to_flush_handlers(
    option: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts: list[float | None] = []

    def record_timeout(timeout: float | None = None) -> bool:
        timeouts.append(timeout)
        return True

    monkeypatch.setattr(handler_module, "flush_handlers", record_timeout)
    app = Starlette()
    app.add_middleware(ActivityContextMiddleware, shutdown_flush_timeout=option)
    asyncio.run(LifespanServer().run(app))
    assert timeouts == [option]


def test_failing_shutdown_flush_is_reported_and_the_shutdown_goes_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_reporter: None
) -> None:
    def broken(timeout: float | None = None) -> bool:
        raise OSError("no thread for you")

    monkeypatch.setattr(handler_module, "flush_handlers", broken)
    server = LifespanServer()
    asyncio.run(server.run(ActivityContextMiddleware(Starlette())))
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "could not flush the activity handlers at shutdown" in capsys.readouterr().err


def test_unfinished_shutdown_flush_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_reporter: None
) -> None:
    monkeypatch.setattr(handler_module, "flush_handlers", lambda timeout=None: False)
    server = LifespanServer()
    asyncio.run(server.run(ActivityContextMiddleware(Starlette())))
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "did not finish flushing" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_negative_shutdown_flush_timeout_is_refused(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="shutdown_flush_timeout"):
        ActivityContextMiddleware(Starlette(), shutdown_flush_timeout=bad)


def test_other_scopes_pass_through_untouched() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    scope = {"type": "custom.protocol"}
    asyncio.run(ActivityContextMiddleware(app)(scope, receive, send))
    assert seen == [(scope, receive, send)]
