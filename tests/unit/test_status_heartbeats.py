"""What ``status`` makes of a heartbeat it did not expect: one from the future is not a
live worker and is reported; one that is not a worker's (garbage, wrong types, no expiry)
is a bounded warning, never a traceback; the text report escapes everything Redis said.

Pure parts only (``_worker_from_beat``, ``judge_redis``, ``render_status``); the reading
itself runs against a real Redis in tests/integration/test_status_heartbeats.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest

from activity_logging.status import PipelineStatus, render_status
from activity_logging.status_findings import judge_redis
from activity_logging.status_redis import (
    HEARTBEAT_MAX_AHEAD,
    MAX_NAME_CHARS,
    ConsumerInfo,
    WorkerInfo,
    _worker_from_beat,
)
from activity_logging.status_render import MAX_LISTED

TTL = 15.0


def _beat(**fields: object) -> bytes:
    return orjson.dumps({"consumer": "w1", "host": "h1", "pid": 42, "ts": time.time(),
                         "started": time.time(), "counters": {}, **fields})


def _status(*workers: WorkerInfo, consumers: tuple[ConsumerInfo, ...] = (),
            delivered: str = "0-0") -> PipelineStatus:
    status = PipelineStatus(checked_at=datetime.now(UTC), database_url="sqlite:///a.db",
                            redis_url="redis://127.0.0.1:6379/0", stream="s", group="g",
                            dead_stream="s:dead", stream_length=0, group_exists=True,
                            dead_letters=0, workers=list(workers), consumers=list(consumers),
                            last_delivered_id=delivered)
    judge_redis(status, heartbeat_ttl=TTL, max_lag=300)
    return status


def test_a_fresh_beat_is_live() -> None:
    w = _worker_from_beat("w1", _beat(), time.time(), TTL)
    assert w is not None and w.live and w.ahead_seconds is None
    assert (w.consumer, w.host, w.pid) == ("w1", "h1", 42)


def test_a_beat_a_little_ahead_is_clock_skew_and_live() -> None:
    now = time.time()
    w = _worker_from_beat("w1", _beat(ts=now + HEARTBEAT_MAX_AHEAD / 2), now, TTL)
    assert w is not None and w.live
    assert w.age_seconds == 0.0 and w.ahead_seconds is None


@pytest.mark.parametrize("ahead", [HEARTBEAT_MAX_AHEAD + 1, 3600.0, 10 * 365 * 86400.0])
def test_a_beat_from_the_future_is_not_live(ahead: float) -> None:
    now = time.time()
    w = _worker_from_beat("ghost", _beat(ts=now + ahead), now, TTL)
    assert w is not None and not w.live
    assert w.ahead_seconds == pytest.approx(ahead, abs=0.01)


def test_only_a_ghost_from_the_future_leaves_the_pipeline_unhealthy() -> None:
    now = time.time()
    ghost = _worker_from_beat("ghost", _beat(ts=now + 3600), now, TTL)
    assert ghost is not None
    status = _status(ghost)
    assert not status.healthy
    assert status.live_workers == 0
    assert any("no live worker" in p for p in status.problems)
    (warning,) = [w for w in status.warnings if "future" in w]
    assert "'ghost' (60.0 min ahead)" in warning
    report = render_status(status)
    assert report.startswith("pipeline: UNHEALTHY")
    assert "ghost" in report and "AHEAD" in report and "in the future" in report


def test_a_ghost_next_to_a_live_worker_is_a_warning_only() -> None:
    now = time.time()
    real = _worker_from_beat("w1", _beat(), now, TTL)
    ghost = _worker_from_beat("ghost", _beat(ts=now + 3600), now, TTL)
    assert real is not None and ghost is not None
    status = _status(real, ghost)
    assert status.healthy, status.problems
    assert status.live_workers == 1
    assert any("dated in the future" in w for w in status.warnings)


def test_a_beat_without_an_expiry_is_reported() -> None:
    w = _worker_from_beat("w1", _beat(), time.time(), TTL, expires=False)
    assert w is not None
    status = _status(w)
    assert any("no expiry" in x and "'w1'" in x for x in status.warnings)
    assert "no expiry" in render_status(status)


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[1, 2, 3]", b'"a string"', b"null", b"{}", b'{"ts": "1700000000"}',
    b'{"ts": true}', b'{"ts": null}', b'{"ts": [1]}', b'{"ts": 1e400}', b"\xff\xfe\x00",
    b'{"ts": ' + b"9" * 5000 + b"}",
])
def test_a_beat_not_in_a_workers_form_is_unreadable(raw: bytes) -> None:
    assert _worker_from_beat("x", raw, time.time(), TTL) is None


def test_odd_field_types_are_dropped_and_names_bounded() -> None:
    now = time.time()
    raw = orjson.dumps({"ts": now, "host": {"a": 1}, "pid": True, "started": "yesterday",
                        "counters": [1, 2], "consumer": "someone-else"})
    w = _worker_from_beat("w" * 10, raw, now, TTL)
    assert w is not None and w.live
    assert (w.consumer, w.host, w.pid, w.started, w.counters) == ("w" * 10, None, None, None, {})
    long_host = _worker_from_beat("w", _beat(host="h" * 10_000), now, TTL)
    assert long_host is not None and long_host.host == "h" * MAX_NAME_CHARS


def test_hostile_names_reach_the_report_escaped() -> None:
    now = time.time()
    evil = "\x1b]0;owned\x07\x1b[2J\u202eevil\r\nPROBLEM: none"
    w = _worker_from_beat(evil, _beat(host=evil), now, TTL)
    assert w is not None
    status = _status(w, consumers=(ConsumerInfo(evil, 1, 0.5),))
    status.stream, status.group = evil, evil
    status.warnings.append(f"cannot read Redis persistence settings: {evil}")
    report = render_status(status)
    for bad in ("\x1b", "\x07", "\u202e", "\r"):
        assert bad not in report
    assert report.count("\n") == len(report.splitlines()) - 1
    assert not any(line.startswith("PROBLEM: none") for line in report.splitlines())
    assert "\\x1b]0;owned\\x07" in report and "\\u202eevil\\r\\n" in report


def test_the_report_lists_at_most_max_listed_workers_and_consumers() -> None:
    now = time.time()
    workers = [w for i in range(MAX_LISTED + 7)
               if (w := _worker_from_beat(f"w{i:03}", _beat(), now, TTL)) is not None]
    consumers = tuple(ConsumerInfo(f"c{i}", 0, 0.0) for i in range(MAX_LISTED + 3))
    report = render_status(_status(*workers, consumers=consumers))
    assert "7 more workers" in report and "3 more consumers" in report
    assert sum(1 for line in report.splitlines() if line.startswith("  w")) == MAX_LISTED
    assert sum(1 for line in report.splitlines() if line.startswith("  consumer ")) == MAX_LISTED


def test_a_live_beat_of_a_consumer_the_group_never_saw_is_a_warning() -> None:
    now = time.time()
    w = _worker_from_beat("ghost", _beat(), now, TTL)
    assert w is not None
    status = _status(w, consumers=(ConsumerInfo("w1", 0, 0.1),), delivered="5-0")
    assert status.healthy  # a present-time beat cannot be told from a worker's, unsigned
    assert any("1 live heartbeat names no consumer of group 'g': 'ghost'" in x
               for x in status.warnings)
    known = _status(w, consumers=(ConsumerInfo("ghost", 0, 0.1),), delivered="5-0")
    assert not any("no consumer of group" in x for x in known.warnings)
    fresh = _status(w)  # nothing delivered yet: a worker is no consumer before its first entry
    assert not any("no consumer of group" in x for x in fresh.warnings)
