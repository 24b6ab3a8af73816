"""Shared fixtures: real services (fail under CI when missing), unique names, clean logging state."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from tests.services import PG_URL, REDIS_URL, require_service


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def unique_name() -> str:
    """A name no other test (or run) uses: for streams, key prefixes, schemas."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url() -> str:
    """The shared Redis (``TEST_REDIS_URL``, see tests/services.py); skip or fail when it is down."""
    return require_service("Redis", REDIS_URL)


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
    """The shared PostgreSQL (``TEST_DATABASE_URL``, see tests/services.py); skip or fail when
    it is down."""
    return require_service("PostgreSQL", PG_URL)


@pytest.fixture
def pg_schema(pg_url: str, unique_name: str) -> Iterator[str]:
    """A fresh schema in the shared test database (``pg_url``), dropped afterwards."""
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
