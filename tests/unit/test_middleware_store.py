"""The issue's snippets, unchanged, in a FastAPI app: their activities reach the embedded store.

Through the real ``ActivityHandler`` writing to SQLite, with request id, client ip (via a
trusted proxy) and user agent filled in by ``ActivityContextMiddleware``. The same app is
used by tests/integration/test_web_redis.py for the Redis → worker → PostgreSQL path.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Request

from activity_logging import (
    ActivityContextMiddleware,
    ActivityHandler,
    activity_logger,
    log_activity,
    log_agent_activity,
    log_call_activity,
)

PROXY = "10.0.0.9"


@dataclass
class Call:
    id: int
    number: str


@dataclass
class Agent:
    id: str
    status: str


class CallCRUD:
    def __init__(self) -> None:
        self.calls: dict[int, Call] = {}

    @log_activity(activity_type="call_created", description="New call record created", target_type="call")
    async def create_call(self, db, call_data, background_tasks=None, request=None) -> Call:
        call = Call(len(self.calls) + 1, call_data["number"])
        self.calls[call.id] = call
        return call


def make_snippet_app() -> FastAPI:
    """A FastAPI app running each snippet of issue 4 exactly as written."""
    app = FastAPI()
    app.add_middleware(ActivityContextMiddleware, trusted_proxies=[f"{PROXY}/32"])
    crud = CallCRUD()
    agents = {"a-1": Agent("a-1", "idle")}
    db = None

    @app.post("/calls")
    async def create(call_data: dict[str, Any], request: Request,
                     background_tasks: BackgroundTasks) -> dict[str, Any]:
        call = await crud.create_call(db, call_data, background_tasks=background_tasks,
                                      request=request)
        return {"id": call.id}

    @app.post("/calls/{call_id}/hangup")
    async def hangup(call_id: int, agent_id: str,
                     background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(log_call_activity, activity_type="call_hangup", call_id=call_id,
                                  description="Call ended by agent", actor_id=agent_id)
        return {"ok": True}

    @app.post("/maintenance")
    async def maintenance() -> dict[str, bool]:
        await activity_logger.log_async(activity_type="system_event", description="System maintenance started",  # noqa: E501 - as written
                                        actor_type="system", severity="info")
        return {"ok": True}

    @app.put("/agents/{agent_id}/status/{new}")
    async def set_status(agent_id: str, new: str) -> dict[str, str]:
        agent = agents[agent_id]
        old, agent.status = agent.status, new
        await log_agent_activity("agent_status_changed", agent_id=agent.id,
                                 description=f"Status changed from {old} to {new}",
                                 changes={"status": {"old": old, "new": new}})
        return {"status": new}

    return app


#: (method, url, json body, request id, client ip) of the four snippet requests.
SNIPPET_REQUESTS: list[tuple[str, str, Any, str, str]] = [
    ("POST", "/calls", {"number": "555-0100"}, "req-create", "203.0.113.1"),
    ("POST", "/calls/1/hangup?agent_id=a-1", None, "req-hangup", "203.0.113.2"),
    ("POST", "/maintenance", None, "req-maint", "203.0.113.3"),
    ("PUT", "/agents/a-1/status/busy", None, "req-status", "203.0.113.4"),
]

#: What each request must store: request id -> (activity_type, target_type, target_id, actor).
EXPECTED: dict[str, tuple[str, str | None, str | None, tuple[str | None, str | None]]] = {
    "req-create": ("call_created", "call", "1", (None, None)),
    "req-hangup": ("call_hangup", "call", "1", ("agent", "a-1")),
    "req-maint": ("system_event", None, None, ("system", None)),
    "req-status": ("agent_status_changed", "agent", "a-1", (None, None)),
}


async def run_snippet_requests(app: FastAPI) -> None:
    """Send the four requests through the trusted proxy, each with its own forwarded client."""
    transport = httpx.ASGITransport(app=app, client=(PROXY, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://callcenter") as client:
        for method, url, body, rid, ip in SNIPPET_REQUESTS:
            response = await client.request(
                method, url, json=body,
                headers={"X-Request-ID": rid, "X-Forwarded-For": f"{ip}, {PROXY}",
                         "User-Agent": f"ua-{rid}"},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == rid


def check_stored_rows(rows: list[dict[str, Any]]) -> None:
    """Every snippet stored exactly once, with its request's ip, user agent and request id."""
    assert len({str(r["id"]) for r in rows}) == len(rows) == len(EXPECTED)
    by_request = {r["request_id"]: r for r in rows}
    assert set(by_request) == set(EXPECTED)
    for _method, url, _body, rid, ip in SNIPPET_REQUESTS:
        row = by_request[rid]
        activity_type, target_type, target_id, actor = EXPECTED[rid]
        assert (row["activity_type"], row["target_type"], row["target_id"]) == (
            activity_type, target_type, target_id)
        assert (row["actor_type"], row["actor_id"]) == actor
        assert str(row["ip_address"]) == ip
        assert row["user_agent"] == f"ua-{rid}"
        assert row["path"] == url.split("?")[0]
        assert row["severity"] == "info"


@pytest.mark.anyio
async def test_snippets_reach_the_embedded_store_with_request_details(tmp_path: Path) -> None:
    db_path = tmp_path / "activity.db"
    handler = ActivityHandler(database_url=f"sqlite:///{db_path}", flush_interval=0.01)
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        await run_snippet_requests(make_snippet_app())
        assert handler.flush(10.0)
        stats = handler.stats()
    finally:
        handler.close()
    assert (stats["enqueued"], stats["sent"]) == (4, 4)
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM activity_logs")]
    finally:
        conn.close()
    check_stored_rows(rows)
    status_row = next(r for r in rows if r["activity_type"] == "agent_status_changed")
    assert "busy" in status_row["changes"]
    assert status_row["description"] == "Status changed from idle to busy"
