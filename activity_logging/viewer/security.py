"""The viewer's gatekeeping: who may look (``authorize``), and what a browser may do with
what it is shown (response headers). Pure ASGI and stdlib; no Jinja2.

Access is denied by default: ``AuthorizeMiddleware`` lets a request through only when the
application's ``authorize(request)`` returns ``True`` (exactly ``True``: a truthy object by
mistake is a refusal), answers 403 otherwise, and answers with the status and headers of an
``HTTPException`` the callable raises (``TokenAuthorizer`` raises 401 with a challenge).
Every path is behind it, the stylesheet and unknown paths included.

``SecurityHeadersMiddleware`` puts a strict Content-Security-Policy (no script at all, styles
only from the app's own stylesheet, no framing) and the usual hardening headers on every
response, denials and errors included.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import ConfigurationError

#: ``authorize(request)``: ``True`` lets the request in; sync or async.
Authorize = Callable[[Request], "bool | Awaitable[bool]"]

#: No script of any kind, styles only from the app's stylesheet, images (the favicon) and
#: forms only to this origin, never framed, no <base> rewriting.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
#: Audit data is never kept by a browser or proxy cache, unless a response says otherwise
#: (the stylesheet does).
DEFAULT_CACHE_CONTROL: Final = "no-store"
MIN_TOKEN_CHARS: Final = 16
REALM: Final = "activity-logging viewer"


class SecurityHeadersMiddleware:
    """Adds ``SECURITY_HEADERS`` (and ``Cache-Control: no-store`` unless set) to every HTTP
    response. Pure ASGI; never buffers the body, so streamed exports stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = DEFAULT_CACHE_CONTROL
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AuthorizeMiddleware:
    """Lets an HTTP request through only when ``authorize(request)`` returns ``True``.

    A refusal is ``403 Forbidden``; an ``HTTPException`` raised by ``authorize`` becomes its
    own status, detail and headers (``401`` with ``WWW-Authenticate``, say). Other exceptions
    propagate (a 500: still no access). Websocket connections are refused (the viewer has
    none); lifespan events pass through.
    """

    def __init__(self, app: ASGIApp, authorize: Authorize) -> None:
        self.app = app
        self.authorize = authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope, receive)
        try:
            verdict = self.authorize(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except HTTPException as exc:
            await _refusal(exc.status_code, exc.detail, exc.headers)(scope, receive, send)
            return
        if verdict is not True:
            await _refusal(403, "Forbidden", None)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refusal(status: int, detail: str, headers: Mapping[str, str] | None) -> Response:
    return PlainTextResponse(detail, status_code=status, headers=headers)


def check_authorize(authorize: object) -> Authorize:
    """``authorize`` if it is callable; raises ``ConfigurationError`` otherwise (``None`` too:
    there is no "open to everyone" default)."""
    if not callable(authorize):
        raise ConfigurationError(
            f"authorize must be a callable authorize(request) -> bool, got {authorize!r}; "
            "the viewer shows the whole audit trail, so it has no open default"
        )
    return authorize


class TokenAuthorizer:
    """``authorize`` for one shared secret: ``Authorization: Bearer <token>``, or HTTP Basic
    with any user name and the token as password (what a browser can send).

    Compares SHA-256 digests with ``hmac.compare_digest``: constant time, whatever the length
    of the candidate. A missing or wrong credential raises ``HTTPException(401)`` with a Basic
    challenge, so a browser asks for it. Raises ``ConfigurationError`` at construction for a
    token shorter than ``MIN_TOKEN_CHARS``. Thread-safe; never logs the token.
    """

    def __init__(self, token: str, *, realm: str = REALM) -> None:
        if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS:
            raise ConfigurationError(
                f"the viewer token must be at least {MIN_TOKEN_CHARS} characters "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        self._digest = hashlib.sha256(token.strip().encode()).digest()
        self._challenge = {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'}

    def __repr__(self) -> str:
        return "TokenAuthorizer(<token hidden>)"

    def __call__(self, request: Request) -> bool:
        candidate = credential(request.headers.get("authorization", ""))
        if candidate is not None and hmac.compare_digest(
            hashlib.sha256(candidate.encode()).digest(), self._digest
        ):
            return True
        raise HTTPException(401, "Unauthorized: send the viewer token", headers=self._challenge)


def credential(header: str) -> str | None:
    """The secret in an ``Authorization`` header: a Bearer token, or a Basic password.

    ``None`` for anything else (no header, another scheme, malformed Basic). Never raises.
    """
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def is_loopback(host: str) -> bool:
    """True when ``host`` is only reachable from this machine: a loopback address or
    ``localhost``. Wildcards (``0.0.0.0``, ``::``, ``""``) and other names are not."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MIN_TOKEN_CHARS",
    "SECURITY_HEADERS",
    "Authorize",
    "AuthorizeMiddleware",
    "SecurityHeadersMiddleware",
    "TokenAuthorizer",
    "check_authorize",
    "credential",
    "is_loopback",
]
