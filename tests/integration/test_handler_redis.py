"""ActivityHandler against the real Redis (``TEST_REDIS_URL``; a unique stream per test)."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from activity_logging.handler import ActivityHandler
from activity_logging.rows import build_activity
from activity_logging.wire import decode_entry

pytestmark = pytest.mark.integration


def read_rows(url: str, stream: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        rows: list[dict[str, Any]] = []
        for _, fields in client.xrange(stream):
            meta, records = decode_entry(fields)
            rows.extend(build_activity(r, meta) for r in records)
        return rows
    finally:
        client.close()


def activity_logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def test_n_records_reach_the_stream_exactly_once_with_every_field(redis_url: str, redis_stream: str) -> None:
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, batch_size=200)
    log = activity_logger("activity.integration")
    log.addHandler(handler)
    n = 5000
    from activity_logging.context import activity_context

    with activity_context(request_id="req-int", ip_address="2001:db8::1", user_agent="pytest",
                          http_method="PUT", path="/calls/1"):
        for i in range(n):
            log.log(logging.ERROR if i % 10 == 0 else logging.INFO, "call_updated",
                    extra={"actor_type": "agent", "actor_id": f"agent-{i % 7}", "target_type": "call",
                           "target_id": f"call-{i}", "changes": {"status": {"old": "a", "new": str(i)}},
                           "queue": "support", "i": i})
    assert handler.flush(30)
    stats = handler.stats()
    handler.close()
    rows = read_rows(redis_url, redis_stream)
    assert len(rows) == n
    assert len({r["id"] for r in rows}) == n
    assert stats["enqueued"] == stats["sent"] == n
    by_i = {r["metadata"]["i"]: r for r in rows}
    assert sorted(by_i) == list(range(n))
    sample = by_i[10]
    assert sample["severity"] == "error" and sample["level"] == logging.ERROR
    assert sample["actor_type"] == "agent" and sample["actor_id"] == "agent-3"
    assert sample["target_type"] == "call" and sample["target_id"] == "call-10"
    assert sample["changes"] == {"status": {"old": "a", "new": "10"}}
    assert sample["metadata"] == {"queue": "support", "i": 10}
    assert sample["ip_address"] == "2001:db8::1"
    assert (sample["user_agent"], sample["request_id"]) == ("pytest", "req-int")
    assert (sample["http_method"], sample["path"]) == ("PUT", "/calls/1")
    assert sample["logger"] == "activity.integration"
    assert sample["process_id"] == os.getpid()
    assert sample["producer_id"] == handler.producer_id
    assert isinstance(sample["id"], uuid.UUID) and sample["id"].version == 7
    assert abs((datetime.now(UTC) - sample["timestamp"]).total_seconds()) < 600
    assert sorted(r["seq"] for r in rows) == list(range(1, n + 1))
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(redis_stream) <= n // 100  # whole batches per entry
    client.close()


def test_forked_child_gets_its_own_working_handler(redis_url: str, redis_stream: str) -> None:
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream)
    log = activity_logger("activity.fork")
    log.addHandler(handler)
    log.info("parent_before_fork")
    # records queued but not shipped at fork time belong to the parent only
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(200):
                log.info("child_record", extra={"i": i})
            code = 0 if handler.flush(20) and handler.stats()["sent"] == 200 else 3
        finally:
            os._exit(code)
    log.info("parent_after_fork")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert handler.flush(20)
    handler.close()
    rows = read_rows(redis_url, redis_stream)
    kinds = [r["activity_type"] for r in rows]
    assert kinds.count("child_record") == 200
    assert kinds.count("parent_before_fork") == 1
    assert kinds.count("parent_after_fork") == 1
    assert len({r["id"] for r in rows}) == len(rows) == 202
    child_rows = [r for r in rows if r["activity_type"] == "child_record"]
    assert {r["process_id"] for r in child_rows} == {pid}
    assert len({r["producer_id"] for r in child_rows}) == 1
    assert child_rows[0]["producer_id"] != handler.producer_id
