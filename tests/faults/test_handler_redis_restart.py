"""Redis goes away under a running handler (a private redis-server we stop and restart)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from activity_logging.handler import ActivityHandler
from activity_logging.rows import build_activity
from activity_logging.wire import decode_entry
from tests.servers import PrivateRedis

pytestmark = pytest.mark.fault


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    srv = PrivateRedis()
    srv.start()
    yield srv
    srv.cleanup()


def drain(url: str, stream: str) -> list[str]:
    """Read and delete what is in the stream (what a worker would have consumed)."""
    client = redis.Redis.from_url(url)
    try:
        kinds = []
        for entry_id, fields in client.xrange(stream):
            meta, records = decode_entry(fields)
            kinds.extend(f"{build_activity(r, meta)['activity_type']}:{r['id']}" for r in records)
            client.xdel(stream, entry_id)
        return kinds
    finally:
        client.close()


def logger() -> logging.Logger:
    log = logging.getLogger("activity.fault")
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def test_redis_restart_reconnects_and_loses_nothing_accepted(server: PrivateRedis) -> None:
    handler = ActivityHandler(redis_url=server.url, stream="s", reconnect_delay=0.1, queue_size=50_000,
                              spool_path="off")  # held in memory, not spooled
    log = logger()
    log.addHandler(handler)
    for i in range(1000):
        log.info("before", extra={"i": i})
    assert handler.flush(10)
    seen = drain(server.url, "s")
    server.stop()
    for i in range(3000):  # accepted while Redis is down: held in the bounded queue
        log.info("during", extra={"i": i})
    assert not handler.flush(0.5)
    server.start()
    assert handler.flush(30)
    for i in range(500):
        log.info("after", extra={"i": i})
    assert handler.flush(10)
    seen += drain(server.url, "s")
    stats = handler.stats()
    handler.close()
    kinds = [k.split(":")[0] for k in seen]
    assert (kinds.count("before"), kinds.count("during"), kinds.count("after")) == (1000, 3000, 500)
    assert len(set(seen)) == 4500
    assert stats["dropped_queue_full"] == 0 and stats["lost"] == 0
    assert stats["reconnects"] >= 1 and stats["send_failures"] >= 1


def test_app_exit_while_redis_is_down_spools_and_next_start_replays(
    server: PrivateRedis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = ActivityHandler(redis_url=server.url, stream="s", spool_path=str(spool),
                            reconnect_delay=0.1, close_timeout=2)
    log = logger()
    log.addHandler(first)
    server.stop(kill=True)
    for i in range(2000):
        log.info("while_down", extra={"i": i})
    first.close()  # the application exits with Redis still down
    log.removeHandler(first)
    assert first.stats()["spooled"] == 2000 and first.stats()["lost"] == 0
    server.start()
    second = ActivityHandler(redis_url=server.url, stream="s", spool_path=str(spool))
    log.addHandler(second)
    log.info("next_run")
    assert second.flush(10)
    for _ in range(100):
        if len(drain_peek(server.url)) >= 2001:
            break
        __import__("time").sleep(0.05)
    second.close()
    seen = drain(server.url, "s")
    kinds = [k.split(":")[0] for k in seen]
    assert kinds.count("while_down") == 2000 and kinds.count("next_run") == 1
    assert len(set(seen)) == 2001
    assert not list(spool.glob("*.spool"))


def drain_peek(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        out = []
        for _, fields in client.xrange("s"):
            out.extend([b"x"] * int(fields[b"n"]))
        return out
    finally:
        client.close()
