"""Shared fixtures: real services (fail under CI when missing), unique names, clean logging state."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = bool(os.environ.get("CI"))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip locally, fail under CI, when a real service the test needs is not answering."""
    if _port_open(host, port):
        return
    message = f"{name} is not answering on {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI is set: integration tests must run against real services)")
    pytest.skip(message)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def unique_name() -> str:
    """A name no other test (or run) uses: for streams, key prefixes, schemas."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def redis_stream(redis_url: str, unique_name: str) -> Iterator[str]:
    """A unique stream on the shared Redis; its keys are deleted afterwards (never FLUSHALL)."""
    import redis

    stream = f"activity_test:{unique_name}"
    yield stream
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{stream}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def pg_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_URL


@pytest.fixture
def pg_schema(pg_url: str, unique_name: str) -> Iterator[str]:
    """A fresh schema in the shared ``test`` database, dropped afterwards."""
    import asyncio

    import asyncpg

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE SCHEMA "{unique_name}"'))
    yield unique_name
    asyncio.run(run(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE'))


@pytest.fixture(autouse=True)
def _private_spool_directory(tmp_path_factory: pytest.TempPathFactory,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Handlers shipping to Redis spool by default under ~/.local/state: never from tests.

    Each test gets its own directory through ``ACTIVITY_LOG_SPOOL_PATH`` (inherited by the
    processes it starts), so no test adopts another's spool files.
    """
    monkeypatch.setenv("ACTIVITY_LOG_SPOOL_PATH", str(tmp_path_factory.mktemp("spool")))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put the logging module back as the test found it (handlers, levels, propagation)."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers), list(root.filters))
    manager = logging.Logger.manager
    saved_loggers = {
        name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled, list(lg.filters))
        for name, lg in manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    yield
    for handler in root.handlers:
        if handler not in saved_root[1]:
            handler.close()
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    root.filters[:] = saved_root[2]
    for name, lg in list(manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        saved = saved_loggers.get(name)
        for handler in lg.handlers:
            if saved is None or handler not in saved[1]:
                handler.close()
        if saved is None:
            lg.handlers.clear()
            lg.setLevel(logging.NOTSET)
            lg.propagate = True
            lg.disabled = False
            lg.filters.clear()
        else:
            lg.level, lg.handlers[:], lg.propagate, lg.disabled, lg.filters[:] = (
                saved[0], saved[1], saved[2], saved[3], saved[4],
            )
