"""Helpers: each usable directly, awaited and as a background task; reserved keys; never raising."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from activity_logging import (
    ActivityContextMiddleware,
    ActivityType,
    Severity,
    activity_context,
    activity_logger,
    log_agent_activity,
    log_call_activity,
    log_lead_activity,
    log_system_event,
    log_user_activity,
)
from activity_logging.snapshot import RESERVED_EXTRA_KEYS
from tests.capture import Capture, TestClient


def test_activity_type_and_severity_are_the_plain_strings() -> None:
    assert ActivityType.CALL_CREATED == "call_created"
    assert {s.value for s in Severity} == {"debug", "info", "warning", "error", "critical"}
    assert len({t.value for t in ActivityType}) == 17


@pytest.mark.parametrize(
    ("helper", "id_kw", "target_type"),
    [
        (log_call_activity, "call_id", "call"),
        (log_agent_activity, "agent_id", "agent"),
        (log_lead_activity, "lead_id", "lead"),
        (log_user_activity, "user_id", "user"),
    ],
)
def test_target_helpers_set_target_and_log_once(
    captured: Capture, helper: Any, id_kw: str, target_type: str
) -> None:
    result = helper("something_happened", **{id_kw: 42}, description="d", extra_key="x")
    rows = captured.rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["activity_type"], row["target_type"], row["target_id"]) == (
        "something_happened", target_type, "42")
    assert row["description"] == "d"
    assert row["metadata"] == {"extra_key": "x"}
    assert row["severity"] == "info"
    assert not inspect.iscoroutine(result)


@pytest.mark.anyio
async def test_helpers_can_be_awaited_and_log_exactly_once(captured: Capture) -> None:
    await log_agent_activity("agent_status_changed", agent_id=7, description="Status changed",
                             changes={"status": {"old": "idle", "new": "busy"}})
    await log_call_activity(activity_type="call_hangup", call_id="c1", actor_id="a1")
    await log_system_event("system_startup", "boot")
    assert await activity_logger.log_async(activity_type="system_event", description="maint",
                                           actor_type="system", severity="info")
    rows = captured.rows()
    assert [r["activity_type"] for r in rows] == [
        "agent_status_changed", "call_hangup", "system_startup", "system_event"]
    assert rows[0]["changes"] == {"status": {"old": "idle", "new": "busy"}}
    assert (rows[1]["actor_type"], rows[1]["actor_id"]) == ("agent", "a1")
    assert (rows[2]["actor_type"], rows[3]["actor_type"]) == ("system", "system")


def test_log_async_is_a_coroutine_function_and_log_is_not() -> None:
    assert inspect.iscoroutinefunction(activity_logger.log_async)
    assert not inspect.iscoroutinefunction(activity_logger.log)


@pytest.mark.parametrize(
    ("severity", "level", "stored"),
    [("debug", logging.DEBUG, "debug"), ("warning", logging.WARNING, "warning"),
     ("WARN", logging.WARNING, "warning"), (Severity.ERROR, logging.ERROR, "error"),
     ("critical", logging.CRITICAL, "critical"), (None, logging.INFO, "info"),
     ("nonsense", logging.INFO, "info")],
)
def test_severity_maps_onto_the_logging_level(
    captured: Capture, severity: Any, level: int, stored: str
) -> None:
    activity_logger.log("x", severity=severity)
    log_system_event("y", severity=severity)
    assert [r.levelno for r in captured.records] == [level, level]
    assert {r["severity"] for r in captured.rows()} == {stored}


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(sorted(RESERVED_EXTRA_KEYS)),
    # values the store keeps as they are (NUL and >64-bit ints are cleaned, by design)
    value=st.integers(-(2**53), 2**53)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
)
def test_reserved_keyword_arguments_are_carried_into_metadata(key: str, value: Any) -> None:
    handler = Capture()
    log = logging.getLogger("activity.reserved")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        activity_logger.log("reserved_probe", logger=log, **{key: value})
        log_call_activity("reserved_probe", call_id=1, logger=log, **{key: value})
    finally:
        log.removeHandler(handler)
    rows = handler.rows()
    assert len(rows) == 2
    for row in rows:
        assert row["activity_type"] == "reserved_probe"
        assert row["metadata"][key] == value


def test_reserved_keys_merge_with_an_explicit_metadata_dict(captured: Capture) -> None:
    log_lead_activity("lead_created", lead_id=3, metadata={"source": "web"}, name="Ann",
                      message="hello", module="crm")
    (row,) = captured.rows()
    assert row["metadata"] == {"source": "web", "name": "Ann", "message": "hello", "module": "crm"}


class _Exploding(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("handler is broken")

    def handle(self, record: logging.LogRecord) -> bool:  # bypass Handler's own guard
        self.emit(record)
        return True


def test_helpers_never_raise_into_the_caller(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("activity")
    log.addHandler(_Exploding())
    log.setLevel(logging.DEBUG)
    log.propagate = False
    assert activity_logger.log("x", logger="activity") is False
    log_call_activity("x", call_id=1)
    log_agent_activity("x", agent_id=1)
    log_lead_activity("x", lead_id=1)
    log_user_activity("x", user_id=1)
    log_system_event("x_event", severity="error")
    assert "could not log an activity" in capsys.readouterr().err


def test_disabled_logger_makes_no_record(captured: Capture) -> None:
    logging.getLogger("activity").setLevel(logging.ERROR)
    assert activity_logger.log("quiet", severity="info") is False
    log_call_activity("quiet", call_id=1)
    log_system_event("loud", severity="critical")
    assert [r.levelno for r in captured.records] == [logging.CRITICAL]


def test_explicit_actor_wins_as_a_pair_over_the_context(captured: Capture) -> None:
    with activity_context(actor_type="user", actor_id="u1", request_id="r1"):
        log_system_event("system_error", "disk full")
        activity_logger.log("system_event", actor_type="system")
        log_call_activity("call_hangup", call_id=5, actor_id="agent-9")
        log_call_activity("call_updated", call_id=5)
        log_call_activity("call_ended", call_id=5, actor_id=None)  # a call without an agent
    rows = captured.rows()
    assert [(r["actor_type"], r["actor_id"]) for r in rows] == [
        ("system", None), ("system", None), ("agent", "agent-9"), ("user", "u1"), ("user", "u1")]
    assert {r["request_id"] for r in rows} == {"r1"}


def test_record_points_at_the_application_line(captured: Capture) -> None:
    log_call_activity("call_created", call_id=1)
    activity_logger.log("x")
    assert {r.filename for r in captured.records} == {"test_helpers.py"}
    assert {r.funcName for r in captured.records} == {"test_record_points_at_the_application_line"}


def test_helpers_run_as_starlette_background_tasks_with_the_request_context(
    captured: Capture,
) -> None:
    async def hangup(request: Request) -> JSONResponse:
        tasks = BackgroundTasks()
        tasks.add_task(log_call_activity, activity_type="call_hangup", call_id="c-1",
                       description="Call ended by agent", actor_id="agent-2")
        tasks.add_task(activity_logger.log_async, activity_type="system_event",
                       description="bg async", actor_type="system", severity="info")
        tasks.add_task(log_agent_activity, "agent_status_changed", agent_id="agent-2")
        return JSONResponse({"ok": True}, background=tasks)

    app = Starlette(routes=[Route("/hangup", hangup, methods=["POST"])])
    wrapped = ActivityContextMiddleware(app)
    with TestClient(wrapped) as client:
        response = client.post("/hangup", headers={"X-Request-ID": "req-bg-1",
                                                   "User-Agent": "pytest-agent"})
    assert response.status_code == 200
    rows = captured.rows()
    assert sorted(r["activity_type"] for r in rows) == [
        "agent_status_changed", "call_hangup", "system_event"]
    for row in rows:
        assert row["request_id"] == "req-bg-1"
        assert row["user_agent"] == "pytest-agent"
        assert row["path"] == "/hangup"
        assert row["http_method"] == "POST"


def test_helpers_store_the_one_changes_shape_whatever_form_was_passed(captured: Capture) -> None:
    from dataclasses import dataclass, replace

    from activity_logging import changes_between

    @dataclass
    class Agent:
        id: str
        status: str

    before = Agent("a1", "idle")
    after = replace(before, status="busy")
    log_agent_activity("agent_status_changed", agent_id="a1",
                       changes=changes_between(before, after))
    log_agent_activity("agent_status_changed", agent_id="a1", changes={"status": ["idle", "busy"]})
    activity_logger.log("agent_status_changed", changes={"status": ("idle", "busy")})
    rows = captured.rows()
    assert [r["changes"] for r in rows] == [{"status": {"old": "idle", "new": "busy"}}] * 3
