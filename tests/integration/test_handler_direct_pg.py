"""Direct mode: no Redis configured, DATABASE_URL is PostgreSQL — the handler writes rows itself."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from activity_logging.db import init_db
from activity_logging.handler import ActivityHandler

pytestmark = pytest.mark.integration


def test_direct_postgres_mode_stores_every_field(pg_url: str, pg_schema: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    asyncio.run(init_db(pg_url, schema=pg_schema))
    handler = ActivityHandler(database_url=pg_url, schema=pg_schema, batch_size=300)
    assert handler.redis_url is None
    log = logging.getLogger("activity.direct")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    for i in range(1000):
        log.warning("lead_created", extra={"actor_type": "user", "actor_id": f"u{i % 3}",
                                           "target_type": "lead", "target_id": f"l{i}",
                                           "changes": {"stage": {"old": None, "new": "new"}},
                                           "ip_address": "192.0.2.10", "source": "web", "n": i})
    assert handler.flush(60), handler.stats()
    handler.close()
    assert handler.stats()["sent"] == 1000

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
        try:
            return await conn.fetch("SELECT * FROM activity_logs ORDER BY seq")
        finally:
            await conn.close()

    rows = asyncio.run(fetch())
    assert len(rows) == 1000
    assert len({r["id"] for r in rows}) == 1000
    first = rows[0]
    assert isinstance(first["id"], uuid.UUID)
    assert first["timestamp"].tzinfo is not None
    assert abs((datetime.now(UTC) - first["timestamp"]).total_seconds()) < 600
    assert first["ip_address"] == ipaddress.ip_address("192.0.2.10")
    assert first["severity"] == "warning" and first["level"] == logging.WARNING
    assert (first["actor_type"], first["actor_id"], first["target_type"], first["target_id"]) == (
        "user", "u0", "lead", "l0")
    changes = first["changes"]
    metadata = first["metadata"]
    if isinstance(changes, str):  # depends on the connection's jsonb codec
        import json

        changes, metadata = json.loads(changes), json.loads(metadata)
    assert changes == {"stage": {"old": None, "new": "new"}}
    assert metadata == {"source": "web", "n": 0}
    assert [r["seq"] for r in rows] == list(range(1, 1001))
