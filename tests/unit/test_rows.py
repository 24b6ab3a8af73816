"""From a LogRecord to a row: the snapshot at call time, the entry, the row builder, bounds."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activity_logging.encoding import MAX_VALUE_BYTES
from activity_logging.exceptions import EntryFormatError
from activity_logging.ids import IdFactory
from activity_logging.levels import level_to_severity, severity_to_level
from activity_logging.rows import activity_from_record, build_activity
from activity_logging.snapshot import MAX_RECORD_BYTES, Snapshotter, queued_from_record
from activity_logging.wire import WireEncoder, decode_entry


def make_record(msg: str = "call_created", level: int = logging.INFO, args: Any = None, /,
                **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("activity")
    return logger.makeRecord("activity", level, __file__, 1, msg, args, None, extra=extra)


def roundtrip(*records: logging.LogRecord, encoder: WireEncoder | None = None,
              snap: Snapshotter | None = None) -> list[dict[str, Any]]:
    enc = encoder or WireEncoder("producer-1")
    take = (snap if snap is not None else Snapshotter(context=False)).take  # a fresh producer
    entry = enc.encode_batch([take(r) for r in records])
    meta, wire = decode_entry(entry)
    return [build_activity(w, meta) for w in wire]


@pytest.mark.parametrize(
    ("severity", "level", "stored"),
    [("debug", 10, "debug"), ("info", 20, "info"), ("warning", 30, "warning"),
     ("WARN", 30, "warning"), ("error", 40, "error"), ("critical", 50, "critical")],
)
def test_severity_maps_to_level_and_back(severity: str, level: int, stored: str) -> None:
    assert severity_to_level(severity) == level
    assert level_to_severity(level) == stored


def test_unknown_severity_uses_default_and_levels_round_down() -> None:
    assert severity_to_level("loud") == logging.INFO
    assert severity_to_level(None, logging.ERROR) == logging.ERROR
    assert level_to_severity(35) == "warning"
    assert level_to_severity(5) == "debug"
    assert level_to_severity(99) == "critical"


def test_fields_from_extra_become_columns_and_the_rest_metadata() -> None:
    rec = make_record(actor_type="agent", actor_id=42, target_type="call", target_id="c-1",
                      changes={"status": {"old": None, "new": "ringing"}}, queue="sales",
                      ip_address="10.1.2.3", request_id="r-1", description="New call")
    (row,) = roundtrip(rec)
    assert row["activity_type"] == "call_created"
    assert row["description"] == "New call"
    assert row["actor_type"] == "agent"
    assert row["actor_id"] == "42"
    assert row["target_type"] == "call"
    assert row["target_id"] == "c-1"
    assert row["changes"] == {"status": {"old": None, "new": "ringing"}}
    assert row["metadata"] == {"queue": "sales"}
    assert row["ip_address"] == "10.1.2.3"
    assert row["request_id"] == "r-1"
    assert row["severity"] == "info"
    assert row["level"] == logging.INFO
    assert row["logger"] == "activity"
    assert row["producer_id"] == "producer-1"
    assert row["seq"] == 1
    assert isinstance(row["id"], uuid.UUID)
    assert row["id"].version == 7
    assert row["timestamp"] == datetime.fromtimestamp(
        int(rec.created * 1_000_000) / 1_000_000, UTC)


def test_activity_type_from_extra_wins_over_message() -> None:
    rec = make_record("something happened %s", logging.INFO, ("now",), activity_type="lead_created")
    (row,) = roundtrip(rec)
    assert row["activity_type"] == "lead_created"
    assert row["description"] == "something happened now"


def test_snapshot_is_taken_at_call_time() -> None:
    changes = {"status": ["a", "b"]}
    tags = ["x"]
    rec = make_record(changes=changes, tags=tags)
    queued = queued_from_record(rec)
    changes["status"] = ["mutated"]
    tags.append("y")
    meta, (wire,) = decode_entry(WireEncoder("p").encode_batch([queued]))
    row = build_activity(wire, meta)
    assert row["changes"] == {"status": {"old": "a", "new": "b"}}  # the pair, normalised
    assert row["metadata"]["tags"] == ["x"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


def test_hostile_extra_never_breaks_encoding() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    rec = make_record(
        blob=b"\x00\xffbytes", cyc=cycle, big=2**100, odd_keys={(1, 2): "t", 3: "x"},
        obj=object(), bad=Unprintable(), nul="a\x00b", st={1, 2}, huge="x" * 1_000_000,
        nested=[[[[["deep"]]]]],
    )
    (row,) = roundtrip(rec)
    meta = row["metadata"]
    assert meta["cyc"]["self"] == "<cycle>"
    assert meta["big"] == str(2**100)
    assert meta["nul"] == "a\ufffdb"
    assert "\x00" not in meta["blob"]
    assert sorted(meta["st"]) == [1, 2]
    assert len(meta["huge"]) <= 16_384
    assert meta["bad"].startswith("<unprintable")
    assert meta["nested"] == [[[[["deep"]]]]]


def test_oversized_container_is_cut_with_a_marker() -> None:
    rec = make_record(changes={"k": "v" * (MAX_RECORD_BYTES * 2)}, small="kept")
    (row,) = roundtrip(rec)
    assert row["changes"]["_truncated"] is True
    assert row["changes"]["bytes"] > MAX_VALUE_BYTES
    assert row["metadata"] == {"small": "kept"}


def test_oversized_record_is_truncated_and_counted() -> None:
    snap = Snapshotter(max_record_bytes=4096, context=False)
    rec = make_record(actor_id="a1", **{f"k{i}": "v" * 1000 for i in range(20)})
    (row,) = roundtrip(rec, snap=snap)
    assert snap.truncated == 1
    assert row["actor_id"] == "a1"
    assert row["metadata"]["_truncated"]["original_bytes"] > 4096


def test_invalid_ip_is_kept_in_metadata_not_the_inet_column() -> None:
    (row,) = roundtrip(make_record(ip_address="testclient"))
    assert row["ip_address"] is None
    assert row["metadata"]["invalid_ip_address"] == "testclient"


def test_explicit_metadata_dict_is_merged() -> None:
    (row,) = roundtrip(make_record(metadata={"name": "reserved-name"}, other=1))
    assert row["metadata"] == {"name": "reserved-name", "other": 1}


def test_exception_text_is_kept() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("activity").makeRecord(
            "activity", logging.ERROR, __file__, 1, "system_error", None, __import__("sys").exc_info())
    (row,) = roundtrip(rec)
    assert "ValueError: boom" in row["metadata"]["exception"]
    assert row["severity"] == "error"


def test_ids_are_unique_and_time_ordered() -> None:
    ids = IdFactory()
    made = [ids.make(1_700_000_000_000_000 + i * 7, i) for i in range(50_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(uuid.UUID(m).version == 7 for m in made[:100])


def test_unknown_entry_version_is_refused() -> None:
    with pytest.raises(EntryFormatError):
        decode_entry({b"v": b"99", b"d": b"[]"})
    with pytest.raises(EntryFormatError):
        decode_entry({"v": "1", "d": b"not json"})
    with pytest.raises(EntryFormatError):
        build_activity({"msg": "no id"}, {})


def test_activity_from_record_matches_the_pipeline() -> None:
    row = activity_from_record(make_record(actor_id="7"))
    assert row["actor_id"] == "7"
    assert row["activity_type"] == "call_created"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda k: k not in logging.LogRecord(
        "n", 20, "p", 1, "m", None, None).__dict__ and k not in ("message", "asctime", "taskName")),
    json_values, max_size=8))
def test_any_extra_encodes_and_builds_a_row(extra: dict[str, Any]) -> None:
    (row,) = roundtrip(make_record(**extra))
    # everything stored must be encodable again, with no NUL characters (PostgreSQL refuses them)
    stored = {k: v for k, v in row.items() if k not in ("id", "timestamp")}
    orjson.dumps(stored)

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    assert not [s for s in strings(stored) if "\x00" in s]
