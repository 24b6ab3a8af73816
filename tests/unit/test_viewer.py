"""The audit viewer over HTTP (httpx against the Starlette app) on the embedded SQLite store.

What a page shows is checked on the parsed HTML (stdlib ``html.parser``): which rows, which
links, which elements. Stored values are hostile on purpose in some rows: they must come
back as text, never as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Mount

from activity_logging.crud import activity_log_crud
from activity_logging.exceptions import ConfigurationError
from activity_logging.schema import COLUMNS as ACTIVITY_COLUMNS
from activity_logging.viewer import TokenAuthorizer, create_viewer_app
from activity_logging.viewer.app import environment
from activity_logging.viewer.present import normalize_changes, parse_filters
from activity_logging.viewer.security import CONTENT_SECURITY_POLICY, credential, is_loopback
from activity_logging.viewer.svg import nice_scale
from tests.cli_run import run
from tests.crud_rows import BASE, make_rows, reference, seed
from tests.html_page import Page, assert_inert

XSS_SCRIPT = "<script>document.title='pwned'</script>"
XSS_IMG = "<img src=x onerror=\"document.title='pwned'\">"
TOKEN = "t0ken-for-the-viewer-tests"


# --- seed data -------------------------------------------------------------------------------


def special_rows() -> list[dict[str, Any]]:
    """Rows with hostile values and each stored shape of ``changes``."""
    xss, dict_shape, list_shape, neither, not_object = make_rows(
        5, start=BASE + timedelta(days=3), step=timedelta(minutes=1), producer_id="special")
    xss.update(
        activity_type=XSS_IMG, description=XSS_SCRIPT, user_agent=XSS_SCRIPT, actor_type="user",
        actor_id=XSS_IMG, target_type="call", target_id=XSS_SCRIPT, request_id="req-<b>x</b>",
        changes={XSS_IMG: {"old": XSS_SCRIPT, "new": XSS_IMG}}, metadata={"note": XSS_SCRIPT},
    )
    dict_shape.update(target_type="call", target_id="call-123", changes={
        "status": {"old": "ringing", "new": "answered"}, "agent": {"old": None, "new": "a7"}})
    list_shape.update(target_type="call", target_id="call-123",
                      changes={"status": ["queued", "ringing"]})
    neither.update(changes={"note": "free text", "count": 3})
    not_object.update(changes=[1, 2, 3])
    return [xss, dict_shape, list_shape, neither, not_object]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    """One seeded SQLite file for the module (the viewer only reads it)."""
    path = tmp_path_factory.mktemp("viewer") / "viewer.db"
    rows = make_rows(60) + special_rows()
    url = f"sqlite:///{path}"
    asyncio.run(seed(url, rows))
    return url, rows


def allow(request: Request) -> bool:
    return True


@contextlib.asynccontextmanager
async def client_for(app: Any, *, headers: dict[str, str] | None = None
                     ) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in-process; closes the viewer's pool after."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://viewer.test",
                                     headers=headers) as client:
            yield client
    finally:
        viewer = app if hasattr(app.state, "viewer_store") else app.routes[0].app
        await viewer.state.viewer_store.close()


@contextlib.asynccontextmanager
async def viewer(store: tuple[str, list[dict[str, Any]]], **options: Any
                 ) -> AsyncIterator[httpx.AsyncClient]:
    options.setdefault("authorize", allow)
    async with client_for(create_viewer_app(database_url=store[0], **options)) as client:
        yield client


# --- reading pages ----------------------------------------------------------------------------


async def page(client: httpx.AsyncClient, url: str, *, status: int = 200) -> Page:
    response = await client.get(url)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    return Page(response.text)


# --- access -----------------------------------------------------------------------------------


def test_authorize_is_required_and_must_be_callable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(TypeError):
        create_viewer_app(database_url=url)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="authorize must be a callable"):
        create_viewer_app(database_url=url, authorize=None)


@pytest.mark.anyio
@pytest.mark.parametrize("path", [
    "/", "/?actor_id=a1", "/target?target_id=c1", "/actor?actor_id=a1", "/request?request_id=req-1",
    f"/activity/{uuid.uuid4()}", "/summary", "/export.csv", "/export.jsonl", "/static/viewer.css",
    "/no-such-page",
])
async def test_every_path_is_refused_when_authorize_says_no(store: Any, path: str) -> None:
    async with viewer(store, authorize=lambda request: False) as client:
        response = await client.get(path)
    assert response.status_code == 403
    assert "event" not in response.text and "agent" not in response.text
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.anyio
async def test_only_exactly_true_lets_a_request_in(store: Any) -> None:
    async def async_allow(request: Request) -> bool:
        return True

    async with viewer(store, authorize=lambda request: "yes") as client:
        assert (await client.get("/")).status_code == 403
    async with viewer(store, authorize=async_allow) as client:
        assert (await client.get("/")).status_code == 200


@pytest.mark.anyio
async def test_an_http_exception_from_authorize_becomes_the_response(store: Any) -> None:
    def ask(request: Request) -> bool:
        raise HTTPException(401, "sign in", headers={"WWW-Authenticate": 'Basic realm="x"'})

    async with viewer(store, authorize=ask) as client:
        response = await client.get("/")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="x"'
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.anyio
@pytest.mark.parametrize(("authorization", "status"), [
    (None, 401),
    (f"Bearer {TOKEN}", 200),
    (f"bearer   {TOKEN}  ", 200),
    ("Basic " + httpx.BasicAuth("anyone", TOKEN)._auth_header.split(" ", 1)[1], 200),
    (f"Bearer {TOKEN}x", 401),
    (f"Bearer {TOKEN[:-1]}", 401),
    ("Bearer ", 401),
    ("Basic !!!not-base64", 401),
    ("Basic " + httpx.BasicAuth(TOKEN, "")._auth_header.split(" ", 1)[1], 401),
    (f"Token {TOKEN}", 401),
])
async def test_token_authorizer_takes_bearer_or_basic_and_refuses_the_rest(
    store: Any, authorization: str | None, status: int
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else None
    async with viewer(store, authorize=TokenAuthorizer(TOKEN)) as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith('Basic realm="activity-logging viewer"')
        assert "event" not in response.text


def test_token_authorizer_refuses_short_tokens_and_hides_the_token() -> None:
    with pytest.raises(ConfigurationError, match="at least 16"):
        TokenAuthorizer("short")
    assert TOKEN not in repr(TokenAuthorizer(TOKEN))


@pytest.mark.parametrize(("header", "secret"), [
    ("Bearer abc", "abc"), ("Basic " + httpx.BasicAuth("u", "p:q")._auth_header.split(" ", 1)[1], "p:q"),
    ("", None), ("Bearer", None), ("Basic Zm9v", None), ("Digest abc", None),
    ("Basic " + "\u00e9", None),
])
def test_credential_reads_bearer_and_basic_headers(header: str, secret: str | None) -> None:
    assert credential(header) == secret


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.4", False), ("example.com", False),
])
def test_is_loopback_only_for_addresses_this_machine_alone_can_reach(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- headers and markup -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_security_headers_on_pages_denials_and_errors(store: Any) -> None:
    async with viewer(store) as client:
        responses = [await client.get(p) for p in ("/", "/?severity=loud", "/no-such-page",
                                                   "/export.csv")]
        css = await client.get("/static/viewer.css")
    async with viewer(store, authorize=lambda r: False) as client:
        responses.append(await client.get("/"))
    assert [r.status_code for r in responses] == [200, 400, 404, 200, 403]
    for response in [*responses, css]:
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src" not in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    assert all(r.headers["cache-control"] == "no-store" for r in responses)
    assert css.headers["cache-control"].startswith("private")
    assert css.headers["content-type"].startswith("text/css")


@pytest.mark.anyio
async def test_every_page_is_inert_markup_with_the_hostile_values_shown_as_text(store: Any) -> None:
    rows = store[1]
    xss = next(r for r in rows if r["user_agent"] == XSS_SCRIPT)
    paths = [
        "/", "/?actor_type=user", f"/activity/{xss['id']}", "/summary?days=366",
        "/target?" + httpx.QueryParams({"target_type": "call", "target_id": XSS_SCRIPT}).__str__(),
        "/actor?" + str(httpx.QueryParams({"actor_type": "user", "actor_id": XSS_IMG})),
        "/request?" + str(httpx.QueryParams({"request_id": "req-<b>x</b>"})),
    ]
    async with viewer(store) as client:
        pages = {path: await page(client, path) for path in paths}
    for path, p in pages.items():
        assert_inert(p)
        assert p.elements("link", None) == [{"rel": "stylesheet", "href": p.elements("link")[0]["href"]}]
        if path != "/summary?days=366":
            assert xss["id"] in p.row_ids() or path.startswith("/activity/"), path
    detail = pages[f"/activity/{xss['id']}"]
    for payload in (XSS_SCRIPT, XSS_IMG):
        assert payload in detail.text
    assert "req-<b>x</b>" in detail.text
    assert XSS_IMG in pages["/summary?days=366"].text  # the type's label in the SVG


@pytest.mark.anyio
async def test_stored_markup_comes_back_escaped_in_the_raw_html(store: Any) -> None:
    rows = store[1]
    xss = next(r for r in rows if r["user_agent"] == XSS_SCRIPT)
    async with viewer(store) as client:
        html = (await client.get(f"/activity/{xss['id']}")).text
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html


# --- listings ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_is_newest_first_and_keyset_pages_show_each_row_once(store: Any) -> None:
    rows = store[1]
    seen: list[uuid.UUID] = []
    pages: list[Page] = []
    async with viewer(store, page_size=7) as client:
        target: str | None = "/"
        while target is not None:
            p = await page(client, target)
            pages.append(p)
            seen.extend(p.row_ids())
            older = p.links(rel="next")
            target = older[0] if older else None
        back = await page(client, pages[2].links(rel="prev")[0])
        newest = await page(client, pages[2].links(cls="first")[0])
    want = [r["id"] for r in reference(rows)]
    assert seen == want
    assert len(pages) == -(-len(rows) // 7)
    assert back.row_ids() == pages[1].row_ids()
    assert newest.row_ids() == pages[0].row_ids()
    assert pages[0].links(rel="prev") == []


@pytest.mark.anyio
@pytest.mark.parametrize(("query", "expected"), [
    ({"actor_type": "agent", "actor_id": "a1"}, {"actor_type": "agent", "actor_id": "a1"}),
    ({"target_type": "call", "target_id": "c2"}, {"target_type": "call", "target_id": "c2"}),
    ({"activity_type": "call_created"}, {"activity_type": "call_created"}),
    ({"activity_type": "call_created, agent_login"}, {"activity_type": ["call_created", "agent_login"]}),
    ({"severity": ["warning", "critical"]}, {"severity": ["warning", "critical"]}),
    ({"request_id": "req-3"}, {"request_id": "req-3"}),
    ({"since": "2026-03-10T14:00", "until": "2026-03-10T18:00"},
     {"start": BASE + timedelta(hours=2), "end": BASE + timedelta(hours=6)}),
    ({"text": "needle"}, {"text": "needle"}),
    ({"text": "100%_done", "severity": "info"}, {"text": "100%_done", "severity": "info"}),
])
async def test_each_filter_shows_exactly_the_matching_rows(
    store: Any, query: dict[str, Any], expected: dict[str, Any]
) -> None:
    rows = store[1]
    async with viewer(store) as client:
        p = await page(client, "/?" + str(httpx.QueryParams({**query, "limit": 500})))
    want = [r["id"] for r in reference(rows, **expected)]
    assert want, "the seed must match, or the test proves nothing"
    assert p.row_ids() == want
    # the form shows the filter that was applied
    inputs = {a["name"]: a.get("value", "") for a in p.elements("input") if a.get("type") != "checkbox"}
    for key, value in query.items():
        if key != "severity":
            assert inputs[key] == value
    checked = {a["value"] for a in p.elements("input") if a.get("type") == "checkbox" and "checked" in a}
    wanted = query.get("severity", [])
    assert checked == ({wanted} if isinstance(wanted, str) else set(wanted))


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "message"), [
    ("/?severity=loud", "severity must be one of"),
    ("/?since=yesterday-ish", "since: invalid time"),
    ("/?since=2026-03-02&until=2026-03-01", "is before start"),
    ("/?cursor=not-a-cursor", "invalid cursor"),
    ("/?limit=0", "limit must be"),
    ("/?limit=many", "limit must be"),
    ("/?actor_id=" + "x" * 600, "longer than 512"),
    ("/summary?days=0", "days must be"),
    ("/target?target_type=call", "needs target_id"),
    ("/actor", "needs actor_id"),
    ("/request", "needs request_id"),
])
async def test_bad_parameters_are_a_400_page_saying_what_is_wrong(
    store: Any, path: str, message: str
) -> None:
    async with viewer(store) as client:
        p = await page(client, path, status=400)
    assert message in p.text


@pytest.mark.anyio
async def test_target_history_is_that_target_newest_first_with_full_diffs(store: Any) -> None:
    rows = store[1]
    async with viewer(store) as client:
        p = await page(client, "/target?target_type=call&target_id=call-123")
    assert p.row_ids() == [r["id"] for r in reference(rows, target_type="call", target_id="call-123")]
    assert len(p.row_ids()) == 2
    assert len(p.elements("table", "changes")) == 2
    assert "History of call call-123" in p.text
    hidden = {a["name"]: a["value"] for a in p.elements("input") if a.get("type") == "hidden"}
    assert hidden == {"target_type": "call", "target_id": "call-123"}


@pytest.mark.anyio
async def test_actor_timeline_is_newest_first_under_a_heading_per_day(store: Any) -> None:
    rows = store[1]
    async with viewer(store) as client:
        p = await page(client, "/actor?actor_type=agent&actor_id=a2&limit=500")
    want = reference(rows, actor_type="agent", actor_id="a2")
    assert p.row_ids() == [r["id"] for r in want]
    days = sorted({r["timestamp"].date() for r in want}, reverse=True)
    assert len(p.elements("tr", "day")) == len(days) > 1
    assert "Timeline of agent a2" in p.text


@pytest.mark.anyio
async def test_request_drill_down_lists_its_activities_in_the_order_they_happened(store: Any) -> None:
    rows = store[1]
    async with viewer(store) as client:
        p = await page(client, "/request?request_id=req-2")
    want = reference(rows, desc=False, request_id="req-2")
    assert p.row_ids() == [r["id"] for r in want] and len(want) == 4
    assert "POST" in p.text and "/calls" in p.text  # the request's context


@pytest.mark.anyio
async def test_rows_link_to_actor_target_request_and_detail(store: Any) -> None:
    rows = store[1]
    async with viewer(store) as client:
        p = await page(client, "/?request_id=req-0")
    hrefs = p.links()
    first = reference(rows, request_id="req-0")[0]
    assert f"/activity/{first['id']}" in hrefs
    assert "/actor?actor_type=agent&actor_id=a1" in hrefs
    assert "/target?target_type=call&target_id=c1" in hrefs
    assert "/request?request_id=req-0" in hrefs
    assert "/?severity=debug" in hrefs


@pytest.mark.anyio
async def test_export_links_carry_the_current_filter(store: Any) -> None:
    async with viewer(store) as client:
        p = await page(client, "/actor?actor_type=agent&actor_id=a1&severity=info")
    exports = [h for h in p.links() if h.startswith("/export.")]
    assert sorted(urlsplit(h).path for h in exports) == ["/export.csv", "/export.jsonl"]
    for h in exports:
        assert sorted(parse_qsl(urlsplit(h).query)) == [
            ("actor_id", "a1"), ("actor_type", "agent"), ("severity", "info")]


# --- changes ------------------------------------------------------------------------------------


def change_cells(p: Page, html: str) -> list[tuple[str, ...]]:
    """The rows of the first changes table: (field, old, new) or (field, value)."""
    start = html.index('<table class="changes">')
    table = html[start:html.index("</table>", start)]
    out = []
    for chunk in table.split("<tr>")[2:]:
        cells = Page(chunk)
        texts = [t.strip() for t in cells.texts if t.strip() and t.strip() != "\u2192"]
        out.append(tuple(texts))
    return out


@pytest.mark.anyio
async def test_changes_show_field_old_and_new_for_both_stored_shapes(store: Any) -> None:
    rows = store[1]
    by_changes = {orjson.dumps(r["changes"]): r for r in rows}
    dict_row = by_changes[orjson.dumps({"status": {"old": "ringing", "new": "answered"},
                                        "agent": {"old": None, "new": "a7"}})]
    list_row = by_changes[orjson.dumps({"status": ["queued", "ringing"]})]
    neither = by_changes[orjson.dumps({"note": "free text", "count": 3})]
    async with viewer(store) as client:
        got = {}
        for name, row in (("dict", dict_row), ("list", list_row), ("neither", neither)):
            html = (await client.get(f"/activity/{row['id']}")).text
            got[name] = change_cells(Page(html), html)
        raw = Page((await client.get(f"/activity/{by_changes[b'[1,2,3]']['id']}")).text)
    assert got["dict"] == [("status", "ringing", "answered"), ("agent", "null", "a7")]
    assert got["list"] == [("status", "queued", "ringing")]
    assert got["neither"] == [("note", "free text"), ("count", "3")]
    assert "[1,2,3]" in raw.text and raw.elements("pre", "raw")


# --- summary, detail, export --------------------------------------------------------------------


@pytest.mark.anyio
async def test_summary_draws_activity_per_day_and_per_type_as_svg(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    rows = make_rows(30, start=now - timedelta(days=2), step=timedelta(hours=1))
    url = f"sqlite:///{tmp_path / 'summary.db'}"
    await seed(url, rows)
    from activity_logging.db import create_async_engine_for

    engine = create_async_engine_for(url)
    try:
        async with engine.connect() as conn:
            want = await activity_log_crud.get_activity_summary(conn, days=7)
    finally:
        await engine.dispose()
    async with viewer((url, rows)) as client:
        html = (await client.get("/summary?days=7")).text
    svgs = html.split("<svg")[1:]
    assert len(svgs) == 2
    days_svg, types_svg = Page("<svg" + svgs[0]), Page("<svg" + svgs[1])
    day_titles = [t for t in days_svg.texts if ": " in t]
    assert day_titles == [f"{day}: {n:,}" for day, n in want.by_day.items()]
    assert len(days_svg.elements("rect", "bar")) == 7
    assert sum(want.by_day.values()) == want.total == len(rows)
    type_titles = [t for t in types_svg.texts if ": " in t]
    assert type_titles == [f"{name}: {n:,}" for name, n in want.by_type.items()]
    day_links = days_svg.links()
    assert day_links[0] == "/?" + str(httpx.QueryParams(
        {"since": next(iter(want.by_day)), "until": list(want.by_day)[1]}))


@pytest.mark.anyio
async def test_unknown_or_malformed_activity_id_is_a_404_page(store: Any) -> None:
    async with viewer(store) as client:
        await page(client, f"/activity/{uuid.uuid4()}", status=404)
        await page(client, "/activity/not-a-uuid", status=404)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_export_streams_the_current_filter_oldest_first(store: Any, fmt: str) -> None:
    rows = store[1]
    async with viewer(store) as client:
        response = await client.get(f"/export.{fmt}?actor_type=agent&severity=info&severity=error")
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment; filename=\"activity-")
    want = [r["id"] for r in reference(rows, desc=False, actor_type="agent",
                                       severity=["info", "error"])]
    if fmt == "csv":
        table = list(csv.reader(io.StringIO(response.text)))
        assert tuple(table[0]) == ACTIVITY_COLUMNS
        got = [uuid.UUID(line[0]) for line in table[1:]]
    else:
        got = [uuid.UUID(orjson.loads(line)["id"]) for line in response.text.splitlines()]
    assert got == want and want


@pytest.mark.anyio
async def test_only_get_and_head_are_served(store: Any) -> None:
    async with viewer(store) as client:
        assert (await client.post("/")).status_code == 405
        assert (await client.delete("/activity/x")).status_code == 405
        assert (await client.head("/")).status_code == 200


# --- the store ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_viewer_cannot_write_to_the_sqlite_store(store: Any) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    app = create_viewer_app(database_url=store[0], authorize=allow)
    engine = app.state.viewer_store.engine
    try:
        async with engine.connect() as conn:
            with pytest.raises(OperationalError, match="readonly"):
                await conn.execute(text("DELETE FROM activity_logs"))
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_a_missing_sqlite_file_is_a_503_page_and_is_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    async with viewer((f"sqlite:///{missing}", [])) as client:
        p = await page(client, "/", status=503)
        assert (await client.get("/export.csv")).status_code == 503
    assert "There is no SQLite database at" in p.text
    assert not missing.exists()


@pytest.mark.anyio
async def test_a_store_without_the_table_says_to_run_init_db(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "empty.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
    async with viewer((f"sqlite:///{path}", [])) as client:
        p = await page(client, "/", status=503)
    assert "activity-logging init-db" in p.text


@pytest.mark.anyio
async def test_mounted_under_a_prefix_every_link_stays_under_it(store: Any) -> None:
    inner = create_viewer_app(database_url=store[0], authorize=allow, page_size=5)
    outer = Starlette(routes=[Mount("/audit", app=inner)])
    async with client_for(outer) as client:
        first = await page(client, "/audit/")
        second = await page(client, first.links(rel="next")[0])
        css = await client.get(first.elements("link")[0]["href"])
        actor = await page(client, first.links(cls="actor")[0])
    assert all(h.startswith("/audit/") for h in first.links())
    assert first.elements("form")[0]["action"] == "/audit/"
    assert len(second.row_ids()) == 5 and not set(second.row_ids()) & set(first.row_ids())
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert actor.row_ids()


# --- the serve verb (its real process is in tests/integration/test_viewer_browser.py) ----------


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIVITY_LOG_VIEWER_TOKEN", raising=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4", "example.com"])
def test_serve_refuses_a_non_loopback_address_without_a_token(
    store: Any, no_token: None, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["serve", "--host", host, "--port", "0", "--database-url", store[0]], capsys)
    assert code == 2
    assert f"refusing to listen on {host!r} without ACTIVITY_LOG_VIEWER_TOKEN" in err
    assert "--host 127.0.0.1" in err


def test_serve_refuses_a_short_token(
    store: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACTIVITY_LOG_VIEWER_TOKEN", "abc")
    code, _, err = run(["serve", "--port", "0", "--database-url", store[0]], capsys)
    assert code == 2 and "at least 16 characters" in err


def test_serve_refuses_a_missing_sqlite_file_without_creating_it(
    tmp_path: Path, no_token: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.db"
    code, _, err = run(["serve", "--port", "0", "--database-url", f"sqlite:///{missing}"], capsys)
    assert code == 1 and f"no SQLite database at {missing}" in err
    assert not missing.exists()


def test_serve_refuses_a_store_without_the_table(
    tmp_path: Path, no_token: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    path = tmp_path / "bare.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
    code, _, err = run(["serve", "--port", "0", "--database-url", f"sqlite:///{path}"], capsys)
    assert code == 1 and "init-db" in err


# --- pure parts -------------------------------------------------------------------------------------


def test_parse_filters_ignores_blanks_and_unknown_parameters() -> None:
    form = parse_filters([("actor_id", "  a1 "), ("text", ""), ("cursor", "x"), ("page", "2"),
                          ("severity", "INFO,error"), ("actor_id", "a2")])
    assert form.values == (("actor_id", "a1"), ("severity", "INFO,error"))
    assert form.filters.actor_id == "a1"
    assert form.filters.severity == ("info", "error")
    assert form.filters.text is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_MACROS = environment().from_string(
    '{% import "macros.html" as m with context %}{{ m.changes_table(ch) }}{{ m.changes_inline(ch) }}')
_CHANGE_TAGS = {"table", "thead", "tbody", "tr", "th", "td", "span", "pre", "code", "ul", "li"}


@settings(max_examples=200, deadline=None)
@given(changes=json_values | st.dictionaries(st.text(), st.dictionaries(
    st.sampled_from(["old", "new"]), json_values, min_size=1)))
def test_any_stored_changes_render_as_inert_text(changes: Any) -> None:
    shown = normalize_changes(changes)
    html = _MACROS.render(ch=shown, base="")
    p = Page(html)
    assert {tag for tag, _ in p.tags} <= _CHANGE_TAGS
    assert all(not name.startswith("on") and name not in ("style", "href")
               for _, attrs in p.tags for name in attrs)
    for row in shown.rows:
        assert row.field.strip() == "" or row.field.strip()[:20] in p.text


@given(st.integers(min_value=-5, max_value=10**12))
def test_nice_scale_covers_the_maximum_in_at_most_four_round_steps(maximum: int) -> None:
    top, step = nice_scale(maximum)
    assert top >= maximum and top % step == 0 and 1 <= top // step <= 4
    assert str(step).strip("0") in ("1", "2", "5")


def test_metrics_app_is_mounted_behind_the_viewers_authorization(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    async def metrics(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"activity_log_pipeline_healthy 1\n"})

    allowed = {"yes": False}
    app = create_viewer_app(database_url=f"sqlite:///{tmp_path / 'm.db'}",
                            authorize=lambda request: allowed["yes"], metrics_app=metrics)
    with TestClient(app) as client:
        assert client.get("/metrics/").status_code == 403
        allowed["yes"] = True
        response = client.get("/metrics/")
        assert response.status_code == 200 and "activity_log_pipeline_healthy 1" in response.text
