"""What a request contributes to the activity context, shared by the ASGI and WSGI middlewares.

The rules live here once: which client-supplied request id is kept, how the client address
is found behind trusted proxies, how long a user agent may be, which options both
middlewares take and how they are checked, and what the per-request activity looks like.
``middleware.ActivityContextMiddleware`` (ASGI) and ``wsgi.ActivityWSGIMiddleware`` only
read their protocol's request (scope headers, environ keys) and call into this module.

The client address is parsed here, once, with ``ipaddress``, and bound in its canonical
text form (IPv4-mapped IPv6 as IPv4, no zone id): what later stages receive round-trips
through ``ipaddress`` unchanged, so they need no more than a cached check.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from ._internal import reporter
from .constants import ActivityType
from .exceptions import ConfigurationError

__all__ = [
    "MAX_FORWARDED_ENTRIES",
    "MAX_USER_AGENT_CHARS",
    "REQUEST_ID_PATTERN",
    "IpNetwork",
    "RequestContextOptions",
    "parse_forwarded_for",
    "parse_ip",
    "parse_networks",
    "request_activity",
    "request_level",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: A client-supplied request id is kept only when it matches this: bounded, no spaces,
#: quotes, control characters or anything a log viewer or a header could misread.
REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
MAX_USER_AGENT_CHARS: Final = 512
MAX_FORWARDED_ENTRIES: Final = 32
MAX_ERROR_MESSAGE_CHARS: Final = 2048

_ERROR_LEVEL: Final = (logging.ERROR, ActivityType.API_ERROR.value)
_SLOW_LEVEL: Final = (logging.WARNING, ActivityType.API_REQUEST.value)
_INFO_LEVEL: Final = (logging.INFO, ActivityType.API_REQUEST.value)


# --- the client address -------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IpAddress | None:
    """Parse one address as it appears in a peer or a forwarded entry; None if not an address.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``::1`` and ``[::1]:5678``. An IPv4-mapped IPv6
    address is its IPv4 address. A scoped IPv6 address (``fe80::1%eth0``) loses its zone id:
    it names an interface of this host, not part of the address, and PostgreSQL's ``inet``
    refuses it. Cached: the same few peers (proxies, load balancers) come back on almost
    every request.
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


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """The canonical text of an address (``parse_ip``), or None; cached: the same peers and
    clients come back. The one way an address becomes the stored ``ip_address``: the
    middlewares use it for peers, and ``rows`` for whatever a producer sent."""
    address = parse_ip(text)
    return str(address) if address is not None else None


def parse_networks(trusted_proxies: Iterable[str] | str) -> tuple[IpNetwork, ...]:
    """The networks of ``trusted_proxies`` (addresses or CIDRs; an iterable, or one
    comma-separated string). Raises ``ConfigurationError`` naming a bad entry."""
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


def parse_forwarded_for(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IpNetwork, ...]
) -> str | None:
    """Return the client address (canonical text) for a request, or None when it is not an
    IP address.

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
        return canonical_ip(peer)
    address = parse_ip(peer)
    if address is None:
        return None
    if not any(address in net for net in trusted):
        return canonical_ip(peer)
    entries = forwarded_for.split(",")[-MAX_FORWARDED_ENTRIES:]
    for entry in reversed(entries):
        hop = parse_ip(entry)
        if hop is None:
            return None
        address = hop
        if not any(hop in net for net in trusted):
            break
    return str(address)


# --- the request activity -----------------------------------------------------------------


def request_level(
    status: int, seconds: float, error: BaseException | None, slow_request_threshold: float
) -> tuple[int, str]:
    """``(level, activity_type)`` of one request activity: ``api_error`` at ``error`` when
    the app raised or answered 5xx, ``api_request`` at ``warning`` when slower than the
    threshold, else at ``info``. Pure."""
    if error is not None or status >= 500:
        return _ERROR_LEVEL
    if seconds > slow_request_threshold:
        return _SLOW_LEVEL
    return _INFO_LEVEL


def request_activity(
    method: str, path: str, status: int, seconds: float, error: BaseException | None,
    slow_request_threshold: float,
) -> tuple[int, str, dict[str, Any]]:
    """The ``(level, activity_type, extra)`` of one request activity; pure, never raises.

    Level and type as ``request_level``; ``extra`` holds the description, status code and
    duration, ``slow: true`` at ``warning``, and the error's type and (bounded) message.
    """
    level, activity_type = request_level(status, seconds, error, slow_request_threshold)
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
        extra["error_message"] = str(error)[:MAX_ERROR_MESSAGE_CHARS]
    return level, activity_type, extra


# --- the options and the per-request steps both middlewares share -------------------------


class RequestContextOptions:
    """The options both context middlewares take (ASGI ``ActivityContextMiddleware``, WSGI
    ``ActivityWSGIMiddleware``), checked and kept in one place, and the steps of a request
    that do not depend on the protocol: the context fields, the actor, the request activity.

    ``request`` below is what the middleware's ``actor_getter`` receives: an ASGI scope or a
    WSGI environ.
    """

    _report_prefix = "middleware"  # the rate-limited stderr reports: "<prefix>.actor", ".log"

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

    def _context_fields(
        self, request: Any, request_id: str | None, method: str | None, path: str | None,
        peer: str | None, forwarded_for: str | None, user_agent: str | None,
    ) -> dict[str, Any]:
        """The context fields of one request, ``fields["request_id"]`` always set.

        ``request_id`` is a client-supplied id that already matched ``REQUEST_ID_PATTERN``,
        or None (one is made). ``ip_address``, ``user_agent`` and the actor are present only
        when they have a value (``bind_context`` treats None as "remove"); ``http_method``
        and ``path`` are passed as given. Never raises on its own account.
        """
        if request_id is None:
            factory = self._request_id_factory
            # 128 random bits as hex: uuid4().hex without the UUID object (4x cheaper here)
            request_id = factory() if factory is not None else os.urandom(16).hex()
        fields: dict[str, Any] = {"request_id": request_id, "http_method": method, "path": path}
        ip = parse_forwarded_for(peer, forwarded_for, self.trusted_proxies)
        if ip is not None:
            fields["ip_address"] = ip
        if user_agent:
            user_agent = user_agent[: self.max_user_agent_chars]
            if user_agent:
                fields["user_agent"] = user_agent
        if self.actor_getter is not None:
            actor = self._actor(request)
            if actor is not None:
                fields["actor_type"], fields["actor_id"] = actor
        return fields

    def _actor(self, request: Any) -> tuple[str | None, Any] | None:
        """``actor_getter(request)``; never raises."""
        if self.actor_getter is None:
            return None
        try:
            result: tuple[str | None, Any] | None = self.actor_getter(request)
            return result
        except Exception as exc:
            reporter.report(f"{self._report_prefix}.actor", "actor_getter failed", exc)
            return None

    def _excluded(self, path: str) -> bool:
        return path in self._exclude_exact or (
            bool(self._exclude_prefixes) and path.startswith(self._exclude_prefixes)
        )

    def _log_request(
        self, request: Any, method: str, path: str, status: int, seconds: float,
        error: BaseException | None,
    ) -> None:
        """Log the request activity (``request_activity``) with the actor as it is now (the
        app may have authenticated the user during the request); never raises."""
        try:
            log = self.logger
            level, _ = request_level(status, seconds, error, self.slow_request_threshold)
            if not log.isEnabledFor(level):
                return
            _, activity_type, extra = request_activity(
                method, path, status, seconds, error, self.slow_request_threshold)
            actor = self._actor(request)
            if actor is not None:
                extra["actor_type"], extra["actor_id"] = actor
            log.log(level, activity_type, extra=extra)
        except Exception as exc:
            reporter.report(f"{self._report_prefix}.log", "could not log the request activity", exc)
