"""@log_activity on sync/async functions and methods; failures; FastAPI dependency injection."""

from __future__ import annotations

import inspect
import logging
import traceback
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request

from activity_logging import ActivityContextMiddleware, activity_context, log_activity
from tests.capture import Capture, TestClient


@dataclass
class Call:
    id: int
    number: str


class CallError(Exception):
    pass


class CallCRUD:
    """The shape of the call-center code the decorator must serve unchanged."""

    def __init__(self) -> None:
        self.next_id = 100

    @log_activity(activity_type="call_created", description="New call record created",
                  target_type="call")
    async def create_call(self, db: Any, call_data: dict[str, Any],
                          background_tasks: Any = None, request: Any = None) -> Call:
        """Create a call."""
        if call_data.get("fail"):
            raise CallError("number is blocked")
        self.next_id += 1
        return Call(self.next_id, call_data["number"])

    @log_activity("call_updated", target_type="call", target_id_arg="call_id")
    def update_call(self, call_id: int, status: str) -> None:
        if status == "bad":
            raise ValueError(f"bad status {status}")

    @staticmethod
    @log_activity("call_checked", target_type="call")
    def check(call_id: int) -> dict[str, int]:
        return {"id": call_id}


@pytest.mark.anyio
async def test_async_method_logs_success_with_target_id_from_the_result(captured: Capture) -> None:
    crud = CallCRUD()
    call = await crud.create_call(None, {"number": "555"}, background_tasks=None, request=None)
    assert call == Call(101, "555")
    (row,) = captured.rows()
    assert (row["activity_type"], row["description"], row["target_type"], row["target_id"],
            row["severity"]) == ("call_created", "New call record created", "call", "101", "info")


@pytest.mark.anyio
async def test_async_failure_logs_error_and_reraises_the_same_exception(captured: Capture) -> None:
    crud = CallCRUD()
    with pytest.raises(CallError) as info:
        await crud.create_call(None, {"number": "1", "fail": True})
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "create_call"  # raised where it was, traceback intact
    (row,) = captured.rows()
    assert (row["activity_type"], row["severity"], row["target_id"]) == (
        "call_created", "error", None)
    assert row["metadata"]["error_type"] == "CallError"
    assert row["metadata"]["error_message"] == "number is blocked"
    assert row["metadata"]["function"] == "CallCRUD.create_call"


def test_sync_method_target_id_from_an_argument_on_success_and_failure(captured: Capture) -> None:
    crud = CallCRUD()
    assert crud.update_call(7, "ok") is None
    with pytest.raises(ValueError, match="bad status"):
        crud.update_call(call_id=8, status="bad")
    rows = captured.rows()
    assert [(r["target_id"], r["severity"]) for r in rows] == [("7", "info"), ("8", "error")]


def test_staticmethod_and_mapping_result(captured: Capture) -> None:
    assert CallCRUD.check(5) == {"id": 5}
    assert CallCRUD().check(6) == {"id": 6}
    assert [r["target_id"] for r in captured.rows()] == ["5", "6"]


def test_plain_sync_function_bare_decorator_and_callable_target_id(captured: Capture) -> None:
    @log_activity
    def ping() -> str:
        return "pong"

    @log_activity("lead_converted", target_type="lead", target_id=lambda r: r["lead"])
    def convert() -> dict[str, str]:
        return {"lead": "L-1"}

    assert ping() == "pong"
    assert convert() == {"lead": "L-1"}
    rows = captured.rows()
    assert [(r["activity_type"], r["target_id"]) for r in rows] == [
        ("ping", None), ("lead_converted", "L-1")]


def test_wrapper_preserves_name_doc_signature_and_kind() -> None:
    wrapped = CallCRUD.create_call
    assert wrapped.__name__ == "create_call"
    assert wrapped.__doc__ == "Create a call."
    assert list(inspect.signature(wrapped).parameters) == [
        "self", "db", "call_data", "background_tasks", "request"]
    assert inspect.iscoroutinefunction(wrapped)
    assert not inspect.iscoroutinefunction(CallCRUD.update_call)


def test_disabled_logger_does_no_work(captured: Capture) -> None:
    calls: list[Any] = []

    def spy(result: Any) -> Any:
        calls.append(result)
        return 1

    @log_activity("quiet", target_id=spy)
    def work() -> int:
        return 3

    logging.getLogger("activity").setLevel(logging.CRITICAL)
    assert work() == 3
    assert calls == []
    assert captured.records == []


def test_logging_problems_never_reach_the_caller(captured: Capture,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def broken(result: Any) -> Any:
        raise KeyError("no id here")

    @log_activity("x", target_id=broken)
    def work() -> str:
        return "fine"

    assert work() == "fine"
    assert "could not log activity" in capsys.readouterr().err


def test_reserved_constant_fields_and_metadata(captured: Capture) -> None:
    @log_activity("user_created", target_type="user", metadata={"source": "admin"},
                  module="accounts", name="creator", channel="web")
    def create() -> dict[str, int]:
        return {"id": 9}

    create()
    (row,) = captured.rows()
    assert row["metadata"] == {"source": "admin", "module": "accounts", "name": "creator",
                               "channel": "web"}


def test_request_argument_fills_request_details_when_no_middleware_did(captured: Capture) -> None:
    class FakeRequest:
        method = "POST"
        client = type("C", (), {"host": "198.51.100.4"})()
        headers = {"user-agent": "curl/8"}
        url = type("U", (), {"path": "/calls"})()

    @log_activity("call_created")
    def create(request: Any = None, background_tasks: Any = None) -> None:
        return None

    create(request=FakeRequest(), background_tasks=object())
    with activity_context(request_id="from-middleware", ip_address="192.0.2.1"):
        create(request=FakeRequest())
    rows = captured.rows()
    assert (str(rows[0]["ip_address"]), rows[0]["user_agent"], rows[0]["http_method"],
            rows[0]["path"]) == ("198.51.100.4", "curl/8", "POST", "/calls")
    assert (str(rows[1]["ip_address"]), rows[1]["request_id"]) == ("192.0.2.1", "from-middleware")


def test_fixed_actor_pair_overrides_context(captured: Capture) -> None:
    @log_activity("system_startup", actor_type="system", actor_id="boot")
    def start() -> None:
        return None

    with activity_context(actor_type="user", actor_id="u1"):
        start()
    (row,) = captured.rows()
    assert (row["actor_type"], row["actor_id"]) == ("system", "boot")


# --- FastAPI dependency injection through the decorator -------------------------------------


class Settings:
    prefix = "C-"


def get_settings() -> Settings:
    return Settings()


def make_api() -> FastAPI:
    app = FastAPI()
    app.add_middleware(ActivityContextMiddleware)

    @app.post("/calls/{number}")
    @log_activity("call_created", "New call record created", "call")
    async def create(number: str, settings: Annotated[Settings, Depends(get_settings)],
                     request: Request, background_tasks: BackgroundTasks,
                     priority: int = 1) -> dict[str, Any]:
        background_tasks.add_task(lambda: None)
        return {"id": settings.prefix + number, "priority": priority,
                "path": request.url.path}

    @app.get("/sync/{n}")
    @log_activity("sync_read", target_type="thing")
    def sync_read(n: int, settings: Annotated[Settings, Depends(get_settings)]) -> dict[str, Any]:
        if n < 0:
            raise ValueError("negative")
        return {"id": n, "prefix": settings.prefix}

    return app


def test_fastapi_dependency_injection_works_through_the_decorator(captured: Capture) -> None:
    with TestClient(make_api()) as client:
        created = client.post("/calls/555?priority=3", headers={"X-Request-ID": "fa-1",
                                                                "User-Agent": "fa-test"})
        read = client.get("/sync/4")
        invalid = client.get("/sync/not-a-number")
    assert created.json() == {"id": "C-555", "priority": 3, "path": "/calls/555"}
    assert read.json() == {"id": 4, "prefix": "C-"}
    assert invalid.status_code == 422  # validation still comes from the real signature
    rows = captured.rows()
    assert [(r["activity_type"], r["target_id"]) for r in rows] == [
        ("call_created", "C-555"), ("sync_read", "4")]
    assert (rows[0]["request_id"], rows[0]["user_agent"]) == ("fa-1", "fa-test")


def test_changes_option_logs_the_results_changes_on_success_only(captured: Capture) -> None:
    @log_activity("call_updated", target_type="call",
                  changes=lambda call: {"number": {"old": None, "new": call.number}})
    def renumber(call: Call, fail: bool = False) -> Call:
        if fail:
            raise CallError("no")
        return call

    @log_activity("call_touched", target_type="call", changes={"touched": [False, True]})
    def touch(call: Call) -> Call:
        return call

    renumber(Call(1, "555"))
    with pytest.raises(CallError):
        renumber(Call(2, "556"), fail=True)
    touch(Call(3, "557"))
    ok, failed, touched = captured.rows()
    assert ok["changes"] == {"number": {"old": None, "new": "555"}}
    assert failed["severity"] == "error" and failed["changes"] is None
    assert touched["changes"] == {"touched": {"old": False, "new": True}}  # pair normalised


def test_a_failing_changes_callable_never_reaches_the_caller(
    captured: Capture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from activity_logging import decorators
    from activity_logging._internal import RateLimitedReporter

    monkeypatch.setattr(decorators, "reporter", RateLimitedReporter())  # no earlier test's limit

    @log_activity("call_updated", target_type="call", changes=lambda _call: 1 / 0)
    def update(call: Call) -> Call:
        return call

    assert update(Call(1, "555")) == Call(1, "555")
    assert captured.rows() == []
    assert "could not log activity" in capsys.readouterr().err
