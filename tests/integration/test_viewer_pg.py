"""The audit viewer on PostgreSQL: pages over asyncpg's types, and a connection that cannot write."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from activity_logging.viewer import create_viewer_app
from tests.crud_rows import make_rows, reference, seed
from tests.html_page import Page

pytestmark = pytest.mark.integration


@pytest.mark.anyio
async def test_pages_and_export_read_postgresql(pg_url: str, pg_schema: str) -> None:
    rows = make_rows(30)
    await seed(pg_url, rows, schema=pg_schema)
    app = create_viewer_app(database_url=pg_url, schema=pg_schema, authorize=lambda r: True)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://viewer.test") as client:
            listing = Page((await client.get("/?actor_type=agent&limit=500")).text)
            history = Page((await client.get("/target?target_type=call&target_id=c1")).text)
            with_ip = next(r for r in rows if r["ip_address"])
            detail = Page((await client.get(f"/activity/{with_ip['id']}")).text)
            export = await client.get("/export.jsonl?request_id=req-1")
    finally:
        await app.state.viewer_store.close()
    assert listing.row_ids() == [r["id"] for r in reference(rows, actor_type="agent")]
    assert history.row_ids() == [r["id"] for r in reference(rows, target_type="call", target_id="c1")]
    assert "10.0.0.1" in detail.text
    got = [uuid.UUID(orjson.loads(line)["id"]) for line in export.text.splitlines()]
    assert got == [r["id"] for r in reference(rows, desc=False, request_id="req-1")]


@pytest.mark.anyio
async def test_the_viewer_connection_is_read_only_and_time_bounded(pg_url: str, pg_schema: str) -> None:
    await seed(pg_url, make_rows(3), schema=pg_schema)
    app = create_viewer_app(database_url=pg_url, schema=pg_schema, authorize=lambda r: True,
                            statement_timeout=7.5)
    engine: Any = app.state.viewer_store.engine
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar_one() == "7500ms"
            assert (await conn.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
            with pytest.raises(DBAPIError, match="read-only transaction"):
                await conn.execute(text("DELETE FROM activity_logs"))
    finally:
        await engine.dispose()
