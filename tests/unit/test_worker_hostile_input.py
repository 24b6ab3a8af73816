"""Hostile stream entries cannot stall or bloat the worker: each bound, without servers.

Entries are made as anyone who can write to Redis could make them, and handed to
``_add_entries`` as ``XREADGROUP`` would (bytes keys and values). Each refusal is counted
under its ``refused_*`` counter and becomes one bounded dead letter; the ledger holds:
records read = stored + duplicates + refused (malformed, out of window, by the database).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from typing import Any

import orjson
import pytest

from activity_logging import entry_limits, rows, store
from activity_logging.ids import IdFactory
from activity_logging.worker import ActivityWorker
from activity_logging.worker_stream import _Batch
from tests.fake_store import FakeStore

REDIS = "redis://127.0.0.1:1/0"
PG = "postgresql://postgres@127.0.0.1:1/test"
IDS = IdFactory()


def make_worker(**kw: Any) -> ActivityWorker:
    return ActivityWorker(REDIS, PG, stream="s", **kw)


def record(i: int, *, ts_us: int | None = None, seq: Any = None, **extra: Any) -> dict[str, Any]:
    now_us = int(time.time() * 1_000_000) if ts_us is None else ts_us
    return {"id": IDS.make(now_us, i), "ts": now_us, "lv": 20, "msg": "call_created",
            "lg": "activity", "seq": i + 1 if seq is None else seq, "x": extra}


def entry(records: list[dict[str, Any]], *, n: int | None = None) -> dict[bytes, bytes]:
    """An entry as redis-py returns it: bytes field names and values."""
    return {b"v": b"1", b"n": str(len(records) if n is None else n).encode(), b"p": b"prod",
            b"h": b"host", b"pid": b"42", b"d": orjson.dumps(records)}


def add(worker: ActivityWorker, *entries: dict[bytes, bytes]) -> _Batch:
    batch = _Batch(worker.shards[0])
    worker._add_entries(batch, [(f"{i + 1}-0".encode(), e) for i, e in enumerate(entries)])
    return batch


def test_entry_claiming_too_many_records_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The measured case: one 21 MB entry of 200,000 records. Refused from its ``n`` alone:
    decode_entry is never called, and the dead letter is an excerpt with size and hash."""
    worker = make_worker()
    big = entry([record(i) for i in range(200_000)])
    assert len(big[b"d"]) > 20_000_000
    decoded: list[Any] = []
    monkeypatch.setattr("activity_logging.worker_stream.decode_entry",
                        lambda fields: decoded.append(fields))
    tracemalloc.start()
    try:
        batch = add(worker, big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == []
    assert peak < 4_000_000  # a fifth of the entry itself; decoding it takes ~400 MB
    assert batch.rows == [] and batch.fields == [{}]  # the entry itself is not kept
    (reject,) = batch.rejects
    assert (reject.reason, reject.position) == ("oversized", -1)
    assert "200000 records" in reject.error
    assert len(reject.record) <= entry_limits.MAX_EXCERPT_BYTES
    assert reject.record_bytes == entry_limits.entry_bytes(big)
    import hashlib
    assert reject.sha256 == hashlib.sha256(big[b"d"]).hexdigest()
    stats = worker.stats()
    assert (stats["refused_oversized"], stats["read"], stats["entries_read"]) == (1, 0, 1)


def test_entry_over_the_byte_limit_is_refused_before_decoding() -> None:
    worker = make_worker(max_entry_bytes=100_000)
    fat = entry([record(0, blob="x" * 200_000)])
    batch = add(worker, fat, entry([record(1)]))
    assert [r.reason for r in batch.rejects] == ["oversized"]
    assert "bytes" in batch.rejects[0].error
    assert len(batch.rows) == 1  # the next entry is not held up
    assert worker.stats()["refused_oversized"] == 1


def test_entry_whose_n_lies_is_refused_after_decoding() -> None:
    worker = make_worker(max_entry_records=100)
    batch = add(worker, entry([record(i) for i in range(101)], n=1))
    assert [r.reason for r in batch.rejects] == ["oversized"] and batch.rows == []
    assert worker.stats()["refused_oversized"] == 1 and worker.stats()["read"] == 0


def test_entries_our_own_handler_makes_are_well_within_the_defaults() -> None:
    from activity_logging.config import HANDLER_TUNABLES

    batch_size = int(HANDLER_TUNABLES["batch_size"][1])
    max_record_bytes = int(HANDLER_TUNABLES["max_record_bytes"][1])
    assert 10 * batch_size <= entry_limits.MAX_ENTRY_RECORDS
    assert 2 * batch_size * max_record_bytes <= entry_limits.MAX_ENTRY_BYTES
    assert 4 * max_record_bytes <= rows.MAX_JSON_BYTES


def test_seq_outside_bigint_is_refused_at_build_time_at_once() -> None:
    """The measured case: 10,000 records with seq = 2**63 took ~45 minutes of
    retry-and-sleep, one record at a time. Now they never reach the store."""
    worker = make_worker()
    fake = FakeStore()
    started = time.perf_counter()
    batch = add(worker, entry([record(i, seq=2**63) for i in range(10_000)]))
    asyncio.run(worker._store_batch(batch, fake))
    elapsed = time.perf_counter() - started
    assert batch.rows == [] and fake.calls == 0
    assert len(batch.rejects) == 10_000
    assert {r.reason for r in batch.rejects} == {"malformed"}
    assert "bigint" in batch.rejects[0].error
    assert worker.stats()["refused_malformed"] == 10_000
    assert elapsed < 30  # generous: it takes well under a second; the old path took 45 min
    assert rows.build_activity(record(0, seq=2**63 - 1), {})["seq"] == 2**63 - 1
    assert rows.build_activity(record(0, seq=-(2**63)), {})["seq"] == -(2**63)


@pytest.mark.parametrize("years", [7973, 10, -10])  # 9999, ten years ahead, ten years back
def test_timestamps_outside_the_window_are_refused_before_the_store(years: int) -> None:
    now_us = int(time.time() * 1_000_000)
    ts = now_us + years * 365 * 86_400 * 1_000_000
    ts = min(ts, 253_402_300_799_000_000)  # 9999-12-31, the last day a datetime holds
    worker = make_worker()
    fake = FakeStore()
    batch = add(worker, entry([record(0, ts_us=ts), record(1)]))
    asyncio.run(worker._store_batch(batch, fake))
    assert len(fake.rows) == 1  # the record dated now
    (reject,) = batch.rejects
    assert reject.reason == "out_of_window" and reject.position == 0
    assert reject.record_id == str(uuid.UUID(orjson.loads(reject.record)["id"]))
    assert worker.stats()["refused_out_of_window"] == 1


def test_an_entry_spanning_121_months_asks_the_store_for_no_month_outside_the_window() -> None:
    """The measured case: one 12 KB entry made 121 monthly partitions. Only the months
    inside [now - max_age, now + max_future] can reach the store now."""
    now_us = int(time.time() * 1_000_000)
    month_us = 30 * 86_400 * 1_000_000
    records = [record(i, ts_us=now_us - 60 * month_us + i * month_us) for i in range(121)]
    worker = make_worker()
    batch = add(worker, entry(records))
    months = {(r["timestamp"].year, r["timestamp"].month) for r in batch.rows}
    assert len(months) <= 14  # a year and a day back, a day ahead
    assert len(batch.rows) + len(batch.rejects) == 121
    assert worker.stats()["refused_out_of_window"] == len(batch.rejects) >= 100


def test_window_is_configurable_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from activity_logging.exceptions import ConfigurationError

    monkeypatch.setenv("ACTIVITY_LOG_MAX_AGE", "60")
    monkeypatch.setenv("ACTIVITY_LOG_MAX_ENTRY_RECORDS", "7")
    worker = make_worker(max_future=5.0)
    assert (worker.max_age, worker.max_future, worker.max_entry_records) == (60.0, 5.0, 7)
    now_us = int(time.time() * 1_000_000)
    batch = add(worker, entry([record(0, ts_us=now_us - 120_000_000), record(1)]))
    assert len(batch.rows) == 1 and batch.rejects[0].reason == "out_of_window"
    monkeypatch.setenv("ACTIVITY_LOG_MAX_ENTRY_BYTES", "lots")
    with pytest.raises(ConfigurationError, match="ACTIVITY_LOG_MAX_ENTRY_BYTES"):
        make_worker()
    monkeypatch.delenv("ACTIVITY_LOG_MAX_ENTRY_BYTES")
    with pytest.raises(ConfigurationError, match="max_future"):
        make_worker(max_future=0)


def test_metadata_and_changes_are_bounded_with_a_visible_marker() -> None:
    """The measured case: an 8 MB ``metadata`` was stored as is."""
    worker = make_worker()
    huge = {"blob": "x" * 8_000_000, "keep": "me"}
    big_list = [{"k": i} for i in range(100_000)]
    batch = add(worker, entry([record(0, metadata=huge, changes={"f": {"old": 1, "new": 2}}),
                               record(1, changes=big_list)]))
    first, second = batch.rows
    assert len(orjson.dumps(first["metadata"])) <= rows.MAX_JSON_BYTES
    assert first["metadata"]["keep"] == "me" and len(first["metadata"]["blob"]) < 100_000
    assert first["changes"] == {"f": {"old": 1, "new": 2}}
    assert second["changes"]["_truncated"] is True
    assert second["changes"]["bytes"] > rows.MAX_JSON_BYTES
    assert len(orjson.dumps(second["changes"])) < 2048


def test_a_metadata_of_many_small_keys_is_cut_whole() -> None:
    many = {f"k{i}": i for i in range(50_000)}
    row = rows.build_activity(record(0, **many), {})
    assert row["metadata"]["_truncated"] is True
    assert len(orjson.dumps(row["metadata"])) < 2048


def test_small_entries_skip_measuring_their_json() -> None:
    """The bound costs nothing on the hot path: an entry whose payload is far below the
    bound cannot hold a value over it (``meta["_bytes"]``)."""
    wire = record(0, note="x" * 1000)
    assert rows.build_activity(wire, {"_bytes": 100}, max_json_bytes=500)["metadata"] == {
        "note": "x" * 1000}  # the hint says small: not measured (a wrong hint is the caller's)
    assert rows.build_activity(wire, {"_bytes": 2000}, max_json_bytes=500)[
        "metadata"]["_truncated"] is True
    assert rows.build_activity(wire, {}, max_json_bytes=500)["metadata"]["_truncated"] is True


def test_process_id_outside_integer_is_dropped_not_a_database_error() -> None:
    row = rows.build_activity(record(0), {"pid": "99999999999"})
    assert row["process_id"] is None
    assert rows.build_activity(record(0), {"pid": "²"})["process_id"] is None
    assert rows.build_activity(record(0), {"pid": "4242"})["process_id"] == 4242


def test_text_columns_and_the_exception_are_bounded() -> None:
    from activity_logging.encoding import MAX_VALUE_CHARS
    from activity_logging.schema import TEXT_LIMITS

    wire = record(0, actor_id="a" * 100_000, path="/" * 100_000, user_agent="u" * 100_000)
    wire.update(msg="m" * 100_000, lg="l" * 100_000, exc="e" * 1_000_000)
    row = rows.build_activity(wire, {"h": "h" * 100_000, "p": "p" * 100_000})
    for column, limit in TEXT_LIMITS.items():
        assert row[column] is None or len(row[column]) <= limit, column
    assert len(row["metadata"]["exception"]) == MAX_VALUE_CHARS


def test_one_bad_row_in_ten_thousand_costs_a_bisection_not_a_sleep() -> None:
    """1 bad row in 10,000: 9,999 stored, 1 rejected at once (one try), in about
    2·log2(10,000) inserts and no pause."""
    fake = FakeStore(refuse=lambda row: row["id"] == 4321)
    batch = [{"id": i} for i in range(10_000)]
    started = time.perf_counter()
    result = asyncio.run(store.store_rows(fake, batch))
    elapsed = time.perf_counter() - started
    assert result.inserted == 9_999 and [r.index for r in result.rejected] == [4321]
    assert result.rejected[0].attempts == 1
    assert fake.calls <= 2 * 14 + 1
    assert elapsed < 5  # no RETRY_PAUSE sleeps (they were 0.25 s per bad row)


def test_undecodable_entry_is_kept_as_a_bounded_excerpt() -> None:
    """The measured case: a 5 MB malformed entry was copied whole into the dead stream."""
    worker = make_worker()
    junk = {b"v": b"1", b"n": b"1", b"d": b"[" + b"\x00garbage" * 700_000}
    batch = add(worker, junk)
    (reject,) = batch.rejects
    assert reject.reason == "undecodable" and "EntryFormatError" in reject.error
    assert len(reject.record) <= entry_limits.MAX_EXCERPT_BYTES
    assert reject.record_bytes > 5_000_000
    letter = worker._dead_letters(batch)[0]
    assert "\x00" not in letter.record and letter.source_id == "1-0"
    assert worker.stats()["refused_undecodable"] == 1


class _Replies:
    """Stands in for redis-py's ``xreadgroup``: hands out ``entries``, ``count`` at a time,
    and remembers the counts asked for."""

    def __init__(self, entries: list[dict[bytes, bytes]]) -> None:
        self.entries = [(f"{i + 1}-0".encode(), e) for i, e in enumerate(entries)]
        self.counts: list[int] = []

    async def xreadgroup(self, group: str, consumer: str, streams: dict[str, bytes], *,
                         count: int, block: int | None = None) -> list[Any]:
        self.counts.append(count)
        given, self.entries = self.entries[:count], self.entries[count:]
        return [[b"s", given]] if given else []


def test_big_entries_are_read_a_few_at_a_time_so_one_reply_stays_bounded() -> None:
    """Redis sends an XREADGROUP reply whole: count is cut so that one reply holds about
    max_entry_bytes, one entry while their size is unknown."""
    worker = make_worker(max_entry_bytes=1_000_000, batch_size=100_000)
    fat = [entry([record(i, pad="x" * 300_000)]) for i in range(6)]
    thin = [entry([record(100 + i)]) for i in range(30)]
    replies = _Replies(fat + thin)
    worker._redis = replies  # type: ignore[assignment]  # the read path only calls xreadgroup
    shard = worker.shards[0]
    shard.read_id = b">"
    batch = asyncio.run(worker._read_batch(shard))
    assert len(batch.rows) == 36
    assert replies.counts[0] == 1  # nothing known yet
    assert max(replies.counts[:4]) <= 3  # ~300 KB entries: three per 1 MB reply
    assert replies.counts[-1] > 3  # small entries again: many per reply
