"""``ActivityContextMiddleware``: pure ASGI middleware that sets the activity context per request.

For each HTTP (and websocket) connection it binds request id, client ip, user agent, method,
path and actor into the context (``context.bind_context``) for the whole lifetime of the
inner application call, background tasks included, and resets it with its token in
``finally``. Each request runs in its own task, so concurrent requests never see each
other's context. Optionally it logs one ``api_request``/``api_error`` activity per request.

For the ``lifespan`` scope it flushes every ``ActivityHandler`` of the process before the
server hears ``lifespan.shutdown.complete`` (``middleware_lifespan``). The rules shared with
the WSGI middleware (request id, client address, options, the request activity) are
``request_context``'s.

Pure ASGI, no Starlette import: it works under Starlette, FastAPI or any ASGI server, and
does not buffer or wrap the body, so streaming responses stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from .constants import ACTOR_USER, DEFAULT_LOGGER_NAME
from .context import bind_context, reset_context
from .exceptions import ConfigurationError
from .middleware_lifespan import run_lifespan
from .request_context import (
    MAX_USER_AGENT_CHARS,
    REQUEST_ID_PATTERN,
    RequestContextOptions,
    parse_forwarded_for,
)

__all__ = [
    "ActivityContextMiddleware",
    "RequestContextOptions",
    "default_actor_getter",
    "parse_forwarded_for",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``actor_getter(scope) -> (actor_type, actor_id)`` or ``None`` when there is no actor.
ActorGetter = Callable[[Scope], "tuple[str | None, Any] | None"]


def default_actor_getter(scope: Scope) -> tuple[str | None, Any] | None:
    """The actor of a request from ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``)
    or ``scope["state"]["user"]`` (``request.state.user``): ``("user", id)``.

    The id is the user's ``id`` attribute or key, else its ``identity``; an unauthenticated
    user gives no actor.
    """
    user = scope.get("user")
    if user is None:
        state = scope.get("state")
        if not state:  # the common case, checked first: ABC isinstance checks are slow
            return None
        user = state.get("user") if isinstance(state, Mapping) else None
    if user is None or getattr(user, "is_authenticated", True) is False:
        return None
    actor_id = user.get("id") if isinstance(user, Mapping) else getattr(user, "id", None)
    if actor_id is None:
        actor_id = getattr(user, "identity", None)
    if actor_id is None:
        return None
    return ACTOR_USER, actor_id


class ActivityContextMiddleware(RequestContextOptions):
    """Pure ASGI middleware binding the activity context for each request.

    Args:
        app: the ASGI application to wrap.
        request_id_header: header carrying the request id in and out (``X-Request-ID``).
        trusted_proxies: IPs/CIDRs (iterable, or one comma-separated string) of proxies whose
            ``X-Forwarded-For`` is believed. Empty (default): the socket peer is the client.
        forwarded_for_header: header the trusted proxies append to (``X-Forwarded-For``).
        actor_getter: ``callable(scope) -> (actor_type, actor_id) | None``; read at request
            start and again when the request activity is logged. Default:
            ``default_actor_getter``; ``None`` disables it.
        log_requests: log one activity per request (off by default): ``api_request`` at
            ``info`` (``warning`` when slower than ``slow_request_threshold``) and
            ``api_error`` at ``error`` when the app raises or answers 5xx.
        slow_request_threshold: seconds after which a request is slow (2.0).
        exclude_paths: paths that get no request activity (context is still set); an entry
            ending in ``*`` is a prefix.
        logger: logger or logger name for the request activities (``"activity"``).
        max_user_agent_chars: user agents are cut to this length (512).
        request_id_factory: makes a request id when none usable came in (128 random bits, hex).
        shutdown_flush_timeout: seconds the lifespan shutdown waits for the activity handlers
            to flush, in total (``None``: the handlers' ``close_timeout``).

    Lifespan: the app's lifespan runs unchanged, but ``lifespan.shutdown.complete`` and
    ``lifespan.shutdown.failed`` reach the server only after ``flush_handlers()`` has
    returned (in a worker thread: the event loop keeps running). An app that refuses the
    lifespan scope (raises before asking for its first message, as Django does) gets a
    minimal lifespan from the middleware instead, which only does that flush.

    Never raises on its own account: a failing ``actor_getter``, logger or shutdown flush is
    reported on stderr and the request (or shutdown) goes on. Exceptions from the app
    propagate unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str = "X-Request-ID",
        trusted_proxies: Iterable[str] | str = (),
        forwarded_for_header: str = "X-Forwarded-For",
        actor_getter: ActorGetter | None = default_actor_getter,
        log_requests: bool = False,
        slow_request_threshold: float = 2.0,
        exclude_paths: Iterable[str] = (),
        logger: str | logging.Logger = DEFAULT_LOGGER_NAME,
        max_user_agent_chars: int = MAX_USER_AGENT_CHARS,
        request_id_factory: Callable[[], str] | None = None,
        shutdown_flush_timeout: float | None = None,
    ) -> None:
        self._init_options(
            request_id_header=request_id_header, trusted_proxies=trusted_proxies,
            actor_getter=actor_getter, log_requests=log_requests,
            slow_request_threshold=slow_request_threshold, exclude_paths=exclude_paths,
            logger=logger, max_user_agent_chars=max_user_agent_chars,
            request_id_factory=request_id_factory,
        )
        if shutdown_flush_timeout is not None and not shutdown_flush_timeout >= 0:
            raise ConfigurationError(
                f"shutdown_flush_timeout must be >= 0 seconds or None, got {shutdown_flush_timeout!r}"
            )
        self.app = app
        self._rid_key = self.request_id_header.lower().encode("latin-1")
        self._xff_key = forwarded_for_header.strip().lower().encode("latin-1")
        self.shutdown_flush_timeout = shutdown_flush_timeout

    # -- per request ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                await run_lifespan(self.app, scope, receive, send, self.shutdown_flush_timeout)
            else:
                await self.app(scope, receive, send)
            return

        request_id: str | None = None
        user_agent: str | None = None
        forwarded: list[str] | None = None
        rid_key, xff_key = self._rid_key, self._xff_key
        for key, value in scope.get("headers") or ():
            if key == rid_key:
                candidate = value.decode("latin-1")
                if REQUEST_ID_PATTERN.fullmatch(candidate):
                    request_id = candidate
            elif key == b"user-agent":
                user_agent = value.decode("latin-1")
            elif key == xff_key:
                # several X-Forwarded-For headers are one list (RFC 9110 field combination)
                if forwarded is None:
                    forwarded = []
                forwarded.append(value.decode("latin-1"))
        path = scope.get("path")
        client = scope.get("client")
        fields = self._context_fields(
            scope, request_id,
            scope.get("method") or ("WS" if scope_type == "websocket" else None), path,
            client[0] if client else None, ",".join(forwarded) if forwarded else None, user_agent,
        )
        request_id = fields["request_id"]
        token = bind_context(**fields)
        try:
            if scope_type == "websocket":
                await self.app(scope, receive, send)
            elif not self.log_requests or self._excluded(path or ""):
                await self.app(scope, receive, self._echo_send(send, request_id))
            else:
                await self._call_logged(scope, receive, send, request_id)
        finally:
            reset_context(token)

    def _echo_send(self, send: Send, request_id: str) -> Send:
        header = (self._rid_key, request_id.encode("latin-1"))
        rid_key = self._rid_key

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # a copy: the app may reuse its header list across responses
                headers = list(message.get("headers") or ())
                for key, _ in headers:
                    if key.lower() == rid_key:
                        break  # the app set its own (a proxied upstream's): keep only one
                else:
                    headers.append(header)
                message["headers"] = headers
            await send(message)

        return send_with_request_id

    async def _call_logged(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        method, path = scope.get("method", ""), scope.get("path", "")
        start = time.perf_counter()
        status: list[int] = []
        finished: list[float] = []
        echo = self._echo_send(send, request_id)

        async def send_and_watch(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                status.append(int(message.get("status", 0)))
            elif kind == "http.response.body" and not message.get("more_body", False):
                finished.append(time.perf_counter())
            await echo(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception as exc:
            end = finished[0] if finished else time.perf_counter()
            self._log_request(scope, method, path, status[0] if status else 500, end - start, exc)
            raise
        end = finished[0] if finished else time.perf_counter()
        self._log_request(scope, method, path, status[0] if status else 500, end - start, None)
