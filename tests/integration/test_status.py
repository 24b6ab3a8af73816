"""``status`` against the real Redis and PostgreSQL: healthy and unhealthy pipelines, exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis

from activity_logging.cli import main
from activity_logging.config import DEFAULT_HEARTBEAT_TTL, dead_stream_for, heartbeat_key
from activity_logging.db import create_async_engine_for
from activity_logging.snapshot import queued_from_record
from activity_logging.status import gather_status, recent_sequence_gaps, render_status
from activity_logging.wire import WireEncoder
from tests.crud_rows import make_rows, seed
from tests.servers import private_redis

pytestmark = pytest.mark.integration

GROUP = "activity_log_workers"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _beat(client: redis.Redis, stream: str, consumer: str, *, age: float = 0.0,
          started: float | None = None, **counters: int) -> None:
    payload = {"consumer": consumer, "host": "h1", "pid": 4242, "ts": time.time() - age,
               "started": time.time() if started is None else started,
               "counters": {"stored": 7, **counters}}
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

    client.xadd(dead_stream_for(redis_stream), {"reason": "bad record"})  # no longer read
    client.close()
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.healthy and status.dead_letters == 0

    conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
    try:
        for age in ("3 days", "1 hour"):
            await conn.execute(
                "INSERT INTO activity_log_dead_letters (dead_at, reason, source_stream, "
                "source_id, position, attempts, record_bytes, record_sha256) VALUES "
                f"(now() - interval '{age}', 'malformed', $1, $2, 0, 1, 2, 'x')", redis_stream, age)
            status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
            if age == "3 days":  # an old one: a warning until it is purged
                assert status.healthy and status.dead_letters == 1
                assert any("none in the last 24 h" in w for w in status.warnings)
    finally:
        await conn.close()
    assert (status.dead_letters, status.dead_letters_last_24h) == (2, 1)
    assert len(status.problems) == 1
    assert "1 dead letter(s) in the last 24 h (2 in all)" in status.problems[0]
    assert "dead letters:     2  (last 24 h: 1" in render_status(status)


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


@pytest.mark.anyio
async def test_entries_a_worker_found_trimmed_while_pending_are_a_problem(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    _beat(client, redis_stream, "w1", entries_vanished=4)
    client.close()
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert not status.healthy
    assert any("4 entries deleted from the stream while pending" in p for p in status.problems)


# --- loss in transit, from the stream --------------------------------------------------------


def _read(client: redis.Redis, stream: str, consumer: str, count: int) -> list[bytes]:
    """Deliver up to ``count`` new entries to ``consumer``; their ids."""
    got: Any = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in got[0][1]] if got else []


def _store(client: redis.Redis, stream: str, ids: list[bytes]) -> None:
    """What the worker does once entries are stored: XACK and XDEL them."""
    client.xack(stream, GROUP, *ids)
    client.xdel(stream, *ids)


def _consume(client: redis.Redis, stream: str, consumer: str, count: int) -> None:
    _store(client, stream, _read(client, stream, consumer, count))


@pytest.mark.anyio
async def test_entries_trimmed_before_the_group_read_them_are_lost_in_transit(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    for fields in _entries(5, 3):
        client.xadd(redis_stream, fields)  # type: ignore[arg-type]
    _consume(client, redis_stream, "c1", 2)
    assert client.xtrim(redis_stream, maxlen=0, approximate=False) == 3
    _beat(client, redis_stream, "c1")
    client.close()

    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.stream_entries_lost == 3
    assert (status.lost_in_transit, status.lost_in_transit_unit) == (3, "entries")
    assert len(status.problems) == 1, status.problems
    assert status.problems[0].startswith("the stream lost 3 entries before consumer group")
    assert (status.entries_added, status.entries_read, status.lag) == (5, 2, 3)


@pytest.mark.anyio
async def test_xdel_of_entries_nobody_read_is_unhealthy(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    ids = [client.xadd(redis_stream, fields) for fields in _entries(5, 1)]  # type: ignore[arg-type]
    _consume(client, redis_stream, "c1", 1)
    client.xdel(redis_stream, ids[3])
    _beat(client, redis_stream, "c1")
    client.close()

    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.lag is None  # Redis cannot count past a deletion ahead of the group
    assert len(status.problems) == 1, status.problems
    assert "deleted from" in status.problems[0] and "before consumer group" in status.problems[0]


@pytest.mark.anyio
async def test_two_workers_deleting_what_they_stored_out_of_order_is_no_loss(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    for fields in _entries(10, 1):
        client.xadd(redis_stream, fields)  # type: ignore[arg-type]
    first = _read(client, redis_stream, "c1", 3)
    _consume(client, redis_stream, "c2", 3)  # c2 stores and deletes before c1 does
    _beat(client, redis_stream, "c1")
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.healthy, status.problems
    assert status.lag is None and status.undelivered == 4 and status.pending == 3

    _store(client, redis_stream, first)
    _consume(client, redis_stream, "c1", 10)
    client.close()
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.healthy, status.problems
    assert (status.stream_entries_lost, status.lost_in_transit) == (0, 0)
    assert (status.stream_length, status.lag, status.entries_read) == (0, 0, 10)


@pytest.mark.anyio
async def test_a_worker_that_recreated_its_group_is_reported(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    client = _client(redis_url)
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    _beat(client, redis_stream, "w1", group_recreated=2)
    client.close()
    status = await gather_status(pg_url, redis_url, schema=pg_schema, stream=redis_stream)
    assert status.group_recreated == 2
    assert any("worker w1 recreated consumer group" in w and "lost the stream" in w
               for w in status.warnings), status.warnings


@pytest.mark.anyio
async def test_redis_restarted_under_a_live_worker_without_aof_is_reported(
    pg_url: str, pg_schema: str
) -> None:
    await seed(pg_url, [], schema=pg_schema)
    with private_redis(appendonly=False) as server:
        client = _client(server.url)
        client.xgroup_create("activity_log_stream", GROUP, id="0", mkstream=True)
        _beat(client, "activity_log_stream", "w1", started=time.time() - 3600)
        client.close()
        status = await gather_status(pg_url, server.url, schema=pg_schema)
    assert status.redis_run_id and status.redis_uptime_seconds is not None
    assert status.healthy, status.problems
    assert any(w.startswith("Redis restarted") and "after worker w1 started" in w
               for w in status.warnings), status.warnings


# --- loss in transit, from the stored sequence numbers ---------------------------------------

MINUTE = timedelta(minutes=1)


def _gap_rows(now: datetime) -> list[dict[str, Any]]:
    """Five producers around the one-hour window; 4 records lost inside what it can vouch for."""
    rows = make_rows(27, start=now - 40 * MINUTE, step=MINUTE, producer_id="lossy",
                     skip_seqs=(10, 11, 20))
    dup = make_rows(5, start=now - 30 * MINUTE, step=MINUTE, producer_id="dup", skip_seqs=(4,))
    rows += [*dup, {**dup[2], "id": uuid.uuid4()}]  # seq 3 twice does not hide seq 4
    # seq 9 was created a moment ago: 6..8 may still be on their way, not lost
    rows += make_rows(5, start=now - 20 * MINUTE, step=MINUTE, producer_id="inflight")
    rows += make_rows(1, start=now - timedelta(seconds=1), producer_id="inflight", first_seq=9)
    # seq 3 was created just before the window, 1 and 2 just inside it: not a gap
    second = timedelta(seconds=1)
    rows += make_rows(2, start=now - 3580 * second, step=second, producer_id="edge")
    rows += make_rows(1, start=now - 3630 * second, producer_id="edge", first_seq=3)
    rows += make_rows(3, start=now - 30 * MINUTE, step=MINUTE, producer_id="edge", first_seq=4)
    # older than the window: verify's business
    rows += make_rows(5, start=now - 3 * 60 * MINUTE, step=MINUTE, producer_id="old",
                      skip_seqs=(2,))
    return rows


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(database url, schema) of an empty store: the shared PostgreSQL or an embedded SQLite."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'activity.db'}", None
    return request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")


@pytest.mark.anyio
async def test_sequence_gaps_in_the_last_hour_are_records_lost_in_transit(
    store: tuple[str, str | None],
) -> None:
    url, schema = store
    await seed(url, _gap_rows(datetime.now(UTC)), schema=schema)
    status = await gather_status(url, schema=schema)
    assert status.recent_sequence is not None
    assert (status.recent_sequence.missing, status.recent_sequence.gap_producers,
            status.recent_sequence.producers, status.recent_sequence.capped) == (4, 2, 4, False)
    assert status.problems == [
        "4 records missing in transit from 2 producers in the last hour: "
        "run `activity-logging verify`"]
    assert (status.lost_in_transit, status.lost_in_transit_unit) == (4, "records")
    assert "lost in transit:  4 records" in render_status(status)


@pytest.mark.anyio
async def test_sequence_check_reads_at_most_the_newest_rows(pg_url: str, pg_schema: str) -> None:
    now = datetime.now(UTC)
    await seed(pg_url, make_rows(30, start=now - 40 * MINUTE, step=MINUTE, producer_id="p",
                                 skip_seqs=(3,)), schema=pg_schema)
    engine = create_async_engine_for(pg_url, schema=pg_schema)
    try:
        async with engine.connect() as conn:
            newest = await recent_sequence_gaps(conn, now=now, settled_before=now, max_rows=12)
            everything = await recent_sequence_gaps(conn, now=now, settled_before=now)
    finally:
        await engine.dispose()
    assert (newest.rows, newest.capped, newest.missing) == (12, True, 0)
    assert newest.window_seconds < everything.window_seconds == 3600
    assert (everything.rows, everything.capped, everything.missing) == (30, False, 1)
