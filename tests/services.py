"""The real services the integration and fault tests use: the one place that reads their URLs.

``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and ``TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) name them; ``CI`` set (to anything but empty,
``0``, ``false`` or ``no``) makes a missing service fail the test instead of skipping it.
Tests take them from the ``redis_url`` / ``pg_url`` fixtures (tests/conftest.py), or import
the constants here where a fixture cannot reach (module level, helpers, child processes).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit, urlunsplit

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
PG_URL = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

_DEFAULT_PORTS = {"redis": 6379, "rediss": 6380, "postgresql": 5432, "postgres": 5432}


def address_of(url: str) -> tuple[str, int]:
    """``(host, port)`` a service URL points at (the scheme's default port when it has none)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    return parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS.get(scheme, 0)


def url_via(url: str, port: int, host: str = "127.0.0.1") -> str:
    """``url`` with its host and port replaced (user, password, database and query kept):
    the same service reached through a proxy listening on ``host:port``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, url: str) -> str:
    """Return ``url`` when its service answers; else skip the test, or fail it under CI."""
    host, port = address_of(url)
    if not _port_open(host, port):
        message = f"{name} is not answering on {host}:{port}"
        if IN_CI:
            pytest.fail(message + " (CI is set: integration tests must run against real services)")
        pytest.skip(message)
    return url
