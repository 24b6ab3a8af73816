"""The issue's snippets through the production path: handler → real Redis → worker → PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import pytest

from activity_logging import ActivityHandler, ActivityWorker
from activity_logging.db import init_db
from tests.unit.test_middleware_store import check_stored_rows, make_snippet_app, run_snippet_requests

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_snippets_reach_postgres_through_redis_with_request_details(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, flush_interval=0.01)
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        await run_snippet_requests(make_snippet_app())
        assert handler.flush(10.0)
        assert handler.stats()["sent"] == 4
    finally:
        handler.close()

    await init_db(pg_url, schema=pg_schema)
    worker = ActivityWorker(redis_url, pg_url, stream=redis_stream, schema=pg_schema,
                            max_wait=0.2)
    await worker.run(stop_when_idle=True)

    conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
    try:
        rows: list[dict[str, Any]] = [dict(r) for r in await conn.fetch("SELECT * FROM activity_logs")]
    finally:
        await conn.close()
    check_stored_rows(rows)
