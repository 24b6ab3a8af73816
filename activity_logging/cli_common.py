"""What every verb of ``activity-logging`` shares: exit codes, argument helpers, the store
checks, one-line error reports and the ``verb`` decorator.

Each verb module (``cli_status``, ``cli_query``, ``cli_maintenance``, ``cli_verify``,
``cli_worker``, ``cli_demo``, ``cli_serve``) imports this module (and ``cli_render``) and
no other CLI module; ``cli`` imports the verb modules to register them.

Building the parser must stay cheap (``activity-logging --help`` runs no database code), so
this module imports only the standard library, orjson and the dependency-free ``config``,
``exceptions`` and ``urls``; SQLAlchemy is imported inside the functions that need it.
Defaults written in a module that pulls in SQLAlchemy or redis are shown in help through
``LibraryDefault``, which reads the constant only when the help is printed or the verb runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from ._internal import database_error_line
from .config import (
    DEFAULT_GROUP,
    DEFAULT_SQLITE_URL,
    DEFAULT_STREAM,
    ENV_DATABASE_URL,
    ENV_READ_DATABASE_URL,
    ENV_REDIS_URL,
    ENV_SCHEMA,
    ENV_STREAM,
    resolve_database_url,
    resolve_read_database_url,
    resolve_schema,
)
from .urls import sqlite_file

# --- exit codes -------------------------------------------------------------------------------

EXIT_OK: Final = 0
#: Unhealthy, a loss found, or an operation that failed (one line on stderr says why).
EXIT_FAILED: Final = 1
#: Bad arguments (``ConfigurationError``, argparse).
EXIT_USAGE: Final = 2
#: Redis or the database could not be reached (``StoreUnavailableError``).
EXIT_UNAVAILABLE: Final = 3
#: The database refused this role: a missing privilege or a refused login
#: (``PermissionDeniedError``; retrying cannot help, so a supervisor should not restart).
EXIT_PERMISSION_DENIED: Final = 4
#: A command ended by signal N exits with this plus N, as a shell reports it.
EXIT_SIGNAL_BASE: Final = 128
EXIT_INTERRUPTED: Final = EXIT_SIGNAL_BASE + signal.SIGINT
#: stdout's reader went away (``| head``): what a shell reports for a command killed by SIGPIPE.
EXIT_BROKEN_PIPE: Final = EXIT_SIGNAL_BASE + signal.SIGPIPE


# --- defaults that live in other modules -----------------------------------------------------


class LibraryDefault:
    """The default of an option, written once as the constant ``name`` of the library module
    ``module`` (``LibraryDefault("worker", "DEFAULT_BATCH_SIZE")``) and read from there only
    when it is needed: when the help shows it (``%(default)s`` calls ``str``) or when the
    verb runs (``resolve``).

    Used as an option's ``default``, so an option the user left out is this object, not a
    value: ``resolve`` turns it into the constant, ``given`` leaves it out.
    """

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def value(self) -> Any:
        """The constant itself (imports its module)."""
        return getattr(importlib.import_module(f"activity_logging.{self.module}"), self.name)

    def __str__(self) -> str:
        value = self.value
        return format(value, "g") if isinstance(value, float) else str(value)

    def __repr__(self) -> str:
        return f"LibraryDefault({self.module!r}, {self.name!r})"


def resolve(value: Any) -> Any:
    """An option's value, with a ``LibraryDefault`` replaced by its constant."""
    return value.value if isinstance(value, LibraryDefault) else value


def given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The options among ``names`` the user gave (neither None nor a ``LibraryDefault``), to
    pass as keyword arguments: what is left out takes the callee's own default."""
    values = {name: getattr(args, name) for name in names}
    return {name: value for name, value in values.items()
            if value is not None and not isinstance(value, LibraryDefault)}


#: Monthly partitions created ahead, unless ``--months-ahead`` says otherwise: the default of
#: ``db.init_db`` and of ``retention.cleanup``, which have no constant for it (a unit test
#: checks that the three agree).
MONTHS_AHEAD: Final = 3


# --- argument types and options ---------------------------------------------------------------

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def database_options(parser: argparse.ArgumentParser, *, url_help: str = "store to use",
                     read: bool = False) -> None:
    """``--database-url`` and ``--schema``; with ``read``, ``--read-database-url`` too (a
    verb that only reads: ``read_database`` then names the URL it reads)."""
    parser.add_argument("--database-url", default=None,
                        help=f"{url_help} (default: {ENV_DATABASE_URL}, else {DEFAULT_SQLITE_URL})")
    if read:
        read_database_option(parser)
    parser.add_argument("--schema", default=None,
                        help=f"PostgreSQL schema holding the table (default: {ENV_SCHEMA})")


#: What ``--read-database-url`` defaults to, said once for every read verb's help.
READ_URL_DEFAULT: Final = (f"{ENV_READ_DATABASE_URL} unless --database-url is given, else the "
                           "database URL")


def read_database_option(
    parser: argparse.ArgumentParser,
    *,
    help_text: str = f"database to read from, e.g. a read replica (default: {READ_URL_DEFAULT})",
) -> None:
    """``--read-database-url``: where a verb that only reads opens the store (same schema)."""
    parser.add_argument("--read-database-url", default=None, metavar="URL", help=help_text)


def redis_options(parser: argparse.ArgumentParser) -> None:
    """``--redis-url``, ``--stream`` and ``--group``."""
    parser.add_argument("--redis-url", default=None,
                        help=f"Redis holding the stream (default: {ENV_REDIS_URL}; none = embedded "
                        "mode)")
    stream_option(parser)
    group_option(parser)


def stream_option(parser: argparse.ArgumentParser) -> None:
    """``--stream`` and ``--stream-shards``."""
    parser.add_argument("--stream", default=None,
                        help=f"stream name (default: {ENV_STREAM}, else {DEFAULT_STREAM})")
    parser.add_argument("--stream-shards", type=positive_int, default=None,
                        help="shards of the stream, as the producers were given (default: "
                        "ACTIVITY_LOG_STREAM_SHARDS, else 1)")


def group_option(parser: argparse.ArgumentParser) -> None:
    """``--group``."""
    parser.add_argument("--group", default=DEFAULT_GROUP, help="consumer group (default: %(default)s)")


def database(args: argparse.Namespace) -> tuple[str, str | None]:
    """The database URL (``--database-url``, ``DATABASE_URL``, else the embedded default) and
    the schema (``--schema``, ``ACTIVITY_LOG_SCHEMA``) a verb works on."""
    url = resolve_database_url(args.database_url, default=DEFAULT_SQLITE_URL)
    assert url is not None  # a default was given
    return url, resolve_schema(args.schema)


class ReadStore(NamedTuple):
    """Where a read verb reads: the URL, the schema, and whether that is not the primary."""

    url: str
    schema: str | None
    #: True when ``url`` is not the database URL writes go to (a read replica).
    separate: bool

    def require(self) -> None:
        """``require_store`` for this URL, naming the options it came from."""
        require_store(self.url, option=f"--read-database-url or {ENV_READ_DATABASE_URL}"
                      if self.separate else "--database-url or DATABASE_URL")


def read_database(args: argparse.Namespace) -> ReadStore:
    """The store a read verb opens: ``--read-database-url``, else ``--database-url``, else
    ``ACTIVITY_LOG_READ_DATABASE_URL``, else ``DATABASE_URL``, else the embedded default
    (``config.resolve_read_database_url``), with the primary's schema (``--schema``): a
    replica holds the same schema."""
    primary, schema = database(args)
    url = resolve_read_database_url(args.read_database_url, args.database_url, default=primary)
    assert url is not None  # a default was given
    return ReadStore(url, schema, url != primary)


# --- the store must be there ------------------------------------------------------------------


class MissingStoreError(Exception):
    """A verb that reads an existing store was pointed at an SQLite file that is not there."""


def probe_sqlite(path: Path, *, create: bool) -> None:
    """Open the SQLite file ``path`` with the standard library and close it again; raises
    ``sqlite3.Error`` ("unable to open database file") when SQLite cannot open it.

    Every verb checks this before SQLAlchemy opens the file through aiosqlite: when
    aiosqlite fails to open a file, its thread answers its own stop request only after
    ``asyncio.run`` has closed the loop, and that late answer is an exception in a thread
    (a warning, an error under pytest). Opened as aiosqlite would open it (read-write, or
    read-only when the file is write-protected), so the error is the one it would report;
    ``create`` makes a missing file (0600, ``private_files.prepare_sqlite_file``), as
    ``init-db`` does, and otherwise nothing is created.
    Nothing is read or written.
    """
    if create:
        from .private_files import prepare_sqlite_file

        prepare_sqlite_file(path)  # 0600, as the store makes it
    sqlite3.connect(f"{path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}", uri=True).close()


def require_store(url: str, *, option: str = "--database-url or DATABASE_URL") -> None:
    """Check that the SQLite file of ``url`` (if it names one) exists and opens.

    Raises ``MissingStoreError`` (naming ``option``, where the URL came from) when it does
    not exist: opening it would create an empty
    file (SQLite does, on connect), and the verb would then report a missing table in a
    database that was never there; a typo in the path, or a store nothing has written to
    yet, must be said as such. Raises ``sqlite3.Error`` when it exists but cannot be opened
    (a directory, no permission): see ``probe_sqlite``.
    """
    path = sqlite_file(url)
    if path is None:
        return
    if not path.exists():
        raise MissingStoreError(
            f"no database at {url}: {path} does not exist (a typo in {option}, "
            f"or nothing logged there yet: `activity-logging demo` makes one)")
    probe_sqlite(path, create=False)


# --- output and one-line errors ---------------------------------------------------------------


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (``default=str`` for datetimes, UUIDs), with the
    characters JSON leaves raw that a terminal acts on (DEL, C1, bidi controls) escaped as
    ``\\uXXXX``: the same JSON (``terminal_text.json_printable``)."""
    from .terminal_text import json_printable  # lazy: the parser needs none of it

    text = orjson.dumps(obj, default=str, option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(json_printable(text) + "\n")


def report_database_error(command: str, exc: BaseException) -> int:
    """Print a database error in one line on stderr; returns ``EXIT_FAILED``.

    Only an undefined table (SQLSTATE 42P01, SQLite "no such table") says to run
    ``init-db``: a missing database, schema or column is reported with the server's message.
    """
    from .db import is_missing_table  # lazy: db imports SQLAlchemy
    from .terminal_text import printable

    first = printable(database_error_line(exc))  # the server's text may quote stored values
    if is_missing_table(exc):
        print(f"activity-logging {command}: table not found ({first}); "
              "run `activity-logging init-db` first", file=sys.stderr)
    else:
        print(f"activity-logging {command}: database error: {first}", file=sys.stderr)
    return EXIT_FAILED


AsyncVerb = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def verb(func: AsyncVerb) -> Callable[[argparse.Namespace], int]:
    """Run an async verb; report database errors and a missing store in one line (exit 1)
    instead of a traceback. ``ConfigurationError`` and ``StoreUnavailableError`` pass
    through to ``cli.main`` (exit 2 and 3)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import DBAPIError  # lazy: SQLAlchemy is not needed for --help

        try:
            return asyncio.run(func(args))
        except (DBAPIError, sqlite3.Error) as exc:
            return report_database_error(args.command, exc)
        except MissingStoreError as exc:
            print(f"activity-logging {args.command}: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return run
