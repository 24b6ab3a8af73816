"""No generated secret reaches the real Redis (``TEST_REDIS_URL``; a unique stream)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from hypothesis import given, settings

from activity_logging.handler import ActivityHandler
from tests.redact_cases import SECRET_PREFIX, Placed, placed_secrets

pytestmark = pytest.mark.integration


def test_no_generated_secret_reaches_the_real_redis_stream(redis_url: str, redis_stream: str) -> None:
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, spool_path="off")
    log = logging.getLogger("activity.redact_redis")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(handler)
    cases: list[Placed] = []

    @settings(max_examples=100, deadline=None, database=None)
    @given(placed_secrets())
    def log_one(case: Placed) -> None:
        free = f"{SECRET_PREFIX}f{len(cases)}"
        case.secrets.append(free)
        log.error("connect failed: token=%s", free, extra=case.extra)
        cases.append(case)

    try:
        log_one()
        assert handler.flush(30)
        stats = handler.stats()
    finally:
        log.removeHandler(handler)
        handler.close()
    client = redis.Redis.from_url(redis_url)
    try:
        entries: Any = client.xrange(redis_stream)
    finally:
        client.close()
    data = b"".join(value for _, fields in entries for value in fields.values())
    for case in cases:
        for secret in case.secrets:
            assert secret.encode() not in data, case.extra
    assert SECRET_PREFIX.encode() not in data
    assert stats["sent"] == stats["enqueued"] == len(cases)
    assert b"[REDACTED]" in data
