"""Direct mode: no Redis configured, DATABASE_URL is PostgreSQL — the handler writes rows itself."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path

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


def test_a_short_script_in_direct_postgres_mode_stores_its_record_at_exit(
    pg_url: str, pg_schema: str, tmp_path: Path
) -> None:
    """A script that logs once and exits: the first send happens inside logging.shutdown,
    when no thread or executor can start. A host name (not an address) needs a lookup."""
    asyncio.run(init_db(pg_url, schema=pg_schema))
    by_name = pg_url.replace("127.0.0.1", "localhost")
    script = tmp_path / "once.py"
    script.write_text(textwrap.dedent(f"""
        import logging
        from activity_logging import ActivityHandler
        handler = ActivityHandler(database_url={by_name!r}, schema={pg_schema!r}, direct=True)
        log = logging.getLogger("activity.once")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        log.info("short_script", extra={{"actor_id": "once"}})
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
        try:
            return list(await conn.fetch("SELECT actor_id FROM activity_logs"))
        finally:
            await conn.close()

    assert [r["actor_id"] for r in asyncio.run(fetch())] == ["once"], proc.stderr
