"""``create_viewer_app``: the read-only audit viewer, a Starlette app to mount or to ``serve``.

Pages (paths relative to where the app is mounted)::

    /                      every activity, newest first, filters and keyset pages
    /target?target_type=&target_id=   one target's history, newest first, full diffs
    /actor?actor_type=&actor_id=      one actor's timeline, newest first, by day
    /request?request_id=   one request's activities, in the order they happened
    /activity/<id>         one activity: every field, its changes, its metadata
    /summary?days=30       activity per day and per type (server-rendered SVG), per severity
    /export.csv, /export.jsonl        the current filter, streamed (export.py's encoding)
    /static/viewer.css     the only stylesheet (the CSP allows no other style)

Every listing takes the filters ``since``, ``until`` (ISO 8601 or an age: ``24h``),
``activity_type`` (repeatable, or comma-separated), ``severity`` (repeatable), ``actor_type``,
``actor_id``, ``target_type``, ``target_id``, ``request_id``, ``text`` (in the description),
``limit`` (rows per page) and the page cursors ``cursor`` / ``back``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any, Final

import jinja2
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from ..config import DEFAULT_SQLITE_URL, resolve_read_database_url, resolve_schema
from ..crud import ActivitySummary, Order
from ..exceptions import ConfigurationError, StoreUnavailableError
from ..export import EXPORT_FORMATS
from ..levels import SEVERITIES
from ..urls import sqlite_file
from . import present, svg
from .security import AuthorizeMiddleware, SecurityHeadersMiddleware, check_authorize
from .store import DEFAULT_STATEMENT_TIMEOUT, ViewerStore

logger: Final = logging.getLogger("activity_logging.viewer")

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
DEFAULT_SUMMARY_DAYS: Final = 30
MAX_SUMMARY_DAYS: Final = 366
#: Types drawn one bar each on the summary; the rest are added up in one "other" bar.
SUMMARY_TOP_TYPES: Final = 15
_EXPORT_MEDIA_TYPES: Final = {"csv": "text/csv; charset=utf-8",
                              "jsonl": "application/x-ndjson; charset=utf-8"}
_CSS_PATH: Final = "/static/viewer.css"


@dataclass(frozen=True, slots=True)
class View:
    """A listing: where it lives, its order, and the filter parameters that define it."""

    name: str
    path: str
    order: Order
    #: Parameters fixed by the page (shown as its heading, kept as hidden form fields).
    keys: tuple[str, ...] = ()
    #: The one of ``keys`` the page cannot do without.
    required: str | None = None

    def heading(self, form: present.FilterForm) -> str:
        """The page's heading (plain text; the template escapes it)."""
        def who(kind: str) -> str:
            return " ".join(v for v in (form.get(f"{kind}_type"), form.get(f"{kind}_id")) if v)

        if self.name == "target":
            return f"History of {who('target')}"
        if self.name == "actor":
            return f"Timeline of {who('actor')}"
        if self.name == "request":
            return f"Request {form.get('request_id')}"
        return "Activity"


VIEWS: Final = (
    View("list", "/", "desc"),
    View("target", "/target", "desc", ("target_type", "target_id"), "target_id"),
    View("actor", "/actor", "desc", ("actor_type", "actor_id"), "actor_id"),
    View("request", "/request", "asc", ("request_id",), "request_id"),
)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates' Jinja2 environment: autoescaping on for every template, whatever its
    name, and undefined names an error rather than silently empty."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("activity_logging.viewer", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        qs=present.query_string, with_params=present.with_params, show_time=present.show_time,
        show_value=present.show_value, severity_class=present.severity_class,
        normalize_changes=present.normalize_changes, pretty_json=present.pretty_json,
        SEVERITIES=SEVERITIES,
    )
    return env


def _stylesheet() -> bytes:
    return resources.files("activity_logging.viewer").joinpath("static/viewer.css").read_bytes()


class _Pages:
    """The endpoints, bound to one store and one look."""

    def __init__(self, store: ViewerStore, *, title: str, page_size: int) -> None:
        self.store = store
        self.title = title
        self.page_size = page_size
        self.css = _stylesheet()
        self.css_version = hashlib.sha256(self.css).hexdigest()[:12]

    # --- rendering ---

    def render(self, request: Request, template: str, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        base = str(request.scope.get("root_path", "")).rstrip("/")
        html = environment().get_template(template).render(
            base=base, title=self.title, css_url=f"{base}{_CSS_PATH}?v={self.css_version}",
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, status: int, heading: str, message: str,
              hint: str | None = None) -> HTMLResponse:
        return self.render(request, "error.html", status=status, heading=heading,
                           message=message, hint=hint, nav="")

    def _limit(self, request: Request) -> int:
        raw = request.query_params.get("limit")
        if not raw:
            return self.page_size
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ConfigurationError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {raw!r}")
        return limit

    # --- pages ---

    async def listing(self, request: Request, view: View) -> Response:
        form = present.parse_filters(request.query_params.multi_items())
        if view.required is not None and not form.get(view.required):
            raise ConfigurationError(f"this page needs {view.required}")
        limit = self._limit(request)
        cursor = request.query_params.get("cursor") or None
        back = request.query_params.get("back") or None
        page = await self.store.page(form.filters, limit=limit, order=view.order,
                                     cursor=cursor, back=back)
        kept = list(form.values)
        if request.query_params.get("limit"):
            kept.append(("limit", str(limit)))
        return self.render(
            request, "list.html", nav=view.name, view=view, form=form, page=page,
            heading=view.heading(form), kept=kept, paged=cursor is not None or back is not None,
            fixed=[(k, v) for k, v in form.values if k in view.keys],
        )

    async def activity(self, request: Request) -> Response:
        try:
            activity_id = uuid.UUID(request.path_params["activity_id"])
        except ValueError:
            return self.error(request, 404, "Not found", "No activity has this id.")
        record = await self.store.get(activity_id)
        if record is None:
            return self.error(request, 404, "Not found", "No activity has this id.")
        return self.render(request, "activity.html", nav="", rec=record)

    async def summary(self, request: Request) -> Response:
        raw = request.query_params.get("days") or str(DEFAULT_SUMMARY_DAYS)
        try:
            days = int(raw)
        except ValueError:
            days = 0
        if not 1 <= days <= MAX_SUMMARY_DAYS:
            raise ConfigurationError(f"days must be an integer from 1 to {MAX_SUMMARY_DAYS}, got {raw!r}")
        summary = await self.store.summary(days)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return self.render(
            request, "summary.html", nav="summary", s=summary, days=days,
            day_chart=_day_chart(summary, base), type_chart=_type_chart(summary, base),
            first_day=summary.since.date().isoformat(),
        )

    async def export(self, request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt not in EXPORT_FORMATS:
            return self.error(request, 404, "Not found", f"Exports are {', '.join(EXPORT_FORMATS)}.")
        form = present.parse_filters(request.query_params.multi_items())
        # Fail before the 200 goes out: once streaming starts, an error can only cut it short.
        await self.store.check()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(
            self.store.export(form.filters, fmt), media_type=_EXPORT_MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="activity-{stamp}.{fmt}"'},
        )

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css; charset=utf-8",
                        headers={"Cache-Control": "private, max-age=86400"})

    # --- errors ---

    async def on_bad_request(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 400, "Bad request", str(exc))

    async def on_database_error(self, request: Request, exc: Exception) -> Response:
        from .._internal import database_error_line
        from ..db import is_missing_table

        if isinstance(exc, StoreUnavailableError):
            message, hint = str(exc), "Check that the database is running and reachable."
        else:
            message, hint = database_error_line(exc), None
            path = sqlite_file(self.store.url)
            if path is not None and not path.exists():
                hint = f"There is no SQLite database at {path}: nothing has been logged there yet."
            elif is_missing_table(exc):
                hint = "The activity_logs table is missing: run `activity-logging init-db`."
        logger.warning("viewer: %s %s: database error: %s", request.method, request.url.path, message)
        return self.error(request, 503, "Database unavailable", message, hint)


def _listing_endpoint(pages: _Pages, view: View) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await pages.listing(request, view)

    endpoint.__name__ = f"{view.name}_page"
    return endpoint


def _day_chart(summary: ActivitySummary, base: str) -> svg.Chart:
    points = []
    for day, count in summary.by_day.items():
        after = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
        points.append((day, count, f"{base}/" + present.query_string(
            [("since", day), ("until", after)])))
    return svg.column_chart(points)


def _type_chart(summary: ActivitySummary, base: str) -> svg.Chart:
    first_day = summary.since.date().isoformat()
    ranked = list(summary.by_type.items())  # crud orders by count, then name
    points = [
        (name, count, f"{base}/" + present.query_string(
            [("activity_type", name), ("since", first_day)]))
        for name, count in ranked[:SUMMARY_TOP_TYPES]
    ]
    rest = ranked[SUMMARY_TOP_TYPES:]
    if rest:
        points.append((f"{len(rest)} other types", sum(n for _, n in rest), ""))
    return svg.bar_chart(points)


def create_viewer_app(
    *,
    authorize: object,
    database_url: str | None = None,
    read_database_url: str | None = None,
    schema: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    title: str = "Activity log",
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    metrics_app: Any = None,
) -> Starlette:
    """The read-only audit viewer as a Starlette app::

        app.mount("/audit", create_viewer_app(
            database_url=os.environ["DATABASE_URL"], authorize=lambda r: is_auditor(r)))

    Args:
        authorize: ``authorize(request) -> bool`` (sync or async), called for every request
            before anything else; only ``True`` lets it in, anything else is a 403, an
            ``HTTPException`` it raises becomes that response. Required: there is no open
            default. Runs on the event loop: keep it fast, or make it ``async``.
        database_url: the store to read unless ``read_database_url`` is given (default
            ``ACTIVITY_LOG_READ_DATABASE_URL``, else ``DATABASE_URL``, else the embedded
            SQLite file); opened read-only.
        read_database_url: the store to read instead, e.g. a read replica of
            ``database_url`` holding the same schema (``config.resolve_read_database_url``:
            this argument, else ``database_url`` when given, else
            ``ACTIVITY_LOG_READ_DATABASE_URL``, else ``DATABASE_URL``). The viewer only
            reads: nothing in it uses the primary when a replica is named. The URL it reads
            is ``app.state.viewer_store.url``.
        schema: PostgreSQL schema of the table (default ``ACTIVITY_LOG_SCHEMA``).
        page_size: rows per page (a request may ask for 1 to 500 with ``limit``).
        title: shown in the header and the window title.
        statement_timeout: PostgreSQL: seconds any one query may run (0 for no limit).
        metrics_app: an ASGI app mounted at ``/metrics`` behind the same ``authorize``
            (``activity_logging.metrics.pipeline_metrics_app(...)``: the pipeline health for
            Prometheus, which scrapes with the viewer's credentials).

    Does not connect: a database that is down shows as a 503 page. Raises
    ``ConfigurationError`` for a bad argument. A mounted app does not get lifespan events
    from Starlette: close its connection pool at shutdown with
    ``await viewer.state.viewer_store.close()`` (``serve`` does this itself).
    """
    guard = check_authorize(authorize)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ConfigurationError(f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}")
    url = resolve_read_database_url(read_database_url, database_url, default=DEFAULT_SQLITE_URL)
    assert url is not None  # a default was given
    store = ViewerStore(url, schema=resolve_schema(schema), statement_timeout=statement_timeout)
    pages = _Pages(store, title=title, page_size=page_size)
    routes: list[BaseRoute] = [
        Route(view.path, _listing_endpoint(pages, view), name=f"{view.name}_page") for view in VIEWS]
    routes += [
        Route("/activity/{activity_id}", pages.activity, name="activity_page"),
        Route("/summary", pages.summary, name="summary_page"),
        Route("/export.{fmt}", pages.export, name="export"),
        Route(_CSS_PATH, pages.stylesheet, name="stylesheet"),
    ]
    if metrics_app is not None:
        routes.append(Mount("/metrics", app=metrics_app, name="metrics"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeadersMiddleware),
                    Middleware(AuthorizeMiddleware, authorize=guard)],
        exception_handlers={
            ConfigurationError: pages.on_bad_request,
            DBAPIError: pages.on_database_error,
            StoreUnavailableError: pages.on_database_error,
        },
        lifespan=lifespan,
    )
    app.state.viewer_store = store
    return app


__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "VIEWS", "View", "create_viewer_app", "environment"]
