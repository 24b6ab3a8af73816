"""ActivityWorker against the real Redis and PostgreSQL: nothing lost, nothing stored twice."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from activity_logging import db, partitions, rows, snapshot, store_pg, wire
from activity_logging.config import dead_stream_for, heartbeat_key
from activity_logging.exceptions import StoreUnavailableError
from activity_logging.worker import ActivityWorker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def queued(i: int, **extra: Any) -> snapshot.QueuedRecord:
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    rec.created = 1_790_000_000.123456 + i  # fixed, so the stored timestamp can be checked
    rec.__dict__.update({"actor_id": f"agent-{i}", "target_type": "call", "target_id": f"c{i}",
                         "changes": {"status": [None, "ringing"], "n": i},
                         "ip_address": "2001:db8::1" if i % 2 else "10.0.0.7", **extra})
    return snapshot.queued_from_record(rec)


def entries(count: int, per_entry: int, encoder: wire.WireEncoder | None = None) -> list[dict[str, Any]]:
    enc = encoder or wire.WireEncoder("test-producer")
    return [enc.encode_batch([queued(e * per_entry + j) for j in range(per_entry)])
            for e in range(count)]


def xadd_all(redis_url: str, stream: str, fields: list[dict[str, Any]]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for f in fields:
            pipe.xadd(stream, f)
        pipe.execute()
    finally:
        client.close()


async def counts(pg_url: str, schema: str) -> tuple[int, int]:
    """(rows, distinct ids) in the schema's activity_logs."""
    conn = await db.connect_pg(pg_url, schema=schema)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS d FROM activity_logs")
    finally:
        await conn.close()
    assert row is not None
    return int(row["n"]), int(row["d"])


async def wait_until(condition: Any, seconds: float = 30.0) -> None:
    """Poll ``condition()`` until true; fail (not hang) after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {seconds}s")


def worker_for(redis_url: str, pg_url: str, stream: str, schema: str, **kw: Any) -> ActivityWorker:
    kw.setdefault("max_wait", 0.1)
    return ActivityWorker(redis_url, pg_url, stream=stream, schema=schema, **kw)


async def test_handler_to_worker_stores_every_record_with_every_field(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    from activity_logging.handler import ActivityHandler

    await db.init_db(pg_url, schema=pg_schema)
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, batch_size=200,
                              flush_interval=0.01)
    log = logging.getLogger(f"activity.{pg_schema}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    n = 1500
    try:
        for i in range(n):
            log.warning("call_created", extra={
                "actor_type": "agent", "actor_id": f"a{i}", "target_type": "call",
                "target_id": f"c{i}", "changes": {"status": [None, "ringing"], "i": i},
                "ip_address": "192.0.2.9", "request_id": f"r{i}", "campaign": "spring",
            })
        assert handler.flush(30.0)
    finally:
        log.removeHandler(handler)
        handler.close()
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, batch_size=1000)
    await worker.run(stop_when_idle=True)
    assert await counts(pg_url, pg_schema) == (n, n)
    assert worker.stats()["inserted"] == n
    conn = await db.connect_pg(pg_url, schema=pg_schema)
    try:
        rows = await conn.fetch("SELECT * FROM activity_logs ORDER BY seq")
        types = dict(await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'activity_logs'::regclass AND attnum > 0"))
    finally:
        await conn.close()
    assert types["id"] == "uuid" and types["timestamp"] == "timestamp with time zone"
    assert types["changes"] == "jsonb" and types["ip_address"] == "inet"
    first = rows[0]
    assert isinstance(first["id"], uuid.UUID)
    assert first["timestamp"].utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - first["timestamp"]).total_seconds()) < 600
    assert orjson.loads(first["changes"]) == {"status": {"old": None, "new": "ringing"}, "i": 0}
    assert orjson.loads(first["metadata"]) == {"campaign": "spring"}
    assert first["ip_address"] == ipaddress.ip_address("192.0.2.9")
    assert (first["severity"], first["level"], first["actor_id"], first["request_id"]) == (
        "warning", logging.WARNING, "a0", "r0")
    assert sorted(r["actor_id"] for r in rows) == sorted(f"a{i}" for i in range(n))
    assert redis.Redis.from_url(redis_url).xlen(redis_stream) == 0  # acked entries are deleted


async def test_wire_timestamp_and_ipv6_survive(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    xadd_all(redis_url, redis_stream, entries(1, 2))
    await worker_for(redis_url, pg_url, redis_stream, pg_schema).run(stop_when_idle=True)
    conn = await db.connect_pg(pg_url, schema=pg_schema)
    try:
        rows = await conn.fetch('SELECT "timestamp", ip_address FROM activity_logs ORDER BY seq')
    finally:
        await conn.close()
    assert rows[0]["timestamp"] == datetime.fromtimestamp(1_790_000_000.123456, UTC)
    assert rows[1]["ip_address"] == ipaddress.ip_address("2001:db8::1")


async def test_entries_delivered_twice_are_stored_once(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    batch = entries(20, 50)
    xadd_all(redis_url, redis_stream, batch + batch)  # same records (same ids), two entries each
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, batch_size=300)
    await worker.run(stop_when_idle=True)
    assert await counts(pg_url, pg_schema) == (1000, 1000)
    stats = worker.stats()
    assert (stats["inserted"], stats["duplicates_skipped"], stats["acked"]) == (1000, 1000, 40)


async def test_two_workers_in_parallel_store_each_record_once(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    xadd_all(redis_url, redis_stream, entries(100, 30))
    # The second worker also inserts over two connections at once (writers=2).
    workers = [worker_for(redis_url, pg_url, redis_stream, pg_schema, consumer=f"w{i}",
                          batch_size=120, writers=i + 1) for i in range(2)]
    await asyncio.gather(*(w.run(stop_when_idle=True) for w in workers))
    assert await counts(pg_url, pg_schema) == (3000, 3000)
    assert sum(w.stats()["acked"] for w in workers) == 100
    assert sum(w.stats()["duplicates_skipped"] for w in workers) == 0
    assert all(w.stats()["inserted"] > 0 for w in workers)  # both took a share


async def test_poison_record_is_isolated_and_dead_lettered(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    good = entries(5, 40)
    enc = wire.WireEncoder("poison-producer")
    mixed = enc.encode_batch([queued(1000 + i) for i in range(10)])
    records = orjson.loads(mixed["d"])
    records[4]["seq"] = 2**63  # valid JSON, outside bigint: refused when the row is built
    poison_id = records[4]["id"]
    mixed["d"] = orjson.dumps(records)
    xadd_all(redis_url, redis_stream, [*good[:2], mixed, *good[2:],
                                       {"v": "99", "n": "1", "d": b"[]"}])
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, writers=2)
    await worker.run(stop_when_idle=True)
    assert await counts(pg_url, pg_schema) == (209, 209)
    assert worker.stats()["dead_lettered"] == 2
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(redis_stream) == 0
    assert not client.exists(dead_stream_for(redis_stream))  # dead letters go to the table
    conn = await db.connect_pg(pg_url, schema=pg_schema)
    try:
        dead = await conn.fetch("SELECT * FROM activity_log_dead_letters")
    finally:
        await conn.close()
    by_kind = {d["reason"]: d for d in dead}
    poison = by_kind["malformed"]
    assert orjson.loads(poison["record"])["id"] == poison_id == poison["record_id"]
    assert poison["attempts"] == 1 and poison["position"] == 4 and "bigint" in poison["error"]
    assert poison["source_id"]
    undecodable = by_kind["undecodable"]
    assert "EntryFormatError" in undecodable["error"]
    assert orjson.loads(undecodable["record"])["v"] == "99"


async def test_entries_left_by_a_dead_consumer_are_claimed(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    xadd_all(redis_url, redis_stream, entries(10, 20))
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(redis_stream, "activity_log_workers", id="0", mkstream=True)
    taken = client.xreadgroup("activity_log_workers", "dead-one", {redis_stream: ">"}, count=6)
    assert len(taken[0][1]) == 6  # read and never acknowledged: its consumer "died"
    await asyncio.sleep(0.3)
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, claim_idle=0.2)
    await worker.run(stop_when_idle=True)
    assert await counts(pg_url, pg_schema) == (200, 200)
    assert worker.stats()["claimed"] == 6
    assert client.xpending(redis_stream, "activity_log_workers")["pending"] == 0


async def test_pending_entries_trimmed_before_they_were_stored_are_counted_as_vanished(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    xadd_all(redis_url, redis_stream, entries(10, 20))
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(redis_stream, "activity_log_workers", id="0", mkstream=True)
    client.xreadgroup("activity_log_workers", "dead-one", {redis_stream: ">"}, count=4)
    client.xtrim(redis_stream, maxlen=6, approximate=False)  # an operator trims the pending four
    await asyncio.sleep(0.3)
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, claim_idle=0.2)
    await worker.run(stop_when_idle=True)
    assert await counts(pg_url, pg_schema) == (120, 120)  # the six entries left in the stream
    assert worker.stats()["entries_vanished"] == 4  # not silent: status reports it
    assert client.xpending(redis_stream, "activity_log_workers")["pending"] == 0
    client.close()


async def test_vanished_group_is_recreated(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    client = redis.Redis.from_url(redis_url)
    xadd_all(redis_url, redis_stream, entries(3, 10))
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.stats()["acked"] >= 3)
        client.xgroup_destroy(redis_stream, "activity_log_workers")  # as after a restart
        xadd_all(redis_url, redis_stream, entries(3, 10, wire.WireEncoder("second")))
        await wait_until(lambda: worker.stats()["acked"] >= 6)
    finally:
        worker.request_stop()
        await task
    assert worker.stats()["group_recreated"] >= 1
    assert await counts(pg_url, pg_schema) == (60, 60)


async def test_heartbeat_is_written_and_removed_on_stop(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    client = redis.Redis.from_url(redis_url)
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, consumer="hb",
                        heartbeat_interval=0.1)
    task = asyncio.create_task(worker.run())
    key = heartbeat_key(redis_stream, "hb")
    try:
        await wait_until(lambda: client.get(key) is not None)
        beat = orjson.loads(client.get(key))
        assert {"consumer", "host", "pid", "ts", "counters"} <= set(beat)
        assert beat["consumer"] == "hb" and isinstance(beat["ts"], float)
        assert 0 < client.ttl(key) <= 15
    finally:
        worker.request_stop()
        await task
    assert client.get(key) is None


async def test_partitioned_table_takes_rows_from_any_month(
    pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema, partitioned=True, months_ahead=2)
    conn = await db.connect_pg(pg_url, schema=pg_schema)
    try:
        assert await partitions.is_partitioned(conn)
        now = datetime.now(UTC)
        names = {r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'activity_logs'::regclass")}
        assert partitions.partition_name("activity_logs", now.year, now.month) in names
        assert len(names) == 3
        assert await partitions.ensure_partitions(conn, months_ahead=2) == []  # idempotent
        later = await partitions.ensure_partitions(conn, months_ahead=4)
        assert len(later) == 2
    finally:
        await conn.close()
    store = store_pg.PostgresStore(pg_url, schema=pg_schema)
    await store.connect()
    try:
        built = [rows.build_activity(w, m) for m, ws in
                 [wire.decode_entry(e) for e in entries(1, 3)] for w in ws]
        built[0]["timestamp"] = datetime(2019, 12, 31, 23, 59, tzinfo=UTC)  # a long-gone month
        assert await store.insert_activities(built) == 3
        assert await store.insert_activities(built) == 0
    finally:
        await store.close()
    await db.init_db(pg_url, schema=pg_schema, partitioned=True)  # re-running is harmless
    assert await counts(pg_url, pg_schema) == (3, 3)


async def test_init_db_is_idempotent_and_engine_uses_the_schema(pg_url: str, pg_schema: str) -> None:
    from sqlalchemy import text

    for _ in range(2):
        await db.init_db(pg_url.replace("postgresql://", "postgres://"), schema=pg_schema)
    engine = db.create_async_engine_for(pg_url, schema=pg_schema)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW search_path"))).scalar() == pg_schema
            assert (await conn.execute(text("SELECT count(*) FROM activity_logs"))).scalar() == 0
    finally:
        await engine.dispose()


async def test_unreachable_database_names_the_redacted_url() -> None:
    from tests.servers import free_port

    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/test"
    with pytest.raises(StoreUnavailableError) as info:
        await db.connect_pg(url)
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)


async def test_worker_fills_a_partitioned_table_creating_past_months(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    await db.init_db(pg_url, schema=pg_schema, partitioned=True, months_ahead=1)
    xadd_all(redis_url, redis_stream, entries(4, 25))  # created in September 2026
    worker = worker_for(redis_url, pg_url, redis_stream, pg_schema, months_ahead=2)
    await worker.run(stop_when_idle=True)
    assert await counts(pg_url, pg_schema) == (100, 100)
    assert worker.stats()["partitions_created"] == 1  # the third month ahead, at start
    conn = await db.connect_pg(pg_url, schema=pg_schema)
    try:
        month = datetime.fromtimestamp(1_790_000_000, UTC)
        name = partitions.partition_name("activity_logs", month.year, month.month)
        assert await conn.fetchval("SELECT count(*) FROM " + name) == 100
    finally:
        await conn.close()
