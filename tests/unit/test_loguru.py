"""loguru with an ActivityHandler as its sink: bound fields map like stdlib ``extra``.

A real loguru logger (``logger.add(handler)``, loguru's standard sink) into a real
ActivityHandler on the embedded SQLite store, rows read back raw.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from activity_logging import activity_context
from activity_logging.schema import COLUMNS as ACTIVITY_COLUMNS
from activity_logging.snapshot import Snapshotter
from tests.sqlite_rows import Store

snapshot_extras = Snapshotter().extras

# The sink options docs/web.md shows: a callable format is not followed by loguru's
# "\n{exception}", so the message stays the activity type.
SINK_OPTIONS: dict[str, Any] = {"format": lambda record: "{message}", "level": "DEBUG"}

CALL_FIELDS: dict[str, Any] = {
    "actor_type": "agent", "actor_id": "agent-7", "target_type": "call", "target_id": "c-1",
    "changes": {"status": {"old": None, "new": "ringing"}}, "queue": "sales",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "loguru.db")
    sink_id = logger.add(store.handler, **SINK_OPTIONS)
    try:
        yield store
    finally:
        logger.remove(sink_id)  # loguru's standard sink closes the handler here
        store.handler.close()


def test_loguru_passes_bound_fields_as_one_extra_attribute() -> None:
    # what the mapping relies on: loguru's standard sink puts the whole bound dict on the
    # LogRecord as a single "extra" attribute
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    sink_id = logger.add(Keep(), **SINK_OPTIONS)
    try:
        logger.bind(actor_id="agent-7", queue="sales").info("call_created")
    finally:
        logger.remove(sink_id)
    (record,) = records
    assert record.extra == {"actor_id": "agent-7", "queue": "sales"}  # type: ignore[attr-defined]
    assert record.getMessage() == "call_created"


def test_loguru_bound_fields_become_columns_and_metadata(store: Store) -> None:
    logger.bind(**CALL_FIELDS).info("call_created")
    (row,) = store.rows()
    assert (row["activity_type"], row["severity"]) == ("call_created", "info")
    assert (row["actor_type"], row["actor_id"], row["target_type"], row["target_id"]) == (
        "agent", "agent-7", "call", "c-1")
    assert row["changes"] == {"status": {"old": None, "new": "ringing"}}
    assert row["metadata"] == {"queue": "sales"}  # not nested under metadata.extra


def test_loguru_and_stdlib_extra_store_the_same_row(store: Store) -> None:
    fields = {**CALL_FIELDS, "description": "Call created", "ip_address": "192.0.2.10",
              "metadata": {"name": "Ann"}}
    logger.bind(**fields).warning("call_created")
    stdlib = logging.getLogger("activity.stdlib_twin")
    stdlib.addHandler(store.handler)
    stdlib.propagate = False
    stdlib.warning("call_created", extra=fields)
    from_loguru, from_stdlib = store.rows()
    differ = {"id", "timestamp", "seq", "logger"}  # per record, and loguru names the module
    for column in ACTIVITY_COLUMNS:
        if column not in differ:
            assert from_loguru[column] == from_stdlib[column], column
    assert from_loguru["metadata"] == {"name": "Ann", "queue": "sales"}
    assert from_loguru["logger"] == __name__


def test_loguru_contextualize_and_the_request_context_arrive(store: Store) -> None:
    with activity_context(request_id="req-ctx", ip_address="192.0.2.1", actor_id="from-context"), \
            logger.contextualize(tenant="t-1"):
        logger.bind(actor_id="bound-actor").info("lead_updated")
    (row,) = store.rows()
    assert (row["request_id"], row["ip_address"]) == ("req-ctx", "192.0.2.1")
    assert row["actor_id"] == "bound-actor"  # what the caller bound wins over the context
    assert row["metadata"] == {"tenant": "t-1"}


def test_loguru_fields_are_snapshotted_at_call_time(store: Store) -> None:
    changes: dict[str, Any] = {"status": {"old": "ringing", "new": "answered"}}
    logger.bind(changes=changes).info("call_updated")
    changes["status"]["new"] = "tampered"
    (row,) = store.rows()
    assert row["changes"] == {"status": {"old": "ringing", "new": "answered"}}


def test_loguru_levels_map_onto_severities(store: Store) -> None:
    logger.debug("d")
    logger.success("s")  # loguru's own level (25) is stored as info, the named level below it
    logger.critical("c")
    assert [(r["activity_type"], r["severity"], r["level"]) for r in store.rows()] == [
        ("d", "debug", 10), ("s", "info", 25), ("c", "critical", 50)]


def test_loguru_exception_keeps_the_message_as_the_activity_type(store: Store) -> None:
    try:
        1 / 0  # noqa: B018 - the exception is the point
    except ZeroDivisionError:
        logger.bind(target_id="c-9").exception("call_failed")
    (row,) = store.rows()
    assert (row["activity_type"], row["severity"], row["target_id"]) == ("call_failed", "error", "c-9")


def test_loguru_exception_traceback_is_stored(store: Store) -> None:
    try:
        1 / 0  # noqa: B018 - the exception is the point
    except ZeroDivisionError:
        logger.exception("call_failed")
    (row,) = store.rows()
    assert "ZeroDivisionError: division by zero" in row["metadata"]["exception"]


@pytest.mark.parametrize("changes", ["absent", None, {}], ids=["absent", "none", "empty"])
def test_no_changes_is_stored_as_no_value(store: Store, changes: Any) -> None:
    bound = logger if changes == "absent" else logger.bind(changes=changes)
    bound.info("agent_login")
    (row,) = store.rows()
    assert row["changes"] is None
    assert row["changes_sql_type"] == "null"  # SQL NULL, not the JSON text 'null' or '{}'


# --- Snapshotter.extras: the mapping itself -------------------------------------------------


def _record_attrs(**extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)
    record.__dict__.update(extra)
    return record.__dict__


def test_nested_extra_dict_is_unpacked_and_wins_over_filter_added_attributes() -> None:
    # a ContextFilter on the handler adds context keys beside loguru's "extra": the caller's
    # bound value must still win, as with stdlib extra
    attrs = _record_attrs(extra={"actor_id": "bound", "queue": "sales"}, actor_id="ctx", request_id="r")
    snap = snapshot_extras(attrs, {"ip_address": "192.0.2.1", "queue": "ctx"})
    assert snap == {"actor_id": "bound", "queue": "sales", "request_id": "r", "ip_address": "192.0.2.1"}
    assert attrs["extra"] == {"actor_id": "bound", "queue": "sales"}  # the record is not changed


@pytest.mark.parametrize("value", ["text", ["a"], None, 3])
def test_extra_attribute_that_is_not_a_dict_stays_metadata(value: Any) -> None:
    snap = snapshot_extras(_record_attrs(extra=value))
    assert snap == {"extra": value}


def test_empty_nested_extra_leaves_nothing_to_store() -> None:
    assert snapshot_extras(_record_attrs(extra={})) is None
