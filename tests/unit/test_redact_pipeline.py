"""No generated secret under a listed key reaches Redis (fakeredis), the spool or the embedded
SQLite store: property tests through a real ``ActivityHandler``.

Each test builds one handler and logs every hypothesis example through it (a handler per
example would spend the run starting threads), then reads the bytes that left the process
and looks for every secret marker. The ledger holds too: every record logged is stored.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings

from activity_logging.handler import ActivityHandler
from activity_logging.sinks import RedisStreamSink
from tests.redact_cases import SECRET_PREFIX, Placed, placed_secrets

EXAMPLES = 150


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("activity.redact_pipeline")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


def log_examples(log: logging.Logger) -> list[Placed]:
    """Log EXAMPLES generated records (a secret in each message too) and return them."""
    cases: list[Placed] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(placed_secrets())
    def log_one(case: Placed) -> None:
        free = f"{SECRET_PREFIX}f{len(cases)}"
        case.secrets.append(free)
        log.info("login failed password=%s", free, extra=case.extra)
        cases.append(case)

    log_one()
    return cases


def assert_no_secret_in(data: bytes, cases: list[Placed]) -> None:
    for case in cases:
        for secret in case.secrets:
            assert secret.encode() not in data, case.extra
    assert SECRET_PREFIX.encode() not in data


def test_no_generated_secret_reaches_the_redis_stream(logger: logging.Logger) -> None:
    client = fakeredis.FakeRedis()
    sink = RedisStreamSink("redis://unused", "s")
    sink._client = client
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off")
    handler._sink = sink
    logger.addHandler(handler)
    cases = log_examples(logger)
    assert handler.flush(10)
    stats = handler.stats()
    handler.close()
    entries: Any = client.xrange("s")
    data = b"".join(value for _, fields in entries for value in fields.values())
    assert_no_secret_in(data, cases)
    assert stats["sent"] == stats["enqueued"] == len(cases)
    # a subtree redacted whole (under a secret-looking pair) counts once for what it holds
    assert stats["redacted"] >= 2 * len(cases)


class DownSink:
    """A sink that is always down: every batch goes to the spool."""

    rejected = 0

    def prepare(self) -> None:
        pass

    def send(self, batches: list[Any]) -> None:
        raise ConnectionError("down")

    def unconfirmed(self, exc: BaseException) -> bool:
        return False

    def close(self) -> None:
        pass


def test_no_generated_secret_reaches_the_spool(logger: logging.Logger, tmp_path: Path) -> None:
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path=str(tmp_path),
                              reconnect_delay=30.0, close_timeout=1.0)
    handler._sink = DownSink()
    logger.addHandler(handler)
    cases = log_examples(logger)
    assert handler.flush(10)
    for _ in range(100):
        if handler.stats()["spooled"] == len(cases):
            break
        threading.Event().wait(0.05)
    stats = handler.stats()
    handler.close()
    files = list(tmp_path.rglob("*.spool"))
    assert files
    assert_no_secret_in(b"".join(f.read_bytes() for f in files), cases)
    assert stats["spooled"] == len(cases)


def test_no_generated_secret_reaches_the_embedded_store(logger: logging.Logger,
                                                        tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    handler = ActivityHandler(database_url=f"sqlite:///{db}", direct=True)
    logger.addHandler(handler)
    cases = log_examples(logger)
    assert handler.flush(10)
    handler.close()
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT * FROM activity_logs").fetchall()
    finally:
        conn.close()
    assert len(rows) == len(cases)
    stored = repr(rows).encode()
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert_no_secret_in(stored + files, cases)


def test_the_handler_takes_its_key_list_as_one_string(logger: logging.Logger) -> None:
    """``redact_keys`` is a comma-separated string (dictConfig passes it as is)."""
    client = fakeredis.FakeRedis()
    sink = RedisStreamSink("redis://unused", "s")
    sink._client = client
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off",
                              redact_keys="ssn, *pin$")
    handler._sink = sink
    logger.addHandler(handler)
    logger.info("m", extra={"SSN": "078-05-1120", "userPin": "pin-7391", "password": "kept-pw",
                            "pinned": "yes"})
    assert handler.flush(10)
    stats = handler.stats()
    handler.close()
    data = b"".join(v for _, fields in client.xrange("s") for v in fields.values())
    assert b"078-05-1120" not in data and b"pin-7391" not in data
    assert b"kept-pw" in data and b"yes" in data
    assert stats["redacted"] == 2
