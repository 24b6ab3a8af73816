"""A small call-center API (calls, agents, leads) with an audit trail on activity_logging.

Run it:

    python examples/callcenter_app.py                 # serves on http://127.0.0.1:8000
    python examples/callcenter_app.py --selftest      # drives it in-process, checks the store

It needs FastAPI, uvicorn and httpx: ``pip install -e '.[examples]'`` (``make demo`` does).

With no ``REDIS_URL`` the activities go to the embedded SQLite store (``--db``, default
``callcenter_activity.db``) and ``GET /activities`` shows the latest ones. With ``REDIS_URL``
(and ``DATABASE_URL`` for the worker) they go to the Redis stream and ``activity-logging
worker`` moves them into PostgreSQL. See examples/README.md.

Everything that is wired here is what an application does: one ``dictConfig`` for logging,
one middleware, ``@log_activity`` on the CRUD methods and the helpers in the endpoints.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from activity_logging import (
    ActivityContextMiddleware,
    ActivityHandler,
    ActivityType,
    activity_logger,
    changes_between,
    log_activity,
    log_agent_activity,
    log_call_activity,
    log_lead_activity,
    log_system_event,
)

DEFAULT_DB = "callcenter_activity.db"


# --- logging: one dictConfig ---------------------------------------------------------------


def logging_config(db_path: str = DEFAULT_DB) -> dict[str, Any]:
    """The dictConfig for the app: Redis when ``REDIS_URL`` is set, else the embedded store.

    ``ActivityHandler`` reads ``REDIS_URL``/``DATABASE_URL`` itself; the explicit
    ``database_url`` here only picks the SQLite file for the embedded default. With
    ``DATABASE_URL`` but no Redis the handler writes to that database directly.
    """
    handler: dict[str, Any] = {"()": "activity_logging.ActivityHandler"}
    if not os.environ.get("REDIS_URL") and not os.environ.get("DATABASE_URL"):
        handler["database_url"] = f"sqlite:///{db_path}"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "activity_store": handler,
            "console": {"class": "logging.StreamHandler", "formatter": "plain",
                        "level": "WARNING"},
        },
        "loggers": {
            # the audit trail: every activity goes to the store, warnings also to the console
            "activity": {"handlers": ["activity_store", "console"], "level": "INFO",
                         "propagate": False},
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
    }


def activity_handlers() -> list[ActivityHandler]:
    return [h for h in logging.getLogger("activity").handlers if isinstance(h, ActivityHandler)]


def flush_activities(timeout: float = 10.0) -> bool:
    """Wait until every activity logged so far has reached the store (or Redis)."""
    return all(h.flush(timeout) for h in activity_handlers())


# --- domain: in-memory, the audit trail is the point -----------------------------------------


@dataclass
class Call:
    id: int
    number: str
    agent_id: str | None
    status: str = "ringing"


@dataclass
class Agent:
    id: str
    name: str
    status: str = "offline"


@dataclass
class Lead:
    id: int
    name: str
    phone: str
    converted: bool = False


@dataclass
class Store:
    calls: dict[int, Call] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=lambda: {
        "a-1": Agent("a-1", "Ada"), "a-2": Agent("a-2", "Grace")})
    leads: dict[int, Lead] = field(default_factory=dict)
    ids: count[int] = field(default_factory=lambda: count(1))


class CallIn(BaseModel):
    number: str
    agent_id: str | None = None


class LeadIn(BaseModel):
    name: str
    phone: str


class CallCRUD:
    """Data access with the audit trail as a decorator: success and failure are both logged."""

    @log_activity(activity_type="call_created", description="New call record created",
                  target_type="call")
    async def create_call(self, db: Store, call_data: CallIn,
                          background_tasks: BackgroundTasks | None = None,
                          request: Request | None = None) -> Call:
        if call_data.number.startswith("900"):
            raise ValueError(f"premium number {call_data.number} is blocked")
        call = Call(next(db.ids), call_data.number, call_data.agent_id)
        db.calls[call.id] = call
        return call

    @log_activity(ActivityType.CALL_UPDATED, "Call status changed", "call")
    async def set_status(self, db: Store, call_id: int, status: str) -> Call:
        call = db.calls[call_id]
        call.status = status
        return call


class LeadCRUD:
    @log_activity(ActivityType.LEAD_CREATED, "Lead captured", "lead")
    def create_lead(self, db: Store, lead: LeadIn) -> Lead:
        new = Lead(next(db.ids), lead.name, lead.phone)
        db.leads[new.id] = new
        return new


def agent_from_header(scope: Any) -> tuple[str, str] | None:
    """The actor: this demo trusts an ``X-Agent-ID`` header (a real app reads its session)."""
    for key, value in scope.get("headers") or ():
        if key == b"x-agent-id":
            return "agent", value.decode("latin-1")[:64]
    return None


# --- the app ---------------------------------------------------------------------------------


def get_db(request: Request) -> Store:
    store: Store = request.app.state.db
    return store


# module level: FastAPI resolves the (string) annotations in this module's namespace
Db = Annotated[Store, Depends(get_db)]


def create_app(trusted_proxies: str = "127.0.0.1") -> FastAPI:
    """Build the API; logging must already be configured (``configure_logging``)."""
    db = Store()
    calls, leads = CallCRUD(), LeadCRUD()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_system_event(ActivityType.SYSTEM_STARTUP, "Call-center API started")
        yield
        log_system_event(ActivityType.SYSTEM_SHUTDOWN, "Call-center API stopping")
        flush_activities(5.0)

    app = FastAPI(title="call center", lifespan=lifespan)
    app.state.db = db
    app.add_middleware(
        ActivityContextMiddleware, trusted_proxies=trusted_proxies, actor_getter=agent_from_header,
        log_requests=True, slow_request_threshold=2.0, exclude_paths=["/health", "/activities"],
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/calls", status_code=201)
    async def create_call(call_data: CallIn, db: Db, request: Request,
                          background_tasks: BackgroundTasks) -> dict[str, Any]:
        try:
            call = await calls.create_call(db, call_data, background_tasks=background_tasks,
                                           request=request)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return asdict(call)

    @app.post("/calls/{call_id}/hangup")
    async def hangup(call_id: int, db: Db, background_tasks: BackgroundTasks) -> dict[str, Any]:
        call = db.calls.get(call_id)
        if call is None:
            raise HTTPException(404, "no such call")
        await calls.set_status(db, call_id, "ended")
        # after the response is sent, still inside the request's context
        background_tasks.add_task(log_call_activity, activity_type=ActivityType.CALL_ENDED,
                                  call_id=call_id, description="Call ended by agent",
                                  actor_id=call.agent_id)
        return asdict(call)

    @app.put("/agents/{agent_id}/status/{new}")
    async def agent_status(agent_id: str, new: str, db: Db) -> dict[str, Any]:
        agent = db.agents.get(agent_id)
        if agent is None:
            raise HTTPException(404, "no such agent")
        old, agent.status = agent.status, new
        await log_agent_activity(ActivityType.AGENT_STATUS_CHANGED, agent_id=agent.id,
                                 description=f"Status changed from {old} to {new}",
                                 changes={"status": {"old": old, "new": new}})
        return asdict(agent)

    @app.post("/leads", status_code=201)
    def create_lead(lead: LeadIn, db: Db) -> dict[str, Any]:
        return asdict(leads.create_lead(db, lead))

    @app.post("/leads/{lead_id}/convert")
    async def convert(lead_id: int, db: Db) -> dict[str, Any]:
        lead = db.leads.get(lead_id)
        if lead is None:
            raise HTTPException(404, "no such lead")
        before = replace(lead)
        lead.converted = True
        # {"converted": {"old": False, "new": True}}: only what changed, in the one shape
        await log_lead_activity(ActivityType.LEAD_CONVERTED, lead_id=lead.id,
                                description=f"Lead {lead.name} converted",
                                changes=changes_between(before, lead))
        return asdict(lead)

    @app.post("/maintenance")
    async def maintenance() -> dict[str, str]:
        await activity_logger.log_async(activity_type="system_event",
                                        description="System maintenance started",
                                        actor_type="system", severity="info")
        return {"status": "maintenance"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("simulated failure")  # logged as api_error by the middleware

    @app.get("/activities")
    async def recent(limit: int = 20) -> list[dict[str, Any]]:
        """The latest activities from the embedded store (production: ``activity-logging query``)."""
        flush_activities(2.0)
        handler = next(iter(activity_handlers()), None)
        url = getattr(handler, "database_url", "") or ""
        if getattr(handler, "redis_url", None) or not url.startswith("sqlite"):
            raise HTTPException(501, "activities are in PostgreSQL: use `activity-logging query`")
        return read_activities(url.split("///", 1)[1], min(max(limit, 1), 500))

    return app


def read_activities(db_path: str, limit: int = 100) -> list[dict[str, Any]]:
    """The latest ``limit`` activities of the embedded SQLite store, newest first."""
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT timestamp, activity_type, severity, description, actor_type, actor_id, "
            "target_type, target_id, ip_address, user_agent, request_id, http_method, path "
            "FROM activity_logs ORDER BY timestamp DESC LIMIT ?", (limit,),
        ).fetchall()
    except sqlite3.OperationalError:  # no activity yet: the table is made on first write
        return []
    finally:
        conn.close()
    return [dict(r) for r in rows]


def configure_logging(db_path: str = DEFAULT_DB) -> None:
    logging.config.dictConfig(logging_config(db_path))


# --- self test: the app driven in-process, checked against the store ---------------------------

#: The activity types one selftest run must produce.
SELFTEST_TYPES = frozenset({
    "system_startup", "call_created", "call_updated", "call_ended", "agent_status_changed",
    "lead_created", "lead_converted", "system_event", "api_request", "api_error",
    "system_shutdown",
})


def selftest(db_path: str) -> int:
    """Exercise every endpoint through Starlette's TestClient; 0 when the store has it all."""
    with warnings.catch_warnings():
        # Starlette 1.x prefers httpx2 for its TestClient; httpx works the same here.
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    configure_logging(db_path)
    headers = {"User-Agent": "callcenter-selftest/1.0", "X-Agent-ID": "a-1",
               "X-Forwarded-For": "198.51.100.23"}
    # the client's socket peer plays the trusted load balancer at 127.0.0.1
    with TestClient(create_app(), client=("127.0.0.1", 50000),
                    raise_server_exceptions=False) as client:
        steps = [
            client.post("/calls", json={"number": "555-0101", "agent_id": "a-1"}, headers=headers),
            client.post("/calls/1/hangup", headers=headers),
            client.put("/agents/a-1/status/busy", headers=headers),
            client.post("/leads", json={"name": "Lin", "phone": "555-0199"}, headers=headers),
            client.post("/leads/2/convert", headers=headers),
            client.post("/maintenance", headers=headers),
            client.post("/calls", json={"number": "900-555"}, headers=headers),
            client.get("/boom", headers=headers),
        ]
    codes = [r.status_code for r in steps]
    if codes != [201, 200, 200, 201, 200, 200, 422, 500]:
        print(f"selftest: unexpected status codes {codes}", file=sys.stderr)
        return 1
    handlers = activity_handlers()
    if not flush_activities(10.0):
        print("selftest: activities did not reach the store in 10 s", file=sys.stderr)
        return 1
    stats = [h.stats() for h in handlers]
    logging.shutdown()
    if any(s["enqueued"] != s["sent"] for s in stats):
        print(f"selftest: not everything was shipped: {stats}", file=sys.stderr)
        return 1
    if os.environ.get("REDIS_URL") or os.environ.get("DATABASE_URL"):
        print(f"selftest: {stats[0]['sent']} activities shipped (see them with the worker and "
              "`activity-logging query`)")
        return 0
    rows = read_activities(db_path, limit=1000)
    missing = SELFTEST_TYPES - {r["activity_type"] for r in rows}
    request_rows = [r for r in rows if r["request_id"]]
    incomplete = [r for r in request_rows
                  if r["ip_address"] != "198.51.100.23" or r["user_agent"] != headers["User-Agent"]]
    if missing or incomplete:
        print(f"selftest: missing types {sorted(missing)}; rows without request details: "
              f"{incomplete[:3]}", file=sys.stderr)
        return 1
    print(f"selftest: ok, {len(rows)} activities in {db_path}")
    for row in sorted(rows, key=lambda r: r["timestamp"]):
        print(f"  {row['severity']:<7} {row['activity_type']:<22} {row['actor_type'] or '-'}:"
              f"{row['actor_id'] or '-'} -> {row['target_type'] or '-'}:{row['target_id'] or '-'}"
              f"  {row['request_id'] or ''}")
    return 0


def server_url(host: str, port: int) -> str:
    """The URL to open for ``host``/``port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def store_description(db_path: str) -> str:
    """Where this process's activities go, as the handler will decide (see logging_config)."""
    if os.environ.get("REDIS_URL"):
        return "Redis stream (REDIS_URL); `activity-logging worker` stores them"
    if os.environ.get("DATABASE_URL"):
        return "DATABASE_URL"
    return f"sqlite:///{db_path}, also at GET /activities"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", default=DEFAULT_DB, help="embedded SQLite file (no REDIS_URL)")
    parser.add_argument("--selftest", action="store_true",
                        help="drive the app in-process and check the stored activities")
    args = parser.parse_args(argv)
    if args.selftest:
        if args.db == DEFAULT_DB:
            args.db = str(Path(tempfile.mkdtemp(prefix="callcenter-")) / "activity.db")
        return selftest(args.db)

    import uvicorn

    configure_logging(args.db)
    print(f"call-center API on {server_url(args.host, args.port)}  (activities: "
          f"{store_description(args.db)}; Ctrl+C to stop)", flush=True)
    # uvicorn must not replace our dictConfig (log_config=None) and must tell the app its
    # real peer: the middleware reads the socket peer and trusts only 127.0.0.1 as a proxy
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=None,
                proxy_headers=False)
    logging.shutdown()  # flushes the ActivityHandler
    return 0


if __name__ == "__main__":
    sys.exit(main())
