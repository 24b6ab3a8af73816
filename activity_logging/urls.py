"""Database URLs as people write them: which store they name, and the forms each driver takes.

Pure and dependency-free (no SQLAlchemy): the handler validates its ``database_url`` with
these at construction, and a handler shipping to Redis must not pay for SQLAlchemy's import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .exceptions import ConfigurationError

_POSTGRES: Final = ("postgres", "postgresql", "postgresql+asyncpg")
_SQLITE: Final = ("sqlite", "sqlite+aiosqlite", "sqlite+pysqlite")
#: Query parameters that carry a secret in a libpq / SQLAlchemy URL.
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword", "passfile", "sslkey"})


def _backend(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_sqlite(url: str) -> bool:
    """True when ``url`` names the embedded SQLite store."""
    return _backend(url).startswith("sqlite")


def is_postgres(url: str) -> bool:
    """True when ``url`` names PostgreSQL in one of the accepted spellings."""
    return _backend(url) in _POSTGRES


def normalize_async_url(url: str) -> str:
    """Return the SQLAlchemy async URL for a ``DATABASE_URL`` as people write it.

    ``postgres://`` / ``postgresql://`` / ``postgresql+asyncpg://`` → ``postgresql+asyncpg://``;
    ``sqlite:///file.db`` → ``sqlite+aiosqlite:///file.db``. Raises ``ConfigurationError``
    naming the URL with its password hidden.
    """
    backend = _backend(url)
    if backend in _POSTGRES:
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if backend in _SQLITE:
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    raise ConfigurationError(
        "database_url must be postgresql://, postgres://, postgresql+asyncpg:// or sqlite:///, "
        f"got {redact_url(url)!r}"
    )


def asyncpg_dsn(url: str) -> str:
    """Return a plain ``postgresql://`` DSN that ``asyncpg.connect`` accepts."""
    normalized = normalize_async_url(url)
    if not normalized.startswith("postgresql+asyncpg://"):
        raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    return "postgresql://" + normalized.split("://", 1)[1]


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, as SQLite resolves it (relative to the working directory).

    ``sqlite:///a.db`` → ``a.db``, ``sqlite:////tmp/a.db`` → ``/tmp/a.db``, a ``file:`` URI
    filename (``?uri=true``) → its path. None for another database, ``sqlite://`` and
    ``:memory:``. The one reading of a SQLite URL: the store, the CLI and the viewer use it.
    """
    if not is_sqlite(url):
        return None
    path_part = url.split("://", 1)[1].split("?", 1)[0]
    name = unquote(path_part[1:] if path_part.startswith("/") else path_part)
    if name.startswith("file:"):
        name = unquote(name[len("file:"):].split("?", 1)[0])
    if not name or name == ":memory:":
        return None
    return Path(name)


_USERINFO: Final = re.compile(r"^(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def redact_url(url: str) -> str:
    """``url`` with its password hidden (in the user part and in the query), for messages.

    Never raises: a URL it cannot parse is shown as ``<unparseable url>``.
    """
    try:
        parts = urlsplit(url)
        netloc = _USERINFO.sub(lambda m: f"{m['user']}:***@", parts.netloc, count=1)
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v)
                                   for k, v in pairs], safe="*/")
        if netloc == parts.netloc and query == parts.query:
            return url  # nothing secret in it
        # by hand: urlunsplit would turn sqlite:///a.db (an empty host) into sqlite:/a.db
        return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
                + (f"#{parts.fragment}" if parts.fragment else ""))
    except Exception:
        return "<unparseable url>"
