"""A worker can drain the real Redis stream into the embedded SQLite store (development setups)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from activity_logging.db import init_db
from activity_logging.handler import ActivityHandler
from activity_logging.worker import ActivityWorker

pytestmark = pytest.mark.integration


def test_handler_to_redis_to_worker_into_sqlite(redis_url: str, redis_stream: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    asyncio.run(init_db(url))
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, batch_size=100)
    log = logging.getLogger("activity.sqlite_worker")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    for i in range(1500):
        log.info("agent_login", extra={"actor_type": "agent", "actor_id": f"a{i}", "ip_address": "10.9.8.7"})
    assert handler.flush(20)
    handler.close()
    # deliver the first entries twice: the store keeps one of each
    import redis as redis_mod

    client = redis_mod.Redis.from_url(redis_url)
    for _, fields in client.xrange(redis_stream, count=3):
        client.xadd(redis_stream, fields)
    client.close()

    worker = ActivityWorker(redis_url, url, stream=redis_stream, batch_size=500, max_wait=0.1)
    asyncio.run(worker.run(stop_when_idle=True))
    stats = worker.stats()
    conn = sqlite3.connect(tmp_path / "dev.db")
    total, distinct, ips = conn.execute(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT ip_address) FROM activity_logs").fetchone()
    conn.close()
    assert (total, distinct, ips) == (1500, 1500, 1)
    assert stats["inserted"] == 1500
    assert stats["duplicates_skipped"] == 300
