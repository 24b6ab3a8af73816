"""ActivityWSGIMiddleware behind real WSGI servers (wsgiref on a free port) and under Flask.

Real HTTP requests with httpx; records go through a real ActivityHandler into the embedded
SQLite store (and, in the one ``integration`` test, PostgreSQL), and are read back.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import socketserver
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import asyncpg
import flask
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from activity_logging import (
    ActivityContextMiddleware,
    ActivityHandler,
    ActivityWSGIMiddleware,
    bind_context,
    get_context,
)
from activity_logging.db import init_db
from activity_logging.exceptions import ConfigurationError
from activity_logging.request_context import REQUEST_ID_PATTERN
from tests.capture import TestClient
from tests.sqlite_rows import stored_rows

# --- a real server ---------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without the access log and the tracebacks of failing apps on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def serve(app: WSGIApplication, *, threaded: bool = True) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 from a thread; yields the base URL."""
    server_class = ThreadingWSGIServer if threaded else WSGIServer
    server = make_server("127.0.0.1", 0, app, server_class=server_class, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class Store:
    """A real ActivityHandler on the embedded store, on the "activity" logger."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler = ActivityHandler(database_url=f"sqlite:///{path}", direct=True)
        log = logging.getLogger("activity")
        log.addHandler(self.handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False

    def rows(self) -> list[dict[str, Any]]:
        assert self.handler.flush(30), self.handler.stats()
        return stored_rows(self.path)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "wsgi.db")  # closed by the logging-restoring fixture


# --- apps ------------------------------------------------------------------------------------

log = logging.getLogger("activity")


def json_response(start_response: StartResponse, body: Any, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def context_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Logs one activity and answers with the context it saw."""
    log.info("echo", extra={"target_id": environ.get("QUERY_STRING")})
    return json_response(start_response, dict(get_context()))


def header_actor(environ: WSGIEnvironment) -> tuple[str, Any] | None:
    """A test actor getter: the client names its user (an auth layer would, for real)."""
    user = environ.get("HTTP_X_TEST_USER")
    return ("user", user) if user else None


# --- request id ------------------------------------------------------------------------------


def test_request_id_is_generated_echoed_and_on_the_records(store: Store) -> None:
    with serve(ActivityWSGIMiddleware(context_app)) as url, httpx.Client() as client:
        response = client.get(f"{url}/calls/c-1?x=1", headers={"User-Agent": "agent-ui/2.1"})
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    assert REQUEST_ID_PATTERN.fullmatch(rid)
    assert response.json() == {"request_id": rid, "http_method": "GET", "path": "/calls/c-1",
                               "ip_address": "127.0.0.1", "user_agent": "agent-ui/2.1"}
    (row,) = store.rows()
    assert (row["activity_type"], row["target_id"]) == ("echo", "x=1")
    assert (row["request_id"], row["ip_address"], row["user_agent"], row["http_method"], row["path"]) == (
        rid, "127.0.0.1", "agent-ui/2.1", "GET", "/calls/c-1")


def test_incoming_request_id_is_kept_when_well_formed_and_replaced_when_not() -> None:
    with serve(ActivityWSGIMiddleware(context_app)) as url, httpx.Client() as client:
        kept = client.get(url, headers={"X-Request-ID": "abc-123.Z:9"})
        replaced = client.get(url, headers={"X-Request-ID": "has space<script>"})
    assert kept.headers.get_list("x-request-id") == ["abc-123.Z:9"]
    assert kept.json()["request_id"] == "abc-123.Z:9"
    fresh = replaced.headers["x-request-id"]
    assert fresh != "has space<script>" and REQUEST_ID_PATTERN.fullmatch(fresh)
    assert replaced.json()["request_id"] == fresh


def test_request_id_header_is_configurable_and_an_apps_own_header_is_kept() -> None:
    def own_header(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("x-correlation-id", "upstream-1")])
        return [b"ok"]

    app = ActivityWSGIMiddleware(own_header, request_id_header="X-Correlation-ID")
    with serve(app) as url, httpx.Client() as client:
        response = client.get(url, headers={"X-Correlation-ID": "mine-1"})
    assert response.headers.get_list("x-correlation-id") == ["upstream-1"]
    assert "x-request-id" not in response.headers


# --- client address --------------------------------------------------------------------------


def test_client_ip_is_the_forwarded_client_only_through_a_trusted_proxy() -> None:
    forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
    with httpx.Client() as client:
        with serve(ActivityWSGIMiddleware(context_app)) as url:
            untrusted = client.get(url, headers=forged).json()
        with serve(ActivityWSGIMiddleware(context_app, trusted_proxies="127.0.0.1")) as url:
            trusted = client.get(url, headers=forged).json()
            direct = client.get(url).json()
        with serve(ActivityWSGIMiddleware(context_app, trusted_proxies=["127.0.0.0/8"],
                                          forwarded_for_header="X-Real-Chain")) as url:
            other_header = client.get(url, headers={"X-Real-Chain": "203.0.113.5", **forged}).json()
    assert untrusted["ip_address"] == "127.0.0.1"  # the header of an untrusted peer is ignored
    assert trusted["ip_address"] == "203.0.113.9"  # the rightmost entry, appended by the proxy
    assert direct["ip_address"] == "127.0.0.1"
    assert other_header["ip_address"] == "203.0.113.5"


def test_user_agent_is_cut_and_actor_comes_from_the_getter() -> None:
    app = ActivityWSGIMiddleware(context_app, max_user_agent_chars=8, actor_getter=header_actor)
    with serve(app) as url, httpx.Client() as client:
        seen = client.get(url, headers={"User-Agent": "x" * 100, "X-Test-User": "u-5"}).json()
        anonymous = client.get(url).json()
    assert seen["user_agent"] == "x" * 8
    assert (seen["actor_type"], seen["actor_id"]) == ("user", "u-5")
    assert "actor_id" not in anonymous


def test_default_actor_is_remote_user() -> None:
    def authenticated(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["REMOTE_USER"] = "ann"  # what an auth layer in front of the middleware sets
        return inner(environ, start_response)

    inner = ActivityWSGIMiddleware(context_app)
    with serve(authenticated) as url, httpx.Client() as client:
        seen = client.get(url).json()
    assert (seen["actor_type"], seen["actor_id"]) == ("user", "ann")


# --- context lifetime ------------------------------------------------------------------------


def test_streamed_body_is_produced_inside_the_request_context_and_closed_there(store: Store) -> None:
    closed_with: list[dict[str, Any]] = []

    def streaming(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks() -> Iterator[bytes]:
            try:
                for i in range(3):
                    log.info("chunk", extra={"target_id": str(i)})
                    yield f"{i}:{get_context().get('request_id')}\n".encode()
            finally:
                closed_with.append(dict(get_context()))

        return chunks()

    with serve(ActivityWSGIMiddleware(streaming)) as url, httpx.Client() as client:
        response = client.get(url, headers={"X-Request-ID": "stream-1"})
    assert response.text == "0:stream-1\n1:stream-1\n2:stream-1\n"
    assert [(r["target_id"], r["request_id"]) for r in store.rows()] == [
        ("0", "stream-1"), ("1", "stream-1"), ("2", "stream-1")]
    assert closed_with[0]["request_id"] == "stream-1"


def test_two_concurrent_requests_never_see_each_others_context(store: Store) -> None:
    both_inside = threading.Barrier(2, timeout=30)

    def overlapping(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        before = dict(get_context())
        both_inside.wait()  # both requests are now inside the app at the same time
        log.info("overlap")
        both_inside.wait()
        return json_response(start_response, {"before": before, "after": dict(get_context())})

    app = ActivityWSGIMiddleware(overlapping, actor_getter=header_actor)
    results: dict[str, Any] = {}

    def request(name: str) -> None:
        with httpx.Client(timeout=30) as client:
            results[name] = client.get(f"{url}/{name}", headers={
                "X-Request-ID": f"rid-{name}", "X-Test-User": f"user-{name}"}).json()

    with serve(app) as url:
        threads = [threading.Thread(target=request, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for name in ("a", "b"):
        for seen in results[name].values():
            assert (seen["request_id"], seen["actor_id"], seen["path"]) == (
                f"rid-{name}", f"user-{name}", f"/{name}")
    rows = store.rows()
    assert sorted((r["request_id"], r["actor_id"], r["path"]) for r in rows) == [
        ("rid-a", "user-a", "/a"), ("rid-b", "user-b", "/b")]


def test_nothing_bound_in_one_request_reaches_the_next_on_the_same_thread() -> None:
    def binding(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        seen = dict(get_context())
        if environ.get("PATH_INFO") == "/login":
            bind_context(actor_type="user", actor_id="leaky", tenant="t-1")  # never reset by the app
        return json_response(start_response, seen)

    # one server thread serves every request in turn
    with serve(ActivityWSGIMiddleware(binding), threaded=False) as url, httpx.Client() as client:
        client.get(f"{url}/login")
        after = client.get(f"{url}/next").json()
    assert set(after) == {"request_id", "http_method", "path", "ip_address", "user_agent"}


def test_a_server_that_never_closes_the_body_leaks_no_context() -> None:
    # called by hand, as a server that forgets close() would: the caller's context is untouched
    app = ActivityWSGIMiddleware(context_app)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "REMOTE_ADDR": "192.0.2.1",
               "HTTP_X_REQUEST_ID": "forgotten"}
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type,misc,return-value]
    assert json.loads(b"".join(body))["request_id"] == "forgotten"
    assert statuses == ["200 OK"]
    assert dict(get_context()) == {}


# --- request activities ----------------------------------------------------------------------


def routes(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("endpoint failed")
    if path == "/503":
        return json_response(start_response, {}, "503 Service Unavailable")
    if path == "/broken-stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks() -> Iterator[bytes]:
            yield b"partial"
            raise ValueError("stream broke")

        return chunks()
    if path == "/login":
        bind_context(actor_type="user", actor_id="u-login")  # what a before_request hook does
    return json_response(start_response, {"ok": True})


def test_request_activities_have_status_duration_errors_and_skip_excluded_paths(store: Store) -> None:
    app = ActivityWSGIMiddleware(routes, log_requests=True, exclude_paths=["/health", "/internal/*"])
    with serve(app) as url, httpx.Client() as client:
        assert client.get(f"{url}/ok").status_code == 200
        assert client.get(f"{url}/boom").status_code == 500  # wsgiref's answer to a raising app
        assert client.get(f"{url}/503").status_code == 503
        # headers were sent: wsgiref can only end the (HTTP/1.0) response where the body broke
        assert client.get(f"{url}/broken-stream").text == "partial"
        assert client.get(f"{url}/login").status_code == 200
        assert client.get(f"{url}/health").status_code == 200
        assert client.get(f"{url}/internal/metrics").status_code == 200
    rows = {r["path"]: r for r in store.rows()}
    assert set(rows) == {"/ok", "/boom", "/503", "/broken-stream", "/login"}
    ok = rows["/ok"]
    assert (ok["activity_type"], ok["severity"], ok["description"]) == (
        "api_request", "info", "GET /ok -> 200")
    assert ok["metadata"]["status_code"] == 200 and ok["metadata"]["duration_ms"] >= 0
    boom = rows["/boom"]
    assert (boom["activity_type"], boom["severity"]) == ("api_error", "error")
    assert boom["metadata"]["error_type"] == "RuntimeError"
    assert boom["metadata"]["error_message"] == "endpoint failed"
    assert boom["metadata"]["status_code"] == 500
    assert (rows["/503"]["activity_type"], rows["/503"]["metadata"]["status_code"]) == ("api_error", 503)
    broken = rows["/broken-stream"]
    assert (broken["activity_type"], broken["metadata"]["error_type"]) == ("api_error", "ValueError")
    assert (rows["/login"]["actor_type"], rows["/login"]["actor_id"]) == ("user", "u-login")
    assert len({r["request_id"] for r in rows.values()}) == 5


def test_slow_request_is_logged_at_warning(store: Store) -> None:
    app = ActivityWSGIMiddleware(routes, log_requests=True, slow_request_threshold=0)
    with serve(app) as url, httpx.Client() as client:
        client.get(f"{url}/ok")
    (row,) = store.rows()
    assert (row["activity_type"], row["severity"], row["metadata"]["slow"]) == (
        "api_request", "warning", True)


def test_request_activity_matches_the_asgi_middlewares(store: Store) -> None:
    async def asgi_ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("{}", status_code=201)

    def wsgi_ok(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return json_response(start_response, {}, "201 Created")

    asgi = Starlette(routes=[Route("/same", asgi_ok)],
                     middleware=[Middleware(ActivityContextMiddleware, log_requests=True)])
    with TestClient(asgi) as client:
        client.get("/same", headers={"User-Agent": "same-ua"})
    with serve(ActivityWSGIMiddleware(wsgi_ok, log_requests=True)) as url, httpx.Client() as client:
        client.get(f"{url}/same", headers={"User-Agent": "same-ua"})
    from_asgi, from_wsgi = store.rows()
    for column in ("activity_type", "description", "severity", "http_method", "path", "user_agent"):
        assert from_asgi[column] == from_wsgi[column], column
    assert set(from_asgi["metadata"]) == set(from_wsgi["metadata"]) == {"status_code", "duration_ms"}
    assert from_wsgi["metadata"]["status_code"] == 201


def test_options_are_the_asgi_middlewares_and_are_validated_alike() -> None:
    asgi = dict(inspect.signature(ActivityContextMiddleware).parameters)
    wsgi = dict(inspect.signature(ActivityWSGIMiddleware).parameters)
    del asgi["shutdown_flush_timeout"]  # WSGI has no lifespan
    assert list(asgi) == list(wsgi)
    differ = {"app", "actor_getter"}  # an ASGI app and scope getter versus a WSGI app and environ getter
    for name in asgi.keys() - differ:
        assert asgi[name].default == wsgi[name].default, name
    bad: list[dict[str, Any]] = [{"request_id_header": " "}, {"slow_request_threshold": -1},
                                 {"max_user_agent_chars": -1}, {"trusted_proxies": ["not-an-ip"]}]
    for options in bad:
        with pytest.raises(ConfigurationError):
            ActivityContextMiddleware(routes, **options)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            ActivityWSGIMiddleware(routes, **options)


def test_a_failing_actor_getter_or_logger_never_fails_the_request(store: Store,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def broken_getter(environ: WSGIEnvironment) -> tuple[str, Any] | None:
        raise LookupError("no session store")

    class BrokenLogger(logging.Logger):
        def log(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

    app = ActivityWSGIMiddleware(routes, actor_getter=broken_getter, log_requests=True,
                                 logger=BrokenLogger("broken"))
    with serve(app) as url, httpx.Client() as client:
        assert client.get(f"{url}/ok").json() == {"ok": True}
    err = capsys.readouterr().err
    assert "actor_getter failed" in err and "could not log the request activity" in err


# --- Flask -----------------------------------------------------------------------------------


def make_flask_app(**options: Any) -> flask.Flask:
    app = flask.Flask("wsgi_test_app")

    @app.before_request
    def authenticate() -> None:
        user = flask.request.headers.get("X-Test-User")
        if user:
            bind_context(actor_type="user", actor_id=user)  # the request's context resets it

    @app.get("/calls/<call_id>")
    def show_call(call_id: str) -> Any:
        log.info("call_viewed", extra={"target_type": "call", "target_id": call_id})
        return flask.jsonify(dict(get_context()))

    @app.get("/stream")
    def stream() -> flask.Response:
        def chunks() -> Iterator[str]:
            for i in range(2):
                yield f"{i}:{get_context().get('request_id')}:{flask.request.path}\n"

        return flask.Response(flask.stream_with_context(chunks()), mimetype="text/plain")

    @app.get("/fail")
    def fail() -> Any:
        raise KeyError("missing")

    app.wsgi_app = ActivityWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def test_flask_app_gets_request_context_on_records_and_request_activities(store: Store) -> None:
    app = make_flask_app(log_requests=True, trusted_proxies=["127.0.0.1"])
    with serve(app) as url, httpx.Client() as client:
        viewed = client.get(f"{url}/calls/c-7", headers={
            "X-Request-ID": "flask-1", "X-Test-User": "u-9", "X-Forwarded-For": "203.0.113.50"})
        streamed = client.get(f"{url}/stream", headers={"X-Request-ID": "flask-2"})
        failed = client.get(f"{url}/fail")
        anonymous = client.get(f"{url}/calls/c-8")
    assert viewed.headers["x-request-id"] == "flask-1"
    assert viewed.json() == {"request_id": "flask-1", "http_method": "GET", "path": "/calls/c-7",
                             "ip_address": "203.0.113.50", "user_agent": f"python-httpx/{httpx.__version__}",
                             "actor_type": "user", "actor_id": "u-9"}
    assert streamed.text == "0:flask-2:/stream\n1:flask-2:/stream\n"
    assert failed.status_code == 500  # Flask turns the exception into its error page
    assert "actor_id" not in anonymous.json()
    rows = store.rows()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_type.setdefault(row["activity_type"], []).append(row)
    view = by_type["call_viewed"][0]
    assert (view["request_id"], view["actor_id"], view["ip_address"], view["target_id"]) == (
        "flask-1", "u-9", "203.0.113.50", "c-7")
    assert by_type["call_viewed"][1]["actor_id"] is None
    requests = {r["path"]: r for r in by_type["api_request"]}
    assert requests["/calls/c-7"]["actor_id"] == "u-9"  # bound by the before_request hook
    assert requests["/stream"]["request_id"] == "flask-2"
    (error,) = by_type["api_error"]
    assert (error["path"], error["metadata"]["status_code"]) == ("/fail", 500)


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.integration
def test_wsgi_request_context_reaches_postgres(pg_url: str, pg_schema: str) -> None:
    asyncio.run(init_db(pg_url, schema=pg_schema))
    handler = ActivityHandler(database_url=pg_url, schema=pg_schema, direct=True)
    activity = logging.getLogger("activity")
    activity.addHandler(handler)
    activity.setLevel(logging.INFO)
    activity.propagate = False
    app = ActivityWSGIMiddleware(context_app, trusted_proxies="127.0.0.1", actor_getter=header_actor)
    with serve(app) as url, httpx.Client() as client:
        client.get(f"{url}/leads/l-1?q", headers={"X-Forwarded-For": "2001:db8::7", "X-Test-User": "u-1",
                                                  "X-Request-ID": "pg-1", "User-Agent": "ua/pg"})
    assert handler.flush(30), handler.stats()

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
        try:
            return await conn.fetch("SELECT * FROM activity_logs")
        finally:
            await conn.close()

    (row,) = asyncio.run(fetch())
    assert (row["request_id"], str(row["ip_address"]), row["user_agent"]) == ("pg-1", "2001:db8::7", "ua/pg")
    assert (row["http_method"], row["path"]) == ("GET", "/leads/l-1")
    assert (row["actor_type"], row["actor_id"], row["target_id"]) == ("user", "u-1", "q")
