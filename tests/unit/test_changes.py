"""One shape of ``changes``: changes_between builds it, build_activity normalises to it."""

from __future__ import annotations

import contextlib
import enum
import logging
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

import activity_logging
from activity_logging import ActivityHandler, changes_between
from activity_logging.changes import change_items, format_changes
from activity_logging.rows import activity_from_record, build_activity


class Status(enum.Enum):
    RINGING = "ringing"
    ENDED = "ended"


@dataclass
class CallDC:
    id: int
    status: str = "ringing"
    tags: list[str] = field(default_factory=list)


class CallModel(BaseModel):
    id: int
    status: str = "ringing"
    at: datetime | None = None


class PlainCall:
    def __init__(self, status: str) -> None:
        self.id = 7
        self.status = status
        self._sa_instance_state = object()  # an ORM's machinery: not a field


class SlottedCall:
    __slots__ = ("id", "status")

    def __init__(self, status: str) -> None:
        self.id = 7
        self.status = status


class OldStyleModel:
    """pydantic 1 look-alike: ``dict()`` only."""

    def __init__(self, **values: Any) -> None:
        self._values = values

    def dict(self) -> dict[str, Any]:
        return dict(self._values)


def test_changes_between_is_exported_from_the_package() -> None:
    assert "changes_between" in activity_logging.__all__
    assert activity_logging.changes_between is changes_between


@pytest.mark.parametrize(("before", "after"), [
    ({"id": 7, "status": "ringing"}, {"id": 7, "status": "ended"}),
    (CallDC(7), CallDC(7, "ended")),
    (CallModel(id=7), CallModel(id=7, status="ended")),
    (PlainCall("ringing"), PlainCall("ended")),
    (SlottedCall("ringing"), SlottedCall("ended")),
    (OldStyleModel(id=7, status="ringing"), OldStyleModel(id=7, status="ended")),
])
def test_only_changed_fields_in_the_one_shape_for_every_kind_of_object(
    before: Any, after: Any
) -> None:
    assert changes_between(before, after) == {"status": {"old": "ringing", "new": "ended"}}


def test_nothing_changed_is_empty_and_empty_is_stored_as_no_value() -> None:
    assert changes_between(CallDC(1), CallDC(1)) == {}
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "x", None, None)
    rec.changes = changes_between({"a": 1}, {"a": 1})
    assert activity_from_record(rec)["changes"] is None


def test_creation_and_deletion_use_none_for_the_missing_side() -> None:
    assert changes_between(None, {"status": "ringing"}) == {
        "status": {"old": None, "new": "ringing"}}
    assert changes_between({"status": "ended"}, None) == {"status": {"old": "ended", "new": None}}
    assert changes_between({"a": 1}, {"b": 2}) == {
        "a": {"old": 1, "new": None}, "b": {"old": None, "new": 2}}


def test_fields_limits_and_orders_the_comparison() -> None:
    before = {"a": 1, "b": 1, "c": 1}
    after = {"a": 2, "b": 2, "c": 2}
    assert list(changes_between(before, after, fields=["c", "a"])) == ["c", "a"]
    assert changes_between(before, after, fields="b") == {"b": {"old": 1, "new": 2}}


def test_values_are_json_safe_as_the_row_will_hold_them() -> None:
    when = datetime(2026, 3, 10, 12, tzinfo=UTC)
    ident = uuid.UUID(int=5)
    got = changes_between(
        {"at": None, "id": None, "amount": Decimal("1.10"), "state": Status.RINGING,
         "owner": CallModel(id=1), "nested": CallDC(1), "tags": {"x"}},
        {"at": when, "id": ident, "amount": Decimal("2.50"), "state": Status.ENDED,
         "owner": CallModel(id=2), "nested": CallDC(2), "tags": ("x", "y")},
    )
    assert got == {
        "at": {"old": None, "new": "2026-03-10T12:00:00+00:00"},
        "id": {"old": None, "new": str(ident)},
        "amount": {"old": "1.10", "new": "2.50"},
        "state": {"old": "ringing", "new": "ended"},
        "owner": {"old": {"id": 1, "status": "ringing", "at": None},
                  "new": {"id": 2, "status": "ringing", "at": None}},
        "nested": {"old": {"id": 1, "status": "ringing", "tags": []},
                   "new": {"id": 2, "status": "ringing", "tags": []}},
        "tags": {"old": ["x"], "new": ["x", "y"]},
    }
    assert orjson.loads(orjson.dumps(got)) == got


def test_values_that_store_the_same_are_not_a_change_but_types_are() -> None:
    assert changes_between({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}) == {}
    assert changes_between({"a": (1, 2)}, {"a": [1, 2]}) == {}
    assert changes_between({"a": True}, {"a": 1}) == {"a": {"old": True, "new": 1}}
    assert changes_between({"a": 0}, {"a": False}) == {"a": {"old": 0, "new": False}}


def test_values_without_fields_are_compared_whole() -> None:
    assert changes_between("ringing", "ended") == {"value": {"old": "ringing", "new": "ended"}}
    assert changes_between(3, 3) == {}


def test_changes_between_never_raises(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from activity_logging import changes
    from activity_logging._internal import RateLimitedReporter

    monkeypatch.setattr(changes, "reporter", RateLimitedReporter())  # no earlier test's limit

    class Broken:
        def model_dump(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    assert changes_between(Broken(), {"a": 1}) == {}
    assert "could not compare" in capsys.readouterr().err
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    assert changes_between({"a": cyclic}, {"a": None}) == {"a": {"old": {"self": "<cycle>"},
                                                                 "new": None}}


# --- normalisation on the way in -------------------------------------------------------------


def _stored(changes: Any) -> Any:
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_updated", None, None)
    rec.changes = changes
    return activity_from_record(rec)["changes"]


@pytest.mark.parametrize(("given_", "stored"), [
    ({"status": [None, "ringing"]}, {"status": {"old": None, "new": "ringing"}}),
    ({"status": (None, "ringing")}, {"status": {"old": None, "new": "ringing"}}),
    ({"status": ["a", "b"], "n": 3, "agent": {"old": 1, "new": 2}},
     {"status": {"old": "a", "new": "b"}, "n": 3, "agent": {"old": 1, "new": 2}}),
    ({"status": {"old": None, "new": "ringing"}}, {"status": {"old": None, "new": "ringing"}}),
    ({"tags": ["a"], "more": ["a", "b", "c"]}, {"tags": ["a"], "more": ["a", "b", "c"]}),
    ([["status", None, "ringing"]], [["status", None, "ringing"]]),
    ([None, "ringing"], [None, "ringing"]),
    ("ringing", {"value": "ringing"}),
    (3, {"value": 3}),
    ({}, None),
    ([], None),
    ("", None),
    (None, None),
])
def test_build_activity_normalises_exactly_the_documented_shapes(given_: Any, stored: Any) -> None:
    assert _stored(given_) == stored


def test_normalising_does_not_modify_the_wire() -> None:
    wire = {"id": str(uuid.uuid4()), "ts": 1_795_765_778_684_023, "lv": 20, "msg": "x",
            "x": {"changes": {"status": [None, "ringing"]}}}
    row = build_activity(wire, {})
    assert row["changes"] == {"status": {"old": None, "new": "ringing"}}
    assert wire["x"] == {"changes": {"status": [None, "ringing"]}}


# No NUL (the store replaces it) and no secret-looking key (redacted): both change values
# on purpose, on every shape alike.
_KEYS = st.text(alphabet="abcdefold", min_size=1, max_size=3)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10)
    | st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["old", "new", "x"]) | _KEYS, inner, max_size=2),
    max_leaves=6,
)


@given(st.dictionaries(_KEYS, json_values, min_size=1, max_size=4))
def test_the_reader_and_the_normaliser_agree(changes: dict[str, Any]) -> None:
    """change_items reads what build_activity stores as it read what the producer passed."""
    stored = _stored(changes)
    assert change_items(stored) == change_items(changes)
    items = change_items(stored)
    if items is not None:  # what reads as changes is stored in the one shape only
        assert all(isinstance(v, dict) and set(v) <= {"old", "new"} and v
                   for v in stored.values())


def test_both_stores_get_the_one_shape(tmp_path: Path) -> None:
    """The embedded store's direct write normalises too: it stores build_activity's rows,
    as the worker does (worker.py and sinks.py are its only callers)."""
    path = tmp_path / "s.db"
    handler = ActivityHandler(database_url=f"sqlite:///{path}", direct=True)
    log = logging.getLogger("activity.test_changes")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("call_created", extra={"changes": {"status": [None, "ringing"]}})
        assert handler.flush(30.0)
    finally:
        log.removeHandler(handler)
        handler.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (text,) = conn.execute("SELECT changes FROM activity_logs").fetchone()
    assert orjson.loads(text) == {"status": {"old": None, "new": "ringing"}}


def test_change_items_and_format_changes_read_both_forms() -> None:
    assert change_items({"status": {"old": None, "new": "x"}}) == [("status", None, "x")]
    assert change_items({"status": [None, "x"]}) == [("status", None, "x")]
    assert change_items({"status": {"new": "x"}}) == [("status", None, "x")]
    assert change_items(None) == []
    assert change_items({"n": 3}) is None
    assert change_items(["a"]) is None
    assert format_changes({"status": {"old": None, "new": "x"}, "ok": [False, True]}) == (
        'status: null → "x"; ok: false → true')
    assert format_changes(None) == "-"
    assert format_changes({"value": "x"}) == '{"value":"x"}'
