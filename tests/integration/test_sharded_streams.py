"""Sharded streams on the shared (single-node) Redis: producers spread over the shards, one
worker drains them all, ``status`` reports each shard and the totals, and a count that
does not match the producers' is a problem, not silence."""

from __future__ import annotations

import asyncio
import logging

import redis

from activity_logging import ActivityHandler, ActivityWorker, db
from activity_logging.shards import shard_streams
from activity_logging.status import gather_status, render_status
from tests.ledger import keys_from_pg, ledger_of

SHARDS = 3


def _produce(redis_url: str, stream: str, tag: str, producers: int, per: int,
             shards: int = SHARDS) -> set[str]:
    """Log ``per`` records from each of ``producers`` handlers; the shards they wrote to."""
    used = set()
    for p in range(producers):
        handler = ActivityHandler(redis_url=redis_url, stream=stream, stream_shards=shards,
                                  spool_path="off")
        log = logging.getLogger(f"activity.shards.{tag}.{p}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        try:
            for k in range(per):
                log.info("call_created", extra={"target_id": f"{tag}-{p}-{k}"})
        finally:
            log.removeHandler(handler)
            handler.close()
        assert handler.stats()["sent"] == per
        used.add(handler.shard_stream)
    return used


def test_one_worker_drains_every_shard_and_status_reports_each(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, unique_name: str,
) -> None:
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    names = shard_streams(redis_stream, SHARDS)
    used = _produce(redis_url, redis_stream, unique_name, producers=12, per=200)
    assert len(used) >= 2  # 12 random ids over 3 shards
    client = redis.Redis.from_url(redis_url)
    try:
        waiting = {name: client.xlen(name) for name in names}
        assert sum(waiting.values()) > 0 and not client.exists(redis_stream)

        async def check(shards: int) -> str:
            status = await gather_status(pg_url, redis_url, schema=pg_schema,
                                         stream=redis_stream, stream_shards=shards)
            return "\n".join(status.problems) + "\n" + render_status(status)

        # Checked with the wrong count, status names the shards no such worker would read.
        text = asyncio.run(check(1))
        assert "look like shards" in text and all(name in text for name in used)

        status = asyncio.run(gather_status(pg_url, redis_url, schema=pg_schema,
                                           stream=redis_stream, stream_shards=SHARDS))
        assert [s.stream for s in status.shards] == names
        assert [s.stream_length for s in status.shards] == [waiting[n] for n in names]
        assert status.stream_length == sum(waiting.values())  # the total
        assert not any("look like shards" in p for p in status.problems)

        worker = ActivityWorker(redis_url, pg_url, stream=redis_stream, stream_shards=SHARDS,
                                schema=pg_schema, max_wait=0.1)
        asyncio.run(worker.run(stop_when_idle=True))
        ledger = ledger_of(12 * 200, keys_from_pg(pg_url, pg_schema, unique_name))
        ledger.assert_balanced()
        assert ledger.duplicates == 0
        assert all(client.xlen(name) == 0 for name in names)
        assert sum(client.xpending(name, "activity_log_workers")["pending"] for name in names) == 0
        assert worker.stats()["acked"] == sum(waiting.values())

        # A producer given no stream_shards writes to the stream's own key: nobody reads it.
        _produce(redis_url, redis_stream, f"{unique_name}-unsharded", producers=1, per=1,
                 shards=1)
        status = asyncio.run(gather_status(pg_url, redis_url, schema=pg_schema,
                                           stream=redis_stream, stream_shards=SHARDS))
        assert any("itself holds 1 entries" in p for p in status.problems), status.problems
    finally:
        client.close()


def test_a_cluster_url_at_a_single_redis_is_a_configuration_error(
    redis_url: str, pg_url: str, pg_schema: str, redis_stream: str,
) -> None:
    import subprocess
    import sys

    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    url = redis_url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    where = ["--stream", redis_stream, "--database-url", pg_url, "--schema", pg_schema]
    for verb in (["worker", *where], ["status", *where]):
        done = subprocess.run([sys.executable, "-m", "activity_logging", verb[0], "--redis-url",
                               url, *verb[1:]], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (verb[0], done.stderr[-2000:])
        assert "is not a Redis Cluster" in done.stderr and "Traceback" not in done.stderr
