"""loguru into an ActivityHandler in PostgreSQL direct mode: the same mapping as on the embedded store."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from loguru import logger

from activity_logging import ActivityHandler
from activity_logging.db import init_db

pytestmark = pytest.mark.integration


def through_loguru(pg_url: str, schema: str, *messages: tuple[dict[str, Any], str]) -> list[dict[str, Any]]:
    """Log ``(bound fields, message)`` pairs with a real loguru logger; the stored rows, in order."""
    asyncio.run(init_db(pg_url, schema=schema))
    handler = ActivityHandler(database_url=pg_url, schema=schema, direct=True)
    sink_id = logger.add(handler, format=lambda record: "{message}", level="INFO")
    try:
        for fields, message in messages:
            logger.bind(**fields).info(message)
        assert handler.flush(30), handler.stats()
    finally:
        logger.remove(sink_id)

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
        try:
            return await conn.fetch(
                "SELECT activity_type, actor_type, actor_id, target_type, target_id, changes::text,"
                " metadata::text, changes IS NULL AS no_changes FROM activity_logs ORDER BY seq")
        finally:
            await conn.close()

    return [dict(r) for r in asyncio.run(fetch())]


def test_loguru_bound_fields_become_postgres_columns(pg_url: str, pg_schema: str) -> None:
    created, login = through_loguru(pg_url, pg_schema, (
        {"actor_type": "agent", "actor_id": "agent-7", "target_type": "call", "target_id": "c-1",
         "changes": {"status": {"old": None, "new": "ringing"}}, "queue": "sales"}, "call_created",
    ), ({"actor_id": "agent-7"}, "agent_login"))
    assert (created["actor_type"], created["actor_id"], created["target_type"], created["target_id"]) == (
        "agent", "agent-7", "call", "c-1")
    assert created["changes"] == '{"status": {"new": "ringing", "old": null}}'
    assert created["metadata"] == '{"queue": "sales"}'  # not nested under metadata.extra
    assert (login["activity_type"], login["no_changes"], login["metadata"]) == ("agent_login", True, "{}")


def test_loguru_empty_changes_is_no_value_in_postgres(pg_url: str, pg_schema: str) -> None:
    (logout,) = through_loguru(pg_url, pg_schema, ({"changes": {}}, "agent_logout"))
    assert logout["no_changes"] is True
