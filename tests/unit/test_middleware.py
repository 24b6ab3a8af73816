"""ActivityContextMiddleware against real Starlette apps (TestClient and httpx ASGITransport)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from activity_logging import ActivityContextMiddleware, activity_logger, get_context
from activity_logging.exceptions import ConfigurationError
from activity_logging.request_context import REQUEST_ID_PATTERN, parse_forwarded_for, parse_ip
from tests.capture import Capture, TestClient


async def echo_context(request: Request) -> JSONResponse:
    # a different number of checkpoints per request, so concurrent requests interleave
    # inside the handler (deterministically: it depends only on the request number)
    first = dict(get_context())
    for _ in range(int(request.query_params.get("n", "0")) % 7 + 1):
        await asyncio.sleep(0)
    activity_logger.log("echo", description=request.query_params.get("n"))
    await asyncio.sleep(0)
    second = dict(get_context())
    return JSONResponse({"first": first, "second": second})


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("endpoint failed")


async def five_hundred(request: Request) -> PlainTextResponse:
    return PlainTextResponse("unavailable", status_code=503)


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.01)
    return PlainTextResponse("slow")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"{i}:{get_context().get('request_id')}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


async def with_background(request: Request) -> PlainTextResponse:
    def later() -> None:
        activity_logger.log("background_done")

    return PlainTextResponse("queued", background=BackgroundTask(later))


async def login(request: Request) -> PlainTextResponse:
    request.state.user = {"id": "user-77"}  # what an auth dependency would do mid-request
    return PlainTextResponse("in")


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(dict(get_context()))
    await websocket.close()


ROUTES = [
    Route("/echo", echo_context), Route("/boom", boom), Route("/503", five_hundred),
    Route("/slow", slow), Route("/health", health), Route("/health/deep", health),
    Route("/stream", stream), Route("/bg", with_background), Route("/login", login),
    WebSocketRoute("/ws", ws_endpoint),
]


def make_app(**options: Any) -> Starlette:
    return Starlette(routes=ROUTES, middleware=[Middleware(ActivityContextMiddleware, **options)])


# --- request id --------------------------------------------------------------------------


def test_request_id_is_generated_echoed_and_bound(captured: Capture) -> None:
    with TestClient(make_app()) as client:
        response = client.get("/echo", headers={"User-Agent": "ua/1.0"})
    rid = response.headers["x-request-id"]
    assert REQUEST_ID_PATTERN.fullmatch(rid)
    body = response.json()
    assert body["first"]["request_id"] == rid
    assert body["first"]["user_agent"] == "ua/1.0"
    assert (body["first"]["http_method"], body["first"]["path"]) == ("GET", "/echo")
    (row,) = captured.rows()
    assert (row["request_id"], row["user_agent"], row["path"]) == (rid, "ua/1.0", "/echo")


def test_well_formed_incoming_request_id_is_kept_and_echoed_once(captured: Capture) -> None:
    with TestClient(make_app()) as client:
        response = client.get("/echo", headers={"X-Request-ID": "abc-123.Z:9"})
    assert response.headers.get_list("x-request-id") == ["abc-123.Z:9"]
    assert response.json()["first"]["request_id"] == "abc-123.Z:9"


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "quote\"d", "semi;colon", "<script>", ""])
def test_malformed_incoming_request_id_is_replaced(bad: str) -> None:
    with TestClient(make_app()) as client:
        response = client.get("/echo", headers={"X-Request-ID": bad})
    rid = response.headers["x-request-id"]
    assert rid != bad
    assert REQUEST_ID_PATTERN.fullmatch(rid)


def test_request_id_header_name_is_configurable() -> None:
    with TestClient(make_app(request_id_header="X-Correlation-ID")) as client:
        response = client.get("/echo", headers={"X-Correlation-ID": "corr-1", "X-Request-ID": "no"})
    assert response.headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in response.headers
    assert response.json()["first"]["request_id"] == "corr-1"


async def _raw_call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Drive a pure ASGI app with one scope; returns what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300))
def test_any_incoming_request_id_yields_a_safe_bounded_one(raw: bytes) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(get_context()["request_id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", raw)],
             "client": None}

    async def run() -> list[dict[str, Any]]:
        sent = await _raw_call(ActivityContextMiddleware(app), scope)
        assert get_context() == {}  # same task as the middleware: a leak would show here
        return sent

    sent = asyncio.run(run())
    assert REQUEST_ID_PATTERN.fullmatch(seen[0])
    assert (b"x-request-id", seen[0].encode()) in sent[0]["headers"]


# --- client ip -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("203.0.113.9", None, (), "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4", (), "203.0.113.9"),  # no trusted proxies: header ignored
        ("203.0.113.9", "1.2.3.4", ("10.0.0.0/8",), "203.0.113.9"),  # forged by untrusted peer
        ("10.0.0.2", "198.51.100.7", ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.1", ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", "10.0.0.3, 10.0.0.1", ("10.0.0.0/8",), "10.0.0.3"),  # all internal
        ("10.0.0.2", "garbage, 10.0.0.1", ("10.0.0.0/8",), None),  # malformed hop: unknown
        ("10.0.0.2", "198.51.100.7:4433", ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", "[2001:db8::1]:80", ("10.0.0.0/8",), "2001:db8::1"),
        ("::ffff:10.0.0.2", "198.51.100.7", ("10.0.0.0/8",), "198.51.100.7"),
        ("testclient", "1.2.3.4", ("10.0.0.0/8",), None),
        (None, None, (), None),
    ],
)
def test_parse_forwarded_for(peer: str | None, xff: str | None, trusted: tuple[str, ...],
                             expected: str | None) -> None:
    networks = tuple(ipaddress.ip_network(n) for n in trusted)
    assert parse_forwarded_for(peer, xff, networks) == expected


_TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
_addresses = st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str)
_xff = st.lists(_addresses | st.text(max_size=20), max_size=40).map(", ".join) | st.text(max_size=200)


@settings(max_examples=300, deadline=None)
@given(xff=_xff, peer=st.ip_addresses(v=4, network="192.0.2.0/24").map(str))
def test_forwarded_for_from_an_untrusted_peer_never_changes_the_address(xff: str,
                                                                        peer: str) -> None:
    assert parse_forwarded_for(peer, xff, _TRUSTED) == peer


@settings(max_examples=300, deadline=None)
@given(xff=_xff, peer=st.ip_addresses(v=4, network="10.0.0.0/8").map(str))
def test_forwarded_for_from_a_trusted_peer_gives_an_address_from_the_chain_or_none(
    xff: str, peer: str
) -> None:
    result = parse_forwarded_for(peer, xff, _TRUSTED)
    chain = {str(a) for a in (parse_ip(e) for e in xff.split(",")) if a is not None}
    assert result is None or result in chain | {peer}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("10.1.2.3", [("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
        ("10.1.2.3", [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.8")],
         "198.51.100.8"),
        ("192.0.2.50", [("x-forwarded-for", "198.51.100.7")], "192.0.2.50"),
    ],
)
async def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies(
    captured: Capture, peer: str, headers: list[tuple[str, str]], expected: str
) -> None:
    transport = httpx.ASGITransport(app=make_app(trusted_proxies="10.0.0.0/8, 127.0.0.1"),
                                    client=(peer, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/echo", headers=headers)
    assert response.json()["first"]["ip_address"] == expected
    (row,) = captured.rows()
    assert str(row["ip_address"]) == expected


def test_non_ip_peer_leaves_ip_address_empty(captured: Capture) -> None:
    with TestClient(make_app()) as client:  # TestClient's peer is the string "testclient"
        response = client.get("/echo")
    assert "ip_address" not in response.json()["first"]
    (row,) = captured.rows()
    assert row["ip_address"] is None
    assert "invalid_ip_address" not in row["metadata"]


def test_user_agent_is_truncated() -> None:
    with TestClient(make_app(max_user_agent_chars=20)) as client:
        response = client.get("/echo", headers={"User-Agent": "A" * 5000})
    assert response.json()["first"]["user_agent"] == "A" * 20


def test_bad_trusted_proxy_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        ActivityContextMiddleware(health, trusted_proxies=["10.0.0.0/8", "not-a-net"])  # type: ignore[arg-type]


# --- context lifetime and isolation --------------------------------------------------------


@pytest.mark.anyio
async def test_100_concurrent_requests_never_see_each_others_context(captured: Capture) -> None:
    transport = httpx.ASGITransport(app=make_app(), client=("192.0.2.1", 1))
    results: dict[int, httpx.Response] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def one(i: int) -> None:
            results[i] = await client.get(
                "/echo", params={"n": str(i)},
                headers={"X-Request-ID": f"req-{i}", "User-Agent": f"agent-{i}"},
            )

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
    assert len(results) == 100
    for i, response in results.items():
        body = response.json()
        assert body["first"]["request_id"] == body["second"]["request_id"] == f"req-{i}"
        assert body["first"]["user_agent"] == body["second"]["user_agent"] == f"agent-{i}"
        assert response.headers["x-request-id"] == f"req-{i}"
    rows = captured.rows()
    assert len({r["id"] for r in rows}) == 100
    assert {r["request_id"]: r["description"] for r in rows} == {
        f"req-{i}": str(i) for i in range(100)}
    assert {r["user_agent"] for r in rows} == {f"agent-{i}" for i in range(100)}
    assert get_context() == {}


def test_context_is_reset_after_the_request_even_when_the_app_raises() -> None:
    app = make_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        assert client.get("/echo").status_code == 200

    async def run() -> None:
        with pytest.raises(RuntimeError, match="endpoint failed"):
            await _raw_call(ActivityContextMiddleware(boom_asgi),
                            {"type": "http", "method": "GET", "path": "/", "headers": []})
        assert get_context() == {}

    asyncio.run(run())


async def boom_asgi(scope: Any, receive: Any, send: Any) -> None:
    assert get_context()["path"] == "/"
    raise RuntimeError("endpoint failed")


def test_background_task_runs_inside_the_request_context(captured: Capture) -> None:
    with TestClient(make_app()) as client:
        response = client.get("/bg", headers={"X-Request-ID": "bg-1", "User-Agent": "ua-bg"})
    assert response.text == "queued"
    (row,) = captured.rows()
    assert (row["activity_type"], row["request_id"], row["user_agent"], row["path"]) == (
        "background_done", "bg-1", "ua-bg", "/bg")


def test_streaming_response_streams_with_context_and_header() -> None:
    with TestClient(make_app()) as client, client.stream(
        "GET", "/stream", headers={"X-Request-ID": "s-1"}
    ) as response:
        lines = list(response.iter_lines())
        assert response.headers["x-request-id"] == "s-1"
    assert lines == ["0:s-1", "1:s-1", "2:s-1"]


def test_websocket_gets_a_context_too() -> None:
    with TestClient(make_app()) as client, client.websocket_connect(
        "/ws", headers={"X-Request-ID": "ws-1"}
    ) as ws:
        ctx = ws.receive_json()
    assert (ctx["request_id"], ctx["path"], ctx["http_method"]) == ("ws-1", "/ws", "WS")


def test_lifespan_passes_through() -> None:
    started: list[bool] = []

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(True)
        yield

    from contextlib import asynccontextmanager

    app = Starlette(routes=ROUTES, lifespan=asynccontextmanager(lifespan),
                    middleware=[Middleware(ActivityContextMiddleware)])
    with TestClient(app) as client:
        assert client.get("/health").text == "ok"
    assert started == [True]


# --- actor -----------------------------------------------------------------------------------


class FakeAuth:
    """What Starlette's AuthenticationMiddleware leaves in the scope."""

    def __init__(self, app: Any, identity: str | None) -> None:
        self.app, self.identity = app, identity

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["user"] = type("U", (), {"is_authenticated": self.identity is not None,
                                           "identity": self.identity})()
        await self.app(scope, receive, send)


@pytest.mark.parametrize(("identity", "expected"), [("alice", ("user", "alice")), (None, None)])
def test_actor_comes_from_the_authenticated_scope_user(identity: str | None,
                                                       expected: tuple[str, str] | None) -> None:
    app = Starlette(routes=ROUTES, middleware=[Middleware(FakeAuth, identity=identity),
                                               Middleware(ActivityContextMiddleware)])
    with TestClient(app) as client:
        ctx = client.get("/echo").json()["first"]
    assert ((ctx["actor_type"], ctx["actor_id"]) if "actor_id" in ctx else None) == expected


def test_custom_actor_getter_and_a_failing_one() -> None:
    with TestClient(make_app(actor_getter=lambda scope: ("agent", "a-1"))) as client:
        ctx = client.get("/echo").json()["first"]
    assert (ctx["actor_type"], ctx["actor_id"]) == ("agent", "a-1")

    def broken(scope: Any) -> Any:
        raise LookupError("no session store")

    with TestClient(make_app(actor_getter=broken)) as client:
        response = client.get("/echo")
    assert response.status_code == 200
    assert "actor_id" not in response.json()["first"]


# --- per-request activities ----------------------------------------------------------------


def test_request_activities_are_off_by_default(captured: Capture) -> None:
    with TestClient(make_app()) as client:
        client.get("/health")
    assert captured.records == []


def test_request_activity_has_method_path_status_and_duration(captured: Capture) -> None:
    with TestClient(make_app(log_requests=True)) as client:
        rid = client.get("/health", headers={"User-Agent": "probe"}).headers["x-request-id"]
    (row,) = captured.rows()
    assert (row["activity_type"], row["severity"], row["http_method"], row["path"]) == (
        "api_request", "info", "GET", "/health")
    assert row["metadata"]["status_code"] == 200
    assert row["metadata"]["duration_ms"] >= 0
    assert (row["request_id"], row["user_agent"]) == (rid, "probe")


def test_slow_request_is_logged_at_warning(captured: Capture) -> None:
    with TestClient(make_app(log_requests=True, slow_request_threshold=0.001)) as client:
        client.get("/slow")  # sleeps 10 ms, well past the 1 ms threshold
    (row,) = captured.rows()
    assert (row["activity_type"], row["severity"], row["metadata"]["slow"]) == (
        "api_request", "warning", True)


def test_raising_app_and_5xx_give_api_error(captured: Capture) -> None:
    with TestClient(make_app(log_requests=True), raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        assert client.get("/503").status_code == 503
    rows = captured.rows()
    assert [(r["activity_type"], r["severity"], r["metadata"]["status_code"]) for r in rows] == [
        ("api_error", "error", 500), ("api_error", "error", 503)]
    assert rows[0]["metadata"]["error_type"] == "RuntimeError"
    assert rows[0]["metadata"]["error_message"] == "endpoint failed"


def test_the_apps_exception_propagates_unchanged(captured: Capture) -> None:
    with TestClient(make_app(log_requests=True)) as client, pytest.raises(
        RuntimeError, match="endpoint failed"
    ):
        client.get("/boom")
    assert [r["activity_type"] for r in captured.rows()] == ["api_error"]


def test_excluded_paths_get_context_but_no_request_activity(captured: Capture) -> None:
    app = make_app(log_requests=True, exclude_paths=["/health/*", "/echo"])
    with TestClient(app) as client:
        client.get("/health/deep")
        body = client.get("/echo").json()
        client.get("/slow")
    assert body["first"]["path"] == "/echo"
    assert [(r["activity_type"], r["path"]) for r in captured.rows()] == [
        ("echo", "/echo"), ("api_request", "/slow")]


def test_request_activity_sees_the_user_set_during_the_request(captured: Capture) -> None:
    with TestClient(make_app(log_requests=True)) as client:
        client.get("/login")
    (row,) = captured.rows()
    assert (row["actor_type"], row["actor_id"]) == ("user", "user-77")


def test_streamed_response_gets_one_request_activity_after_its_last_chunk(
    captured: Capture,
) -> None:
    with TestClient(make_app(log_requests=True)) as client:
        body = client.get("/stream", headers={"X-Request-ID": "s-2"}).text
    assert body.splitlines() == ["0:s-2", "1:s-2", "2:s-2"]
    (row,) = captured.rows()
    assert (row["activity_type"], row["request_id"], row["metadata"]["status_code"]) == (
        "api_request", "s-2", 200)


def test_the_apps_header_list_is_not_mutated() -> None:
    shared = [(b"content-type", b"text/plain")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": shared})
        await send({"type": "http.response.body", "body": b"x"})

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    for _ in range(2):
        sent = asyncio.run(_raw_call(ActivityContextMiddleware(app), scope))
        assert [k for k, _ in sent[0]["headers"]] == [b"content-type", b"x-request-id"]
    assert shared == [(b"content-type", b"text/plain")]
