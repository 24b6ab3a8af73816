"""Database URLs as people write them: which store they name, and the forms each driver takes.

Pure and dependency-free (no SQLAlchemy): the handler validates its ``database_url`` with
these at construction, and a handler shipping to Redis must not pay for SQLAlchemy's import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from .exceptions import ConfigurationError

_POSTGRES: Final = ("postgres", "postgresql", "postgresql+asyncpg")
_SQLITE: Final = ("sqlite", "sqlite+aiosqlite", "sqlite+pysqlite")


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
    naming the URL with its password hidden, for another scheme or for a PostgreSQL URL
    whose host and port do not parse (``check_authority``).
    """
    backend = _backend(url)
    if backend in _POSTGRES:
        check_authority(url, "database_url")
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if backend in _SQLITE:
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    raise ConfigurationError(
        "database_url must be postgresql://, postgres://, postgresql+asyncpg:// or sqlite:///, "
        f"got {shown_url(url)}"
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


#: A query parameter that carries a secret: libpq's and redis-py's ``password``, and anything
#: named like one (``sslpassword``, ``auth_token``, ``client_secret``); ``passfile`` and
#: ``sslkey`` name files, hidden all the same. The value runs to the next ``&``, ``;`` or ``#``.
_SECRET_QUERY: Final = re.compile(
    r"(?i)([?&;](?:passfile|sslkey|pwd|[\w.-]*(?:pass(?:word|phrase)?|secret|token))=)[^&;#]*")


def redact_url(url: str) -> str:
    """``url`` with its password hidden, for messages, logs, reprs and ``status``.

    Hides the password of the user part (everything between the first ``:`` of the user
    part and the **last** ``@`` before the path, so a password with an unencoded ``@``,
    ``/``, ``?`` or ``#`` is hidden whole; a mistyped or missing scheme makes no
    difference) and the value of every secret query parameter (``_SECRET_QUERY``). When in
    doubt it hides more: an ``@`` in the query can take the host with it. A user name alone
    (``redis://name@host``) and a bare word are left as they are. Pure; never raises.
    """
    try:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        head = f"{scheme}{sep}"
        if "@" in rest and not rest.startswith("/"):  # sqlite:////a@b.db has no user part
            userinfo, _, after = rest.rpartition("@")
            if ":" in userinfo:
                rest = f"{userinfo.split(':', 1)[0]}:***@{after}"
        if "=" in rest:
            rest = _SECRET_QUERY.sub(r"\1***", rest)
        return head + rest
    except Exception:  # a str subclass with odd methods: say nothing rather than leak
        return "<unparseable url>"


def shown_url(url: str) -> str:
    """How an error message names a URL it refuses: ``redact_url``'s form, quoted; a value
    without ``://`` is not shown at all (its length is), since it may be a password pasted
    into the wrong variable. Pure; never raises."""
    if "://" not in url:
        return f"a value without a scheme ({len(url)} characters, not shown)"
    return repr(redact_url(url))


def check_authority(url: str, what: str) -> None:
    """Raise ``ConfigurationError`` (naming ``what`` and the URL with its password hidden)
    unless the host and port part of ``url`` can be read the way the drivers read it: at
    most one ``@``, ports that are numbers up to 65535, IPv6 brackets closed. Several
    ``host:port`` separated by commas (libpq's multi-host form) are each checked.

    A password holding ``/``, ``?``, ``#`` or ``@`` must be percent-encoded; unencoded, the
    drivers read part of it as the port or the host, and raise a bare ``ValueError``.
    """
    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(
            f"{what} is not a valid URL ({reason}; a / ? # @ or : in a user name or password "
            f"must be percent-encoded, e.g. %2F for /): got {shown_url(url)}")

    try:
        netloc = urlsplit(url).netloc
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise bad(str(exc).lower()) from None
    if netloc.count("@") > 1:
        raise bad("more than one @")
    for spec in netloc.rpartition("@")[2].split(","):
        if spec.startswith("["):
            close = spec.find("]")
            if close < 0:
                raise bad("an IPv6 address without its ]")
            port = spec[close + 1:]
            if port and not port.startswith(":"):
                raise bad("text after an IPv6 address")
            port = port[1:]
        else:
            port = spec.partition(":")[2]
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
            raise bad("the port is not a number from 1 to 65535")
