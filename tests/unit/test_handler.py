"""ActivityHandler on fakeredis / SQLite / fake sinks: never blocks, never raises, counts every loss."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from activity_logging.exceptions import ConfigurationError
from activity_logging.handler import ActivityHandler
from activity_logging.rows import build_activity
from activity_logging.shards import shard_streams
from activity_logging.sinks import RedisStreamSink
from activity_logging.wire import Batch, Entry, decode_entry


class RecordingSink:
    """Collects entries; can be made to fail or to block."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False
        self.rejected = 0

    def prepare(self) -> None:
        pass

    def send(self, entries: list[Batch]) -> None:
        self.gate.wait(10)
        if self.fail:
            raise ConnectionError("sink down")
        self.entries.extend(batch.entry() for batch in entries)

    def close(self) -> None:
        self.closed = True

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for entry in self.entries:
            meta, records = decode_entry(entry)
            out.extend(build_activity(r, meta) for r in records)
        return out


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("activity.unit")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def attach(log: logging.Logger, sink: Any = None, **kwargs: Any) -> tuple[ActivityHandler, Any]:
    kwargs.setdefault("redis_url", "redis://127.0.0.1:1/0")
    kwargs.setdefault("spool_path", "off")  # the tests that spool say where
    handler = ActivityHandler(**kwargs)
    sink = sink if sink is not None else RecordingSink()
    handler._sink = sink
    log.addHandler(handler)
    return handler, sink


def test_n_records_reach_fakeredis_stream_with_fields_intact(logger: logging.Logger) -> None:
    sink = RedisStreamSink("redis://unused", "s")
    sink._client = fakeredis.FakeRedis()
    handler, _ = attach(logger, sink, batch_size=100)
    for i in range(1000):
        logger.info("call_created", extra={"actor_id": i, "target_type": "call", "target_id": f"c{i}",
                                           "changes": {"n": i}})
    assert handler.flush(10)
    entries = sink._client.xrange("s")
    rows = []
    for _, fields in entries:
        meta, records = decode_entry(fields)
        rows.extend(build_activity(r, meta) for r in records)
    assert len(rows) == 1000
    assert len({r["id"] for r in rows}) == 1000
    assert sorted(int(r["actor_id"]) for r in rows) == list(range(1000))
    assert all(r["changes"] == {"n": int(r["actor_id"])} for r in rows)
    assert sorted(r["seq"] for r in rows) == list(range(1, 1001))
    assert len(entries) < 1000 / 10  # batches, not one entry per record
    stats = handler.stats()
    assert stats["enqueued"] == stats["sent"] == 1000
    handler.close()


def test_full_queue_drops_and_counts(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    sink = RecordingSink()
    sink.gate.clear()  # the listener blocks inside send: nothing leaves the queue
    handler, _ = attach(logger, sink, queue_size=50, batch_size=10)
    for i in range(500):
        logger.info("x", extra={"i": i})
    stats = handler.stats()
    accepted = stats["enqueued"]
    assert stats["dropped_queue_full"] == 500 - accepted
    assert accepted == 50  # the records in the listener's hand count against queue_size
    assert "Traceback" not in capsys.readouterr().err
    sink.gate.set()
    assert handler.flush(10)
    assert len(sink.rows()) == accepted
    handler.close()


def test_own_and_dependency_loggers_are_refused(logger: logging.Logger) -> None:
    handler, sink = attach(logger)
    for name in ("activity_logging.worker", "redis.connection", "sqlalchemy.engine", "asyncpg",
                 "urllib3.connectionpool"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.propagate = False
        lg.error("must not loop")
    logging.getLogger("redisson").addHandler(handler)  # a prefix, not the package: accepted
    logging.getLogger("redisson").error("ok")
    assert handler.flush(5)
    assert handler.stats()["refused"] == 5
    assert [r["activity_type"] for r in sink.rows()] == ["ok"]
    handler.close()


def test_sink_failure_never_reaches_the_caller_and_records_survive(logger: logging.Logger) -> None:
    sink = RecordingSink()
    sink.fail = True
    handler, _ = attach(logger, sink, reconnect_delay=0.05)
    for i in range(100):
        logger.info("x", extra={"i": i})
    assert not handler.flush(0.3)
    assert handler.stats()["send_failures"] >= 1
    sink.fail = False
    assert handler.flush(10)
    stats = handler.stats()
    assert stats["sent"] == 100
    assert stats["reconnects"] >= 1
    assert len({r["id"] for r in sink.rows()}) == 100
    handler.close()


def test_close_with_sink_down_and_no_spool_is_bounded_and_counts_lost(logger: logging.Logger) -> None:
    sink = RecordingSink()
    sink.fail = True
    handler, _ = attach(logger, sink, close_timeout=0.3, reconnect_delay=0.05)
    for i in range(20):
        logger.info("x", extra={"i": i})
    handler.close()
    stats = handler.stats()
    assert stats["lost"] == 20
    assert stats["sent"] == 0
    handler.close()  # idempotent
    logger.info("after close")
    assert handler.stats()["dropped_closed"] == 1


def test_spool_keeps_records_while_down_and_replays_them(logger: logging.Logger, tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.fail = True
    handler, _ = attach(logger, sink, spool_path=str(tmp_path), reconnect_delay=0.05)
    for i in range(300):
        logger.info("x", extra={"i": i})
    assert handler.flush(10)  # everything left the queue: into the spool
    assert handler.stats()["spooled"] == 300
    sink.fail = False
    logger.info("after recovery", extra={"i": 300})
    assert handler.flush(10)
    for _ in range(100):
        if handler.stats()["spool_replayed"] > 0 and len(sink.rows()) == 301:
            break
        threading.Event().wait(0.05)
    rows = sink.rows()
    assert sorted(r["metadata"]["i"] for r in rows) == list(range(301))
    assert len({r["id"] for r in rows}) == 301
    handler.close()
    assert not list(tmp_path.glob("*.spool"))


def test_spool_left_by_a_dead_process_is_adopted(logger: logging.Logger, tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.fail = True
    first, _ = attach(logger, sink, spool_path=str(tmp_path), reconnect_delay=0.05, close_timeout=1)
    for i in range(40):
        logger.info("x", extra={"i": i})
    assert first.flush(5)
    first.close()  # the file stays: its frames were never sent
    assert list(tmp_path.glob("*.spool"))
    logger.removeHandler(first)
    sink2 = RecordingSink()
    second, _ = attach(logger, sink2, spool_path=str(tmp_path))
    logger.info("trigger")
    assert second.flush(5)
    for _ in range(100):
        if len(sink2.rows()) == 41:
            break
        threading.Event().wait(0.05)
    assert len({r["id"] for r in sink2.rows()}) == 41
    second.close()


def test_embedded_sqlite_default_writes_rows(logger: logging.Logger, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    handler = ActivityHandler()
    assert handler.redis_url is None
    assert handler.database_url == "sqlite:///activity_logs.db"
    logger.addHandler(handler)
    for i in range(250):
        logger.warning("agent_login", extra={"actor_type": "agent", "actor_id": f"a{i}",
                                             "ip_address": "192.168.0.1"})
    assert handler.flush(10)
    handler.close()
    conn = sqlite3.connect(tmp_path / "activity_logs.db")
    assert conn.execute("select count(*), count(distinct id), min(severity), max(ip_address) "
                        "from activity_logs").fetchone() == (250, 250, "warning", "192.168.0.1")
    conn.close()


def test_environment_configures_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6379/2")
    monkeypatch.setenv("ACTIVITY_LOG_STREAM", "env_stream")
    handler = ActivityHandler()
    assert handler.redis_url == "redis://example.invalid:6379/2"
    assert handler.stream == "env_stream"
    handler.close()
    direct = ActivityHandler(direct=True, database_url="sqlite:///:memory:")
    assert direct.redis_url is None
    direct.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"queue_size": 0}, {"batch_size": -1}, {"flush_interval": "fast"}, {"redis_url": "http://x"},
     {"database_url": "mysql://x", "direct": True}, {"max_record_bytes": 10}, {"queue_size": True}],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ActivityHandler(**kwargs)


def test_emit_survives_broken_records() -> None:
    # a logger pytest has not seen: its own capture handler would raise on these records
    logger = logging.getLogger(f"activity.broken.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler, sink = attach(logger)

    class BadStr:
        def __str__(self) -> str:
            raise RuntimeError("nope")

    logger.info(BadStr())
    logger.info("%s %s", "only one arg")
    logger.info("ok")
    assert handler.flush(5)
    types = [r["activity_type"] for r in sink.rows()]
    assert types[2] == "ok"
    assert types[0].startswith("<unformattable message")
    assert len(types) == 3
    handler.close()


def test_context_filter_is_attached_by_default(logger: logging.Logger) -> None:
    from activity_logging.context import activity_context

    handler, sink = attach(logger)
    with activity_context(request_id="req-9", ip_address="::1", actor_id="ctx"):
        logger.info("x", extra={"actor_id": "explicit"})
    assert handler.flush(5)
    (row,) = sink.rows()
    assert (row["request_id"], row["ip_address"], row["actor_id"]) == ("req-9", "::1", "explicit")
    handler.close()


def test_flush_and_close_at_exit_paths_are_bounded(logger: logging.Logger) -> None:
    handler, sink = attach(logger)
    logger.info("x")
    logging.shutdown([lambda: handler])  # type: ignore[list-item]
    assert len(sink.rows()) == 1
    assert sink.closed


def test_a_live_producers_spool_is_not_an_orphan_and_does_not_stall_others(
    logger: logging.Logger, tmp_path: Path
) -> None:
    down = RecordingSink()
    down.fail = True
    first, _ = attach(logger, down, spool_path=str(tmp_path), reconnect_delay=5.0)
    logger.info("spooled by the first handler")
    assert first.flush(5)
    assert first.stats()["spooled"] == 1  # its file stays locked: the first handler is alive
    logger.removeHandler(first)
    other = logging.getLogger("activity.unit.other")
    other.setLevel(logging.INFO)
    other.propagate = False
    second, sink = attach(other, spool_path=str(tmp_path))
    for i in range(10):
        other.info("x", extra={"i": i})
    assert second.flush(5), second.stats()
    assert len(sink.rows()) == 10
    second.close()
    first.close()


def test_spool_replayed_counts_records_not_entries(logger: logging.Logger, tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.fail = True
    handler, _ = attach(logger, sink, spool_path=str(tmp_path), reconnect_delay=0.05, batch_size=10)
    for i in range(35):
        logger.info("x", extra={"i": i})
    assert handler.flush(5)
    sink.fail = False
    for _ in range(200):
        if handler.stats()["spool_replayed"] == 35:
            break
        threading.Event().wait(0.02)
    assert handler.stats()["spool_replayed"] == handler.stats()["spooled"] == 35
    handler.close()


def test_oversized_extra_is_cut_in_the_caller_so_memory_is_bounded(logger: logging.Logger) -> None:
    sink = RecordingSink()
    sink.gate.clear()  # nothing leaves the queue while we measure it
    handler, _ = attach(logger, sink, queue_size=1000)
    for _ in range(20):
        logger.info("big", extra={"blob": "x" * 5_000_000, "actor_id": "a"})
    stats = handler.stats()
    assert stats["enqueued"] == 20
    assert stats["truncated"] == 20
    assert stats["queue_bytes"] < 20 * 70_000  # each record cut to max_record_bytes, not 5 MB
    sink.gate.set()
    assert handler.flush(10)
    assert all(r["actor_id"] == "a" for r in sink.rows())
    handler.close()


def test_queue_byte_budget_drops_and_counts(logger: logging.Logger) -> None:
    sink = RecordingSink()
    sink.gate.clear()
    handler, _ = attach(logger, sink, queue_size=100_000, queue_max_bytes=200_000)
    for _ in range(100):
        logger.info("x", extra={"payload": "y" * 20_000})
    stats = handler.stats()
    assert stats["dropped_queue_full"] > 0
    assert stats["enqueued"] + stats["dropped_queue_full"] == 100
    assert stats["queue_bytes"] <= 200_000 + 30_000  # at most one record past the budget
    sink.gate.set()
    assert handler.flush(10)
    handler.close()


def test_secret_inside_an_oversized_value_is_redacted_before_the_preview(logger: logging.Logger) -> None:
    handler, sink = attach(logger)
    logger.info("x", extra={"user": {"password": "hunter2", "api_token": "tok-SECRET", "bio": "b" * 70_000}})
    assert handler.flush(5)
    handler.close()
    (row,) = sink.rows()
    text = json.dumps(row["metadata"])
    assert "hunter2" not in text and "tok-SECRET" not in text
    assert handler.stats()["redacted"] >= 2


def test_close_with_the_sink_down_stops_the_listener(logger: logging.Logger) -> None:
    sink = RecordingSink()
    sink.fail = True
    handler, _ = attach(logger, sink, close_timeout=0.3, reconnect_delay=10.0)
    logger.info("x")
    handler.close()
    thread = handler._thread
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()
    assert handler.stats()["lost"] == 1


def test_direct_mode_drops_and_counts_an_unstorable_record_without_blocking_the_rest(
    tmp_path: Path,
) -> None:
    log = logging.getLogger(f"activity.direct.{uuid.uuid4().hex}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = ActivityHandler(database_url=f"sqlite:///{tmp_path / 'd.db'}", direct=True)
    log.addHandler(handler)
    bad = log.makeRecord(log.name, logging.INFO, __file__, 1, "bad", None, None)
    bad.created = 1.7e12  # milliseconds given as seconds: year 55,000
    log.handle(bad)
    for i in range(100):
        log.info("good", extra={"i": i})
    assert handler.flush(10), handler.stats()
    handler.close()
    assert handler.stats()["rejected"] == 1
    conn = sqlite3.connect(tmp_path / "d.db")
    assert conn.execute("select count(*) from activity_logs").fetchone() == (100,)
    conn.close()


def test_close_while_threads_log_refuses_then_accounts_for_every_record(logger: logging.Logger) -> None:
    # a small queue: what close() must still ship stays well inside its budget on a busy machine
    handler, sink = attach(logger, batch_size=50, flush_interval=0.01, queue_size=5000)
    offered = [0] * 4
    stop = threading.Event()

    def spam(k: int) -> None:
        while not stop.is_set():
            logger.info("x", extra={"k": k, "i": offered[k]})
            offered[k] += 1

    threads = [threading.Thread(target=spam, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    threading.Event().wait(0.2)
    handler.close()  # while the threads keep logging
    stop.set()
    for t in threads:
        t.join()
    stats = handler.stats()
    stored = {(r["metadata"]["k"], r["metadata"]["i"]) for r in sink.rows()}
    assert len(stored) == len(sink.rows()) == stats["sent"]
    assert stats["queue_depth"] == 0 and stats["in_hand"] == 0 and stats["unaccounted"] == 0, stats
    assert sum(offered) == stats["sent"] + stats["dropped_closed"] + stats["dropped_queue_full"], stats
    assert stats["dropped_closed"] > 0  # the threads did log into the closing handler


def test_a_record_created_at_nan_is_dropped_alone_and_its_batch_goes_on(logger: logging.Logger) -> None:
    handler, sink = attach(logger, batch_size=101, flush_interval=5.0)
    for i in range(101):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "x", None, None,
                                   extra={"i": i})
        if i == 50:
            record.created = float("nan")
        logger.handle(record)
    assert handler.flush(5)
    stats = handler.stats()
    assert sorted(r["metadata"]["i"] for r in sink.rows()) == [i for i in range(101) if i != 50]
    assert stats["dropped_unencodable"] == 1 and stats["unaccounted"] == 0, stats
    assert sorted(r["seq"] for r in sink.rows()) == list(range(1, 101))  # no gap: it took no seq
    handler.close()


def test_a_message_whose_str_and_repr_raise_is_stored_with_a_placeholder(logger: logging.Logger) -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    handler, sink = attach(logger)
    for msg in (Hostile(), "after"):  # straight to the handler: pytest's own capture would choke
        handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, None, None))
    assert handler.flush(5)
    rows = sink.rows()
    assert [r["description"] for r in rows][1] == "after"
    assert "unprintable Hostile" in rows[0]["description"]
    assert handler.stats()["dropped_emit_error"] == 0
    handler.close()


def test_flush_then_close_share_one_close_timeout(logger: logging.Logger) -> None:
    """logging.shutdown() flushes, then closes: with the sink down, the close must not wait a
    second full close_timeout (it did: exit took 2 x close_timeout)."""
    sink = RecordingSink()
    sink.fail = True
    handler, _ = attach(logger, sink, close_timeout=1.0, reconnect_delay=0.05)
    logger.info("x")
    assert not handler.flush()  # the bare flush logging.shutdown() makes times out
    assert handler._close_budget() < 0.5  # what is left of the same budget
    handler.close()
    assert handler.stats()["lost"] == 1 and handler.stats()["unaccounted"] == 0


def test_a_send_that_timed_out_is_unconfirmed_not_lost(logger: logging.Logger) -> None:
    class Hanging(RecordingSink):
        def send(self, entries: list[Batch]) -> None:
            raise TimeoutError("no answer")  # like a blackholed network: the XADD may have run

        def unconfirmed(self, exc: BaseException) -> bool:
            return isinstance(exc, TimeoutError)

    handler, _ = attach(logger, Hanging(), close_timeout=0.5, reconnect_delay=0.05)
    for i in range(10):
        logger.info("x", extra={"i": i})
    handler.close()
    stats = handler.stats()
    assert (stats["unconfirmed"], stats["lost"], stats["unaccounted"]) == (10, 0, 0), stats
    assert stats["send_timeouts"] >= 1


def test_spool_is_on_by_default_when_shipping_to_redis(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.delenv("ACTIVITY_LOG_SPOOL_PATH")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    handler = ActivityHandler(redis_url="redis://user:secret@127.0.0.1:1/0", stream="s")
    try:
        assert handler.spool_path is not None
        assert handler.spool_path.startswith(str(tmp_path / "activity_logging" / "spool"))
        assert "secret" not in handler.spool_path
        other = ActivityHandler(redis_url="redis://127.0.0.1:1/0", stream="another")
        assert other.spool_path != handler.spool_path  # a spool replays into its own stream only
        other.close()
    finally:
        handler.close()
    assert ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off").spool_path is None
    direct = ActivityHandler(database_url=f"sqlite:///{tmp_path / 'd.db'}")
    assert direct.spool_path is None  # direct mode spools only where told
    direct.close()


def test_tuning_comes_from_arguments_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from activity_logging.config import HANDLER_TUNABLES, tunable_env

    for name, (kind, _) in HANDLER_TUNABLES.items():
        monkeypatch.setenv(tunable_env(name), "2048" if kind is int else "1.25")
    monkeypatch.setenv("ACTIVITY_LOG_STREAM_SHARDS", "4")  # at most shards.MAX_STREAM_SHARDS
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off", batch_size=7)
    try:
        assert handler.batch_size == 7  # the argument wins
        assert (handler.queue_size, handler.max_record_bytes) == (2048, 2048)
        assert handler.stream_shards == 4
        assert handler.shard_stream in shard_streams(handler.stream, 4)
        assert (handler.flush_interval, handler.close_timeout, handler.reconnect_delay,
                handler.checkpoint_interval) == (1.25,) * 4
    finally:
        handler.close()
    monkeypatch.setenv("ACTIVITY_LOG_QUEUE_SIZE", "lots")
    with pytest.raises(ConfigurationError, match="ACTIVITY_LOG_QUEUE_SIZE"):
        ActivityHandler(redis_url="redis://127.0.0.1:1/0")


def test_a_misspelt_argument_names_the_closest_valid_one() -> None:
    with pytest.raises(ConfigurationError, match=r"'redis_ur' \(did you mean 'redis_url'\?\)"):
        ActivityHandler(redis_ur="redis://127.0.0.1:1/0")


def test_a_handler_that_fails_to_build_is_never_left_registered() -> None:
    registered = logging._handlerList  # type: ignore[attr-defined]
    before = set(registered)
    for bad in ({"close_timeout": "soon"}, {"queue_size": 0}, {"redis_url": "http://x"},
                {"redis_ur": "x"}, {"close_timeout": float("inf")}):
        with pytest.raises(ConfigurationError):
            ActivityHandler(**bad)
    left = [ref() for ref in registered if ref not in before and ref() is not None]
    # what logging.shutdown() would flush and close at exit: no half-built ActivityHandler
    assert not [h for h in left if isinstance(h, ActivityHandler)]


def test_close_against_a_slow_sink_spools_what_it_cannot_send_in_time(
    logger: logging.Logger, tmp_path: Path
) -> None:
    """Redis answers, but slowly: close must not return with records still queued or in a
    send that outlives it (they died uncounted at exit); they are spooled instead."""
    class Slow(RecordingSink):
        def send(self, entries: list[Batch]) -> None:
            threading.Event().wait(0.2)
            super().send(entries)

    sink = Slow()
    handler, _ = attach(logger, sink, spool_path=str(tmp_path), batch_size=10,
                        flush_interval=5.0, close_timeout=1.0)
    for i in range(500):
        logger.info("x", extra={"i": i})
    handler.close()
    stats = handler.stats()
    assert (stats["queue_depth"], stats["in_hand"], stats["unaccounted"]) == (0, 0, 0), stats
    assert stats["sent"] + stats["spool_pending"] == 500 and stats["spool_pending"] > 0, stats


def test_a_record_emitted_while_close_runs_is_shipped_not_stranded(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller past the closed check, preempted inside emit, while close() runs to the end:
    close waits for it (the handler lock) and ships its record."""
    import activity_logging.snapshot as snapshot_module

    entered = threading.Event()
    real = snapshot_module.current_context

    def slow_context() -> Any:
        if threading.current_thread().name == "late-caller":
            entered.set()
            threading.Event().wait(0.3)
        return real()

    handler, sink = attach(logger)
    monkeypatch.setattr(snapshot_module, "current_context", slow_context)
    caller = threading.Thread(target=logger.info, args=("late",), name="late-caller")
    caller.start()
    assert entered.wait(5)
    handler.close()
    caller.join()
    stats = handler.stats()
    assert (stats["sent"], stats["queue_depth"], stats["unaccounted"]) == (1, 0, 0), stats
    assert [r["activity_type"] for r in sink.rows()] == ["late"]


def test_the_default_spool_folder_names_the_redis_database_not_its_spelling() -> None:
    from activity_logging.config import resolve_spool_path

    def folder(url: str) -> str | None:
        return resolve_spool_path(None, redis_url=url, stream="s", environ={"HOME": "/home/u"})

    assert folder("redis://h:6379/0?db=1") != folder("redis://h:6379/0?db=2")  # ?db= wins
    assert folder("unix:///run/r.sock?db=1") != folder("unix:///run/r.sock?db=2")
    assert folder("redis://H/0") == folder("redis://h:6379/0") == folder("redis://u:pw@h:6379")
    with pytest.raises(ConfigurationError, match="invalid port"):
        folder("redis://h:port/0")


def test_a_user_without_a_home_still_gets_a_private_spool_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    from pathlib import Path as P

    from activity_logging.config import default_state_dir

    def no_home() -> P:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(P, "home", staticmethod(no_home))
    expected = P(tempfile.gettempdir()) / f"activity_logging-{__import__('os').getuid()}"
    assert default_state_dir({}) == expected  # an arbitrary container uid: builds and spools
    assert default_state_dir({"HOME": "relative/home"}) == expected
