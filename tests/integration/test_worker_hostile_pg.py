"""Hostile entries against the real Redis and PostgreSQL: refused fast, bounded, dead-lettered.

The measured abuse cases of issue 10 (item 5), each with a ledger: records offered =
stored + dead-lettered (+ refused whole, counted). Dead letters are read back from
``activity_log_dead_letters`` in the test's own schema, and through the CLI.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from activity_logging import db, partitions
from activity_logging.ids import IdFactory
from activity_logging.worker import ActivityWorker
from tests.cli_run import run

pytestmark = [pytest.mark.integration]

IDS = IdFactory()


def record(i: int, *, ts_us: int | None = None, seq: Any = None, **extra: Any) -> dict[str, Any]:
    now_us = int(time.time() * 1_000_000) if ts_us is None else ts_us
    return {"id": IDS.make(now_us, i), "ts": now_us, "lv": 20, "msg": "call_created",
            "lg": "activity", "seq": i + 1 if seq is None else seq,
            "x": {"actor_id": f"a{i}", **extra}}


def entry(records: list[dict[str, Any]], producer: str = "hostile") -> dict[Any, Any]:
    return {"v": "1", "n": str(len(records)), "p": producer, "h": "h", "pid": "1",
            "d": orjson.dumps(records)}


def xadd(redis_url: str, stream: str, *entries: dict[Any, Any]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for fields in entries:
            client.xadd(stream, fields)
    finally:
        client.close()


def drain(redis_url: str, pg_url: str, stream: str, schema: str, **kw: Any) -> ActivityWorker:
    worker = ActivityWorker(redis_url, pg_url, stream=stream, schema=schema, max_wait=0.1, **kw)
    asyncio.run(asyncio.wait_for(worker.run(stop_when_idle=True), 60))
    return worker


async def _fetch(pg_url: str, schema: str, sql: str) -> list[Any]:
    conn = await db.connect_pg(pg_url, schema=schema)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def fetch(pg_url: str, schema: str, sql: str) -> list[Any]:
    return asyncio.run(_fetch(pg_url, schema, sql))


def stored(pg_url: str, schema: str) -> int:
    return int(fetch(pg_url, schema, "SELECT count(*) FROM activity_logs")[0][0])


def dead(pg_url: str, schema: str) -> list[Any]:
    return fetch(pg_url, schema, "SELECT * FROM activity_log_dead_letters ORDER BY id")


def stream_left(redis_url: str, stream: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()


def test_ten_thousand_records_with_seq_2_63_are_dead_lettered_in_one_pass(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    """The measured case: ~45 minutes of retry-and-sleep before. Now refused at build time:
    no insert is tried for them, every one is a dead letter, the good entry is stored."""
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    bad = entry([record(i, seq=2**63) for i in range(10_000)])
    good = entry([record(10_000 + i) for i in range(10)], producer="good")
    xadd(redis_url, redis_stream, bad, good)
    worker = drain(redis_url, pg_url, redis_stream, pg_schema)
    letters = dead(pg_url, pg_schema)
    assert stored(pg_url, pg_schema) == 10
    assert len(letters) == 10_000 and {r["reason"] for r in letters} == {"malformed"}
    assert all(r["attempts"] == 1 and "bigint" in r["error"] for r in letters)
    assert len({(r["source_id"], r["position"]) for r in letters}) == 10_000
    stats = worker.stats()
    assert stats["refused_malformed"] == stats["dead_lettered"] == 10_000
    assert stats["retried"] == 0
    assert stats["read"] == stats["inserted"] + stats["refused_malformed"] == 10_010
    assert stream_left(redis_url, redis_stream) == 0


def test_an_entry_of_200_000_records_is_refused_before_decoding(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    """The measured case: the worker went from 60 MB to 448 MB decoding it. Now it is sized
    up from its fields and refused: the traced peak stays near the entry's own bytes (the
    Redis reply), nowhere near a decode, and the dead letter is an excerpt."""
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    big = entry([record(i) for i in range(200_000)])
    size = len(big["d"])
    assert size > 20_000_000
    xadd(redis_url, redis_stream, big, entry([record(300_000)], producer="after"))
    del big
    tracemalloc.start()
    try:
        worker = drain(redis_url, pg_url, redis_stream, pg_schema)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * size  # a decode alone takes ~20 times the entry
    (letter,) = dead(pg_url, pg_schema)
    assert letter["reason"] == "oversized" and letter["position"] == -1
    assert "200000 records" in letter["error"]
    assert letter["record_bytes"] > size and len(letter["record"]) <= 64 * 1024
    assert len(letter["record_sha256"]) == 64
    assert stored(pg_url, pg_schema) == 1  # the entry after it
    stats = worker.stats()
    assert (stats["refused_oversized"], stats["read"], stats["dead_lettered"]) == (1, 1, 1)


def _partitions(pg_url: str, schema: str) -> set[str]:
    return {r[0] for r in fetch(pg_url, schema, (
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'activity_logs'::regclass"))}


def test_far_dated_records_make_no_partition(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    """The measured cases: a record dated 9999 made a partition that survived cleanup, and
    one 12 KB entry of 121 months made 121 partitions. Out-of-window records are refused
    before the store, so only months inside the window can get a partition."""
    asyncio.run(db.init_db(pg_url, schema=pg_schema, partitioned=True, months_ahead=1))
    before = _partitions(pg_url, pg_schema)
    now_us = int(time.time() * 1_000_000)
    month_us = 30 * 86_400 * 1_000_000
    spread = entry([record(i, ts_us=now_us - 60 * month_us + i * month_us) for i in range(121)])
    assert len(spread["d"]) < 20_000
    year_9999 = entry([record(500, ts_us=253_402_214_400_000_000)])  # 9999-12-31
    xadd(redis_url, redis_stream, spread, year_9999)
    worker = drain(redis_url, pg_url, redis_stream, pg_schema, months_ahead=1)
    made = _partitions(pg_url, pg_schema) - before
    names_9999 = {partitions.partition_name("activity_logs", 9999, 12)}
    assert not made & names_9999
    assert len(made) <= 14, sorted(made)  # a year and a day back, a day ahead
    latest = datetime.now(UTC)
    ahead = {partitions.partition_name("activity_logs", latest.year + (latest.month + k - 1) // 12,
                                       (latest.month + k - 1) % 12 + 1) for k in range(3)}
    future = {name for name in made if name > max(ahead)}
    assert not future, future
    stats = worker.stats()
    in_window = stored(pg_url, pg_schema)
    assert stats["refused_out_of_window"] == 122 - in_window >= 100
    assert len(dead(pg_url, pg_schema)) == stats["dead_lettered"] == 122 - in_window


def test_one_row_the_database_refuses_among_10_000_is_dead_lettered_the_rest_stored(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    """A row PostgreSQL refuses (a CHECK constraint here, SQLSTATE 23514) is isolated by
    bisection and dead-lettered at once, with no retry-and-sleep: 9,999 stored, 1 dead
    letter, offered = stored + dead."""
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    fetch(pg_url, pg_schema, "ALTER TABLE activity_logs ADD CONSTRAINT no_evil "
                             "CHECK (actor_id IS DISTINCT FROM 'evil')")
    records = [record(i) for i in range(10_000)]
    records[6_543]["x"]["actor_id"] = "evil"
    xadd(redis_url, redis_stream, *[entry(records[k:k + 500]) for k in range(0, 10_000, 500)])
    worker = drain(redis_url, pg_url, redis_stream, pg_schema, batch_size=10_000)
    (letter,) = dead(pg_url, pg_schema)
    assert letter["reason"] == "refused" and letter["attempts"] == 1
    assert orjson.loads(letter["record"])["id"] == records[6_543]["id"]
    assert letter["record_id"] == records[6_543]["id"]
    assert stored(pg_url, pg_schema) == 9_999
    stats = worker.stats()
    assert stats["read"] == 10_000 == stats["inserted"] + stats["dead_lettered"]
    assert stats["refused_by_database"] == 1


def test_dead_letters_are_queryable_through_the_cli(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    xadd(redis_url, redis_stream, {"v": "99", "n": "1", "d": b"[]"},
         entry([record(0, seq=2**63), record(1)]))
    drain(redis_url, pg_url, redis_stream, pg_schema)
    where = ["--database-url", pg_url, "--schema", pg_schema]
    code, out, _ = run(["dead-letters", "count", "--json", *where], capsys)
    assert (code, orjson.loads(out)) == (0, {"count": 2})
    code, out, _ = run(["dead-letters", "list", "--json", *where], capsys)
    listed = orjson.loads(out)
    assert code == 0 and sorted(r["reason"] for r in listed) == ["malformed", "undecodable"]
    undecodable = next(r for r in listed if r["reason"] == "undecodable")
    code, out, _ = run(["dead-letters", "show", str(undecodable["id"]), "--json", *where], capsys)
    shown = orjson.loads(out)
    assert code == 0 and orjson.loads(shown["record"])["v"] == "99"
    code, out, _ = run(["dead-letters", "purge", "--keep", "1", "--json", *where], capsys)
    assert (code, orjson.loads(out)) == (0, {"deleted": 1})
    assert len(dead(pg_url, pg_schema)) == 1


def test_a_dead_letter_that_cannot_be_written_leaves_its_entry_pending(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    """Never lost: while the dead-letter table refuses the write, the entry is not
    acknowledged; the worker retries and a stop leaves it pending."""
    fetch(pg_url, pg_schema, "CREATE TABLE activity_log_dead_letters (id int)")  # wrong shape
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    xadd(redis_url, redis_stream, {"v": "99", "n": "1", "d": b"[]"}, entry([record(0)]))

    async def go() -> ActivityWorker:
        worker = ActivityWorker(redis_url, pg_url, stream=redis_stream, schema=pg_schema,
                                max_wait=0.1)
        task = asyncio.create_task(worker.run())
        for _ in range(200):
            if worker.stats()["retried"] >= 1:
                break
            await asyncio.sleep(0.05)
        worker.request_stop()
        await asyncio.wait_for(task, 10)
        return worker

    worker = asyncio.run(go())
    stats = worker.stats()
    assert stats["retried"] >= 1 and stats["dead_lettered"] == 0 and stats["acked"] == 0
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xpending(redis_stream, "activity_log_workers")["pending"] == 2
    finally:
        client.close()


def test_a_dead_letter_of_hostile_text_is_written_not_retried_for_ever(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    """What a dead letter records comes from the attacker too: a record id with NUL (which
    PostgreSQL's text refuses) must not make the dead letter unwritable."""
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    nul_id = {**record(0), "id": "\x00evil" * 100}
    xadd(redis_url, redis_stream, entry([nul_id, record(1)], producer="p\x00"))
    worker = drain(redis_url, pg_url, redis_stream, pg_schema)
    (letter,) = dead(pg_url, pg_schema)
    assert letter["reason"] == "malformed" and "\x00" not in letter["record_id"]
    assert len(letter["record_id"]) <= 64
    assert stored(pg_url, pg_schema) == 1
    assert worker.stats()["retried"] == 0
