"""``status`` against the real Redis and PostgreSQL: healthy and unhealthy pipelines, exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson
import pytest
import redis

from activity_logging.cli import main
from activity_logging.config import DEFAULT_HEARTBEAT_TTL, dead_stream_for, heartbeat_key
from activity_logging.record import WireEncoder, queued_from_record
from activity_logging.status import gather_status
from tests.integration.test_crud_support import seed
from tests.servers import private_redis

pytestmark = pytest.mark.integration

GROUP = "activity_log_workers"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _beat(client: redis.Redis, stream: str, consumer: str, *, age: float = 0.0) -> None:
    payload = {"consumer": consumer, "host": "h1", "pid": 4242, "ts": time.time() - age,
               "counters": {"stored": 7}}
    client.set(heartbeat_key(stream, consumer), orjson.dumps(payload),
               ex=int(DEFAULT_HEARTBEAT_TTL) + 60)


def _entries(n_entries: int, per_entry: int) -> list[dict[str, Any]]:
    encoder = WireEncoder("status-test")
    out = []
    for e in range(n_entries):
        items = []
        for i in range(per_entry):
            rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None,
                                    None)
            rec.__dict__.update({"actor_id": f"a{i}", "target_id": f"c{e}-{i}"})
            items.append(queued_from_record(rec))
        out.append(encoder.encode_batch(items))
    return out


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.anyio
async def test_healthy_with_a_running_worker(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from activity_logging.worker import ActivityWorker

    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    for fields in _entries(3, 10):
        client.xadd(redis_stream, fields)  # type: ignore[arg-type]
    worker = ActivityWorker(redis_url, pg_url, stream=redis_stream, schema=pg_schema,
                            consumer="w-status", heartbeat_interval=0.2, max_wait=0.2)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            status = await gather_status(pg_url, redis_url, schema=pg_schema,
                                         stream=redis_stream, max_lag=60)
            # The worker runs on this event loop, between the checks: wait for a consistent
            # picture (group created, everything stored and acknowledged).
            if status.healthy and status.rows_last_24h == 30 and status.pending == 0:
                break
            await asyncio.sleep(0.2)
        assert status is not None
        assert status.problems == [], str(status.to_dict())
        assert status.healthy
        assert status.rows_last_24h == 30
        assert [w.consumer for w in status.workers] == ["w-status"]
        assert status.dead_letters == 0
        assert status.group_exists
        assert status.newest_activity is not None
        code, report = await asyncio.to_thread(
            _cli, ["status", "--redis-url", redis_url, "--stream", redis_stream,
                   "--database-url", pg_url, "--schema", pg_schema], capsys)
        assert code == 0
        assert report["healthy"] is True
        assert report["live_workers"] == 1
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        client.close()


@pytest.mark.anyio
async def test_no_worker_and_old_waiting_records_are_unhealthy(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    hour_ago_ms = int(time.time() * 1000) - 3_600_000
    fields = _entries(1, 2)[0]
    client.xadd(redis_stream, fields, id=f"{hour_ago_ms}-0")  # type: ignore[arg-type]
    client.xadd(redis_stream, fields)  # type: ignore[arg-type]
    _beat(client, redis_stream, "dead-worker", age=DEFAULT_HEARTBEAT_TTL + 30)
    client.close()

    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream,
                                 max_lag=300)
    assert not status.healthy
    assert status.undelivered == 2
    assert status.oldest_waiting_seconds is not None
    assert 3590 < status.oldest_waiting_seconds < 4000
    assert [(w.consumer, w.live) for w in status.workers] == [("dead-worker", False)]
    assert any("no live worker" in p for p in status.problems)
    assert any("oldest record waiting" in p for p in status.problems)
    assert status.newest_activity is None
    code, report = await asyncio.to_thread(
        _cli, ["status", "--redis-url", redis_url, "--stream", redis_stream,
               "--database-url", pg_url, "--schema", pg_schema], capsys)
    assert code == 1
    assert report["healthy"] is False


@pytest.mark.anyio
async def test_dead_letters_are_unhealthy_and_pending_is_shown_per_consumer(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    client.xadd(redis_stream, _entries(1, 1)[0])  # type: ignore[arg-type]
    client.xreadgroup(GROUP, "c1", {redis_stream: ">"}, count=10)
    _beat(client, redis_stream, "c1")
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.healthy, status.problems
    assert [(c.name, c.pending) for c in status.consumers] == [("c1", 1)]
    assert status.pending == 1
    assert status.undelivered == 0

    client.xadd(dead_stream_for(redis_stream), {"reason": "bad record"})
    client.close()
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.dead_letters == 1
    assert len(status.problems) == 1
    assert "dead letter" in status.problems[0]


@pytest.mark.anyio
async def test_redis_without_aof_is_a_warning_not_a_failure(
    pg_url: str, pg_schema: str
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    with private_redis(appendonly=False) as server:
        client = _client(server.url)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.xgroup_create("activity_log_stream", GROUP, id="0", mkstream=True)
        _beat(client, "activity_log_stream", "w1")
        client.close()
        status = await gather_status(pg_url, server.url, schema=pg_schema)
    assert status.healthy, status.problems
    assert any("AOF" in w for w in status.warnings)
    assert any("allkeys-lru" in w for w in status.warnings)
