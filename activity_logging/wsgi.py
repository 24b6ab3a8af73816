"""``ActivityWSGIMiddleware``: the request context for WSGI apps (Flask, Django, any WSGI server).

The WSGI twin of ``middleware.ActivityContextMiddleware``: the same options (less the ASGI
lifespan's), the same context keys from the same rules (the request id pattern, the
``X-Forwarded-For`` walk over trusted proxies, the user agent limit, all imported from
``middleware``), and the same optional ``api_request``/``api_error`` activity per request.

A WSGI response is not done when the app returns: a generator body runs while the server
iterates it, and the request ends when the server calls the body's ``close()``. So each
request gets a ``contextvars.Context`` of its own (a copy of the server thread's, the WSGI
form of the ASGI "each request is its own task"), entered for the app call, for every step
through the body and for ``close()``. Inside it the fields are bound with ``bind_context``
and reset with their token in ``close()``'s ``finally``. The server thread's own context is
never touched, so even a server that never calls ``close()`` cannot leak one request's
context into the next request its thread serves.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, cast
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ._internal import reporter
from .constants import ACTOR_USER, DEFAULT_LOGGER_NAME
from .context import bind_context, reset_context
from .request_context import (
    MAX_USER_AGENT_CHARS,
    REQUEST_ID_PATTERN,
    RequestContextOptions,
    request_activity,
)

__all__ = ["ActivityWSGIMiddleware", "WSGIActorGetter", "default_wsgi_actor_getter", "request_activity"]

#: ``actor_getter(environ) -> (actor_type, actor_id)`` or ``None`` when there is no actor.
WSGIActorGetter = Callable[[WSGIEnvironment], "tuple[str | None, Any] | None"]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


def default_wsgi_actor_getter(environ: WSGIEnvironment) -> tuple[str | None, Any] | None:
    """The actor of a request from ``REMOTE_USER`` (set by the server or an auth middleware
    in front of the app): ``("user", REMOTE_USER)``; no actor when it is unset or empty."""
    user = environ.get("REMOTE_USER")
    return (ACTOR_USER, user) if user else None


def _status_code(status: str) -> int:
    """``"404 Not Found"`` -> 404; 0 when the status line is not a number."""
    code = status[:3]
    return int(code) if code.isdigit() else 0


def _environ_key(header: str) -> str:
    """The WSGI environ key of an HTTP header (``X-Request-ID`` -> ``HTTP_X_REQUEST_ID``)."""
    return "HTTP_" + header.strip().upper().replace("-", "_")


def _request_path(environ: WSGIEnvironment) -> str:
    """``SCRIPT_NAME`` + ``PATH_INFO`` as text, as an ASGI ``path`` holds it.

    WSGI hands the path as its bytes decoded as latin-1 (PEP 3333); the bytes are UTF-8 as
    the client sent them, so they are decoded again (invalid bytes replaced).
    """
    path: str = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if not path:
        return "/"
    if path.isascii():
        return path
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded it as text
        return path


class ActivityWSGIMiddleware(RequestContextOptions):
    """WSGI middleware binding the activity context for each request.

    ``app.wsgi_app = ActivityWSGIMiddleware(app.wsgi_app)`` (Flask), or wrap Django's
    ``get_wsgi_application()``.

    Args:
        app: the WSGI application to wrap.
        request_id_header: header carrying the request id in and out (``X-Request-ID``).
        trusted_proxies: IPs/CIDRs (iterable, or one comma-separated string) of proxies whose
            ``X-Forwarded-For`` is believed. Empty (default): ``REMOTE_ADDR`` is the client.
        forwarded_for_header: header the trusted proxies append to (``X-Forwarded-For``).
        actor_getter: ``callable(environ) -> (actor_type, actor_id) | None``; read at request
            start and again when the request activity is logged. Default:
            ``default_wsgi_actor_getter`` (``REMOTE_USER``); ``None`` disables it.
        log_requests: log one activity per request (off by default): ``api_request`` at
            ``info`` (``warning`` when slower than ``slow_request_threshold``) and
            ``api_error`` at ``error`` when the app raises or answers 5xx. Logged when the
            server closes the response, inside the request's context.
        slow_request_threshold: seconds after which a request is slow (2.0).
        exclude_paths: paths that get no request activity (context is still set); an entry
            ending in ``*`` is a prefix.
        logger: logger or logger name for the request activities (``"activity"``).
        max_user_agent_chars: user agents are cut to this length (512).
        request_id_factory: makes a request id when none usable came in (128 random bits, hex).

    The response body is passed through chunk by chunk, never buffered; it is wrapped (to
    keep the context around its iteration and to see its ``close()``), so a server's
    ``wsgi.file_wrapper`` fast path (sendfile) does not apply to responses through it.

    Never raises on its own account: a failing ``actor_getter`` or logger is reported on
    stderr and the request goes on. Exceptions from the app (from the call, the body or its
    ``close()``) propagate unchanged. Thread-safe: one instance serves concurrent requests.
    """

    _report_prefix = "wsgi"

    def __init__(
        self,
        app: WSGIApplication,
        *,
        request_id_header: str = "X-Request-ID",
        trusted_proxies: Iterable[str] | str = (),
        forwarded_for_header: str = "X-Forwarded-For",
        actor_getter: WSGIActorGetter | None = default_wsgi_actor_getter,
        log_requests: bool = False,
        slow_request_threshold: float = 2.0,
        exclude_paths: Iterable[str] = (),
        logger: str | logging.Logger = DEFAULT_LOGGER_NAME,
        max_user_agent_chars: int = MAX_USER_AGENT_CHARS,
        request_id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._init_options(
            request_id_header=request_id_header, trusted_proxies=trusted_proxies,
            actor_getter=actor_getter, log_requests=log_requests,
            slow_request_threshold=slow_request_threshold, exclude_paths=exclude_paths,
            logger=logger, max_user_agent_chars=max_user_agent_chars,
            request_id_factory=request_id_factory,
        )
        self.app = app
        self._rid_lower = self.request_id_header.lower()
        self._rid_key = _environ_key(self.request_id_header)
        self._xff_key = _environ_key(forwarded_for_header)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_context = contextvars.copy_context()
        return request_context.run(self._call, request_context, environ, start_response)

    def _call(
        self, request_context: contextvars.Context, environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """The request, inside its own context: bind, call the app, hand back the body."""
        get = environ.get
        request_id = get(self._rid_key)
        if request_id is not None and not REQUEST_ID_PATTERN.fullmatch(request_id):
            request_id = None
        path = _request_path(environ)
        fields = self._context_fields(
            environ, request_id, get("REQUEST_METHOD") or None, path,
            get("REMOTE_ADDR"), get(self._xff_key), get("HTTP_USER_AGENT"),
        )
        request_id = fields["request_id"]
        token = bind_context(**fields)
        body = _Body(self, request_context, token, environ, start_response, request_id,
                     self.log_requests and not self._excluded(path))
        try:
            result = self.app(environ, body.start_response)
        except BaseException as exc:
            body.failed(exc)  # logs when asked to, then resets the context
            raise
        body.result = result
        return _SizedBody.adopt(body) if type(result) is list or type(result) is tuple else body

    def _log_environ(
        self, environ: WSGIEnvironment, status: int, seconds: float, error: BaseException | None
    ) -> None:
        """Log the request activity (in the request's context); never raises."""
        try:
            # read at log time, from the environ as the app left it
            method, path = environ.get("REQUEST_METHOD", ""), _request_path(environ)
        except Exception as exc:
            reporter.report(f"{self._report_prefix}.log", "could not log the request activity", exc)
            return
        self._log_request(environ, method, path, status, seconds, error)


class _Body:
    """One request's response: its ``start_response``, and the body iterable the server gets.

    Every step runs in the request's context. Not thread-safe (a WSGI server drives one
    response from one thread at a time).
    """

    __slots__ = (
        "_closed", "_context", "_environ", "_error", "_finished", "_iterator", "_log",
        "_middleware", "_request_id", "_start_response", "_started", "_status", "_token",
        "result",
    )

    def __init__(
        self, middleware: ActivityWSGIMiddleware, context: contextvars.Context,
        token: contextvars.Token[Any], environ: WSGIEnvironment, start_response: StartResponse,
        request_id: str, log: bool,
    ) -> None:
        self._middleware = middleware
        self._context = context
        self._token = token
        self._environ = environ
        self._start_response = start_response
        self._request_id = request_id
        self._log = log
        self._status = 0
        self._started = time.perf_counter() if log else 0.0
        self._finished = 0.0
        self._error: BaseException | None = None
        self._iterator: Iterator[bytes] | None = None
        self._closed = False
        self.result: Iterable[bytes] = ()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        """Echo the request id (unless the app set its own), note the status, pass it on."""
        self._status = _status_code(status)
        rid_lower = self._middleware._rid_lower
        for name, _ in headers:
            if name.lower() == rid_lower:
                break  # the app set its own (a proxied upstream's): keep only one
        else:
            # a copy: the app may reuse its header list across responses
            headers = [*headers, (self._middleware.request_id_header, self._request_id)]
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self._context.run(self._next)

    def _next(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = iter(self.result)
        try:
            return next(iterator)
        except StopIteration:
            if self._log and not self._finished:
                self._finished = time.perf_counter()
            raise
        except Exception as exc:
            self._error = exc
            raise

    def close(self) -> None:
        """Close the app's body, log the request activity if asked to, reset the context."""
        self._context.run(self._close)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        except Exception as exc:
            if self._error is None:
                self._error = exc
            raise
        finally:
            try:
                if self._log:
                    end = self._finished or time.perf_counter()
                    self._middleware._log_environ(self._environ, self._status or 500,
                                                  end - self._started, self._error)
            finally:
                reset_context(self._token)

    def failed(self, exc: BaseException) -> None:
        """The app call raised: log it (``Exception`` only, as the ASGI middleware) and reset."""
        self._closed = True
        try:
            if self._log and isinstance(exc, Exception):
                self._middleware._log_environ(self._environ, self._status or 500,
                                              time.perf_counter() - self._started, exc)
        finally:
            reset_context(self._token)


class _SizedBody(_Body):
    """A body whose app returned a list or tuple: ``len()`` still works, so a server that sets
    ``Content-Length`` from a one-chunk body (``wsgiref`` does) still can."""

    __slots__ = ()

    @classmethod
    def adopt(cls, body: _Body) -> _SizedBody:
        # the same slots: switching the class keeps every field, and costs nothing per chunk
        body.__class__ = cls
        return cast("_SizedBody", body)

    def __len__(self) -> int:
        return len(self.result)  # type: ignore[arg-type]  # adopted only for a list or tuple
