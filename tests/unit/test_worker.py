"""ActivityWorker logic without servers: settings, decoding, isolating poison records."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from activity_logging import snapshot, wire
from activity_logging.exceptions import ConfigurationError
from activity_logging.worker import ActivityWorker, _Batch
from tests.fake_store import FakeStore

REDIS = "redis://127.0.0.1:1/0"
PG = "postgresql://postgres@127.0.0.1:1/test"


def make_worker(**kw: Any) -> ActivityWorker:
    return ActivityWorker(REDIS, PG, stream="s", **kw)


def test_settings_are_validated_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="redis_url"):
        ActivityWorker(None, PG)
    with pytest.raises(ConfigurationError, match="database_url"):
        ActivityWorker(REDIS, None)
    with pytest.raises(ConfigurationError, match="database_url"):
        ActivityWorker(REDIS, "mysql://x/db")
    with pytest.raises(ConfigurationError, match="batch_size"):
        make_worker(batch_size=0)
    with pytest.raises(ConfigurationError, match="schema"):
        make_worker(schema="bad;name")


def test_environment_supplies_urls_and_dead_stream_follows_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS)
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    worker = ActivityWorker()
    assert (worker.stream, worker.dead_stream) == ("activity_log_stream", "activity_log_dead")
    assert worker.group == "activity_log_workers"
    assert make_worker().dead_stream == "s:dead"


def _entry(n: int, producer: str = "p") -> dict[str, Any]:
    rec = logging.LogRecord("a", logging.INFO, "p", 1, "call_created", None, None)
    return wire.WireEncoder(producer).encode_batch([snapshot.queued_from_record(rec) for _ in range(n)])


def test_entries_are_decoded_and_bad_ones_set_aside() -> None:
    worker = make_worker()
    batch = _Batch(worker.shards[0])
    broken = _entry(3)
    wires = orjson.loads(broken["d"])
    del wires[1]["id"]  # build_activity refuses a record without id
    broken["d"] = orjson.dumps(wires)
    worker._add_entries(batch, [(b"1-0", _entry(4)), (b"2-0", {"v": "7", "d": b"[]"}),
                                (b"3-0", broken), (b"4-0", {})])
    assert batch.ids == [b"1-0", b"2-0", b"3-0", b"4-0"]
    assert len(batch.rows) == 6 and batch.refs[-1] == (2, 2)
    assert [(r.entry, r.attempts) for r in batch.rejects] == [(1, 1), (2, 1)]
    assert "EntryFormatError" in batch.rejects[0].error
    assert worker.stats()["read"] == 7 and worker.stats()["entries_read"] == 4


@pytest.mark.anyio
@pytest.mark.parametrize("poison_at", [[], [0], [17], [5, 6, 63], list(range(0, 64, 9))])
async def test_refused_records_are_dead_lettered_as_sent_and_the_rest_stored(
    poison_at: list[int],
) -> None:
    worker = make_worker(max_attempts=3)
    store = FakeStore(refuse=lambda row: row["actor_id"] == "poison")
    batch = _Batch(worker.shards[0])
    worker._add_entries(batch, [(f"{i}-0".encode(), _entry(16, f"p{i}")) for i in range(4)])
    for index in poison_at:
        batch.rows[index]["actor_id"] = "poison"
    await worker._store_batch(batch, store)
    assert worker.stats()["inserted"] == 64 - len(poison_at) == len(store.rows)
    assert all(r.attempts == 3 and "OverflowError" in r.error for r in batch.rejects)
    # The dead-lettered records are the poisoned ones, as the producer sent them.
    assert sorted(orjson.loads(r.record)["id"] for r in batch.rejects) == sorted(
        str(batch.rows[i]["id"]) for i in poison_at)
    assert all(r.entry == batch.refs[i][0] for r, i in zip(batch.rejects, poison_at, strict=True))


def test_worker_command_refuses_bad_settings_with_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from activity_logging.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["worker", "--database-url", PG]) == 2  # no Redis anywhere
    assert main(["worker", "--redis-url", REDIS, "--database-url", "mysql://x/db"]) == 2
    assert main(["worker", "--redis-url", REDIS, "--database-url", PG, "--batch-size", "0"]) == 2


def test_stop_signals_during_worker_start_up_are_held_for_the_worker() -> None:
    """Before the CLI is even imported, a SIGTERM to `activity-logging worker` is a warm stop
    (held, handed to the worker), never the default kill: exit 0, not -15."""
    import os
    import signal

    from activity_logging import _startup

    previous = {sig: signal.getsignal(sig) for sig in _startup.STOP_SIGNALS}
    try:
        _startup.hold_stop_signals_for_worker(["activity-logging", "query"])
        assert signal.getsignal(signal.SIGTERM) == previous[signal.SIGTERM]  # other verbs: as is
        _startup.hold_stop_signals_for_worker(["activity-logging", "--log-level", "debug", "worker"])
        os.kill(os.getpid(), signal.SIGTERM)
        assert _startup.held == [signal.SIGTERM]
    finally:
        _startup.held.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
