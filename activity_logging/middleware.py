"""``ActivityContextMiddleware``: pure ASGI middleware that sets the activity context per request.

For each HTTP (and websocket) connection it binds request id, client ip, user agent, method,
path and actor into the context (``context.bind_context``) for the whole lifetime of the
inner application call, background tasks included, and resets it with its token in
``finally``. Each request runs in its own task, so concurrent requests never see each
other's context. Optionally it logs one ``api_request``/``api_error`` activity per request.

For the ``lifespan`` scope it flushes every ``ActivityHandler`` of the process before the
server hears ``lifespan.shutdown.complete`` (or ``.failed``): uvicorn re-raises SIGTERM once
the lifespan has completed, so ``logging.shutdown()`` never runs and whatever the handlers
still hold would die with the process.

Pure ASGI, no Starlette import: it works under Starlette, FastAPI or any ASGI server, and
does not buffer or wrap the body, so streaming responses stream.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

from ._internal import reporter
from .constants import ACTOR_USER, DEFAULT_LOGGER_NAME, ActivityType
from .context import bind_context, reset_context
from .exceptions import ConfigurationError

__all__ = ["ActivityContextMiddleware", "default_actor_getter", "parse_forwarded_for"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``actor_getter(scope) -> (actor_type, actor_id)`` or ``None`` when there is no actor.
ActorGetter = Callable[[Scope], "tuple[str | None, Any] | None"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A client-supplied request id is kept only when it matches this: bounded, no spaces,
#: quotes, control characters or anything a log viewer or a header could misread.
REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
MAX_USER_AGENT_CHARS: Final = 512
MAX_FORWARDED_ENTRIES: Final = 32
#: Lifespan messages after which the server may end the process without ``logging.shutdown``.
SHUTDOWN_MESSAGES: Final = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})
_HANDLER_MODULE: Final = __name__.rpartition(".")[0] + ".handler"


@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse one address as it appears in a peer or a forwarded entry; None if not an address.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``::1`` and ``[::1]:5678``. A scoped IPv6 address
    (``fe80::1%eth0``) loses its zone id: it names an interface of this host, not part of
    the address, and PostgreSQL's ``inet`` refuses it. Cached: the same few peers (proxies,
    load balancers) come back on almost every request.
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
    return address


def parse_networks(trusted_proxies: Iterable[str] | str) -> tuple[IpNetwork, ...]:
    items = [trusted_proxies] if isinstance(trusted_proxies, str) else list(trusted_proxies)
    networks: list[IpNetwork] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"trusted_proxies entries must be IP addresses or CIDRs, got {part!r}"
                ) from None
    return tuple(networks)


@functools.lru_cache(maxsize=4096)
def _peer_ip(peer: str) -> str | None:
    """The canonical text of a socket peer's address (cached: the same peers come back)."""
    address = _parse_ip(peer)
    return str(address) if address is not None else None


def parse_forwarded_for(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IpNetwork, ...]
) -> str | None:
    """Return the client address for a request, or None when it is not an IP address.

    The socket ``peer`` is the client unless it is in a ``trusted`` network; then the
    ``X-Forwarded-For`` chain is walked from the right (the entry the nearest proxy
    appended) and the first address that is not a trusted proxy is the client. A header
    from an untrusted peer is ignored; a malformed entry ends the walk with no address (the
    chain past it cannot be trusted); a chain made only of trusted proxies gives its
    leftmost entry. At most ``MAX_FORWARDED_ENTRIES`` entries are read.
    """
    if not peer:
        return None
    if not trusted or not forwarded_for:
        return _peer_ip(peer)
    address = _parse_ip(peer)
    if address is None:
        return None
    if not any(address in net for net in trusted):
        return _peer_ip(peer)
    entries = forwarded_for.split(",")[-MAX_FORWARDED_ENTRIES:]
    for entry in reversed(entries):
        hop = _parse_ip(entry)
        if hop is None:
            return None
        address = hop
        if not any(hop in net for net in trusted):
            break
    return str(address)


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


class RequestContextOptions:
    """The options both context middlewares take (ASGI ``ActivityContextMiddleware``, WSGI
    ``ActivityWSGIMiddleware``), checked and kept in one place."""

    _actor_report_key = "middleware.actor"  # the rate-limited stderr report, per middleware

    def _init_options(
        self,
        *,
        request_id_header: str,
        trusted_proxies: Iterable[str] | str,
        actor_getter: Any,
        log_requests: bool,
        slow_request_threshold: float,
        exclude_paths: Iterable[str],
        logger: str | logging.Logger,
        max_user_agent_chars: int,
        request_id_factory: Callable[[], str] | None,
    ) -> None:
        """Raises ``ConfigurationError`` naming the option and its bad value."""
        if not request_id_header or not request_id_header.strip():
            raise ConfigurationError(
                f"request_id_header must be a header name, got {request_id_header!r}"
            )
        if slow_request_threshold < 0:
            raise ConfigurationError(
                f"slow_request_threshold must be >= 0 seconds, got {slow_request_threshold!r}"
            )
        if max_user_agent_chars < 0:
            raise ConfigurationError(
                f"max_user_agent_chars must be >= 0, got {max_user_agent_chars!r}"
            )
        self.request_id_header = request_id_header.strip()
        self.trusted_proxies = parse_networks(trusted_proxies)
        self.actor_getter = actor_getter
        self.log_requests = log_requests
        self.slow_request_threshold = slow_request_threshold
        paths = [p for p in exclude_paths if p]
        self._exclude_exact = frozenset(p for p in paths if not p.endswith("*"))
        self._exclude_prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))
        self.logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        self.max_user_agent_chars = max_user_agent_chars
        self._request_id_factory = request_id_factory

    def _actor(self, request: Any) -> tuple[str | None, Any] | None:
        """``actor_getter(request)`` (an ASGI scope or a WSGI environ); never raises."""
        if self.actor_getter is None:
            return None
        try:
            result: tuple[str | None, Any] | None = self.actor_getter(request)
            return result
        except Exception as exc:
            reporter.report(self._actor_report_key, "actor_getter failed", exc)
            return None

    def _excluded(self, path: str) -> bool:
        return path in self._exclude_exact or (
            bool(self._exclude_prefixes) and path.startswith(self._exclude_prefixes)
        )


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
                await self._lifespan(scope, receive, send)
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
                user_agent = value.decode("latin-1")[: self.max_user_agent_chars]
            elif key == xff_key:
                # several X-Forwarded-For headers are one list (RFC 9110 field combination)
                if forwarded is None:
                    forwarded = []
                forwarded.append(value.decode("latin-1"))
        if request_id is None:
            factory = self._request_id_factory
            # 128 random bits as hex: uuid4().hex without the UUID object (4x cheaper here)
            request_id = factory() if factory is not None else os.urandom(16).hex()
        path = scope.get("path")
        # only the fields that have a value: bind_context treats None as "remove"
        fields: dict[str, Any] = {
            "request_id": request_id,
            "http_method": scope.get("method") or ("WS" if scope_type == "websocket" else None),
            "path": path,
        }
        client = scope.get("client")
        if client:
            ip = parse_forwarded_for(client[0], ",".join(forwarded) if forwarded else None,
                                     self.trusted_proxies)
            if ip is not None:
                fields["ip_address"] = ip
        if user_agent:
            fields["user_agent"] = user_agent
        if self.actor_getter is not None:
            actor = self._actor(scope)
            if actor is not None:
                fields["actor_type"], fields["actor_id"] = actor
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
            self._log_request(scope, status[0] if status else 500, end - start, exc)
            raise
        end = finished[0] if finished else time.perf_counter()
        self._log_request(scope, status[0] if status else 500, end - start, None)

    def _log_request(
        self, scope: Scope, status: int, seconds: float, error: BaseException | None
    ) -> None:
        """Log the request activity; never raises."""
        try:
            if error is not None or status >= 500:
                level, activity_type = logging.ERROR, ActivityType.API_ERROR.value
            elif seconds > self.slow_request_threshold:
                level, activity_type = logging.WARNING, ActivityType.API_REQUEST.value
            else:
                level, activity_type = logging.INFO, ActivityType.API_REQUEST.value
            log = self.logger
            if not log.isEnabledFor(level):
                return
            method = scope.get("method", "")
            path = scope.get("path", "")
            extra: dict[str, Any] = {
                "activity_type": activity_type,
                "description": f"{method} {path} -> {status}",
                "status_code": status,
                "duration_ms": round(seconds * 1000.0, 3),
            }
            if level == logging.WARNING:
                extra["slow"] = True
            if error is not None:
                extra["error_type"] = type(error).__name__
                extra["error_message"] = str(error)[:2048]
            # the app may have authenticated the user during the request (request.state.user)
            actor = self._actor(scope)
            if actor is not None:
                extra["actor_type"], extra["actor_id"] = actor
            log.log(level, activity_type, extra=extra)
        except Exception as exc:
            reporter.report("middleware.log", "could not log the request activity", exc)

    # -- lifespan ---------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app's lifespan; shutdown messages reach the server after the flush."""
        spoke = started = flushed = False

        async def receive_watched() -> Message:
            nonlocal spoke
            spoke = True
            return await receive()

        async def send_after_flush(message: Message) -> None:
            nonlocal spoke, started, flushed
            spoke = True
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                started = True
            elif kind in SHUTDOWN_MESSAGES:
                flushed = True
                await self._flush_at_shutdown()
            await send(message)

        try:
            await self.app(scope, receive_watched, send_after_flush)
        except Exception:
            if not spoke:
                # Refusing the scope before reading a message is how an ASGI app says it
                # has no lifespan (Django does). The server would then skip the lifespan and,
                # on SIGTERM, end the process with the handlers still holding records.
                await self._minimal_lifespan(receive, send)
                return
            if started and not flushed:
                # raised past startup without a shutdown message: the server may end the
                # process as soon as it sees the error
                await self._flush_at_shutdown()
            raise  # a lifespan that ran and failed: the server must see it unchanged

    async def _minimal_lifespan(self, receive: Receive, send: Send) -> None:
        """The lifespan of an app without one: startup completes at once, shutdown flushes."""
        while True:
            kind = (await receive()).get("type")
            if kind == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await self._flush_at_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _flush_at_shutdown(self) -> None:
        """``flush_handlers(shutdown_flush_timeout)`` off the event loop. Never raises.

        Cancellation still propagates (the flush thread then finishes on its own, bounded).
        """
        if _HANDLER_MODULE not in sys.modules:
            return  # no ActivityHandler was ever built here: nothing to flush, nothing to import
        try:
            from .handler import flush_handlers

            timeout = self.shutdown_flush_timeout
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                done = flush_handlers(timeout)  # not asyncio (trio): blocking beats losing records
            else:
                done = await asyncio.to_thread(flush_handlers, timeout)
            if not done:
                reporter.report(
                    "middleware.shutdown", "the activity handlers did not finish flushing before "
                    "the lifespan shutdown completed: records still queued may be lost")
        except Exception as exc:
            reporter.report("middleware.shutdown",
                            "could not flush the activity handlers at shutdown", exc)
