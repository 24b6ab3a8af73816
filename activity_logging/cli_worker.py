"""The drainer's verbs: ``activity-logging init-db`` (create the table, and with ``--roles``
the least-privilege roles) and ``worker`` (drain the Redis stream into it).

``db`` and ``worker`` (SQLAlchemy, asyncpg, redis) are imported inside the verbs so
``--help`` stays fast; the worker's numeric defaults are shown in help through
``LibraryDefault``. Bad arguments raise ``ConfigurationError`` (exit 2), an unreachable
database ``StoreUnavailableError`` (exit 3), a role the database refuses
``PermissionDeniedError`` (exit 4: a missing privilege, a refused login; the worker stops
instead of retrying); ``cli.main`` maps them. Other expected database
failures (no such database or schema, an SQLite file that cannot be opened) print one
line, exit 1. ``worker`` exits 0 on a warm
stop (the first SIGTERM/SIGINT) and ``128 + signal number`` on a cold stop (the second: 143
after SIGTERM, 130 after SIGINT), what a shell reports for a command ended by that signal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from . import _startup
from ._internal import database_error_line
from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    MONTHS_AHEAD,
    LibraryDefault,
    database,
    given,
    group_option,
    probe_sqlite,
    stream_option,
)
from .config import (
    DEFAULT_SQLITE_URL,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    ENV_SCHEMA,
    resolve_database_url,
    resolve_redis_url,
)
from .exceptions import ConfigurationError
from .urls import is_sqlite, redact_url, sqlite_file

if TYPE_CHECKING:
    from .worker import ActivityWorker

logger: Final = logging.getLogger("activity_logging.cli")

#: A cold stop exits with this plus the number of the signal that forced it.
EXIT_COLD_STOP_BASE: Final = EXIT_SIGNAL_BASE
_STOP_SIGNALS: Final = _startup.STOP_SIGNALS
#: ``metrics.DEFAULT_METRICS_HOST``, copied: that module needs the optional metrics extra,
#: and ``worker --help`` must work without it (a unit test checks that the two agree).
_METRICS_HOST: Final = "127.0.0.1"
#: ``roles.DEFAULT_ROLE_PREFIX``, copied: that module pulls in SQLAlchemy, and ``--help``
#: must stay cheap (a unit test checks that the two agree).
_ROLE_PREFIX: Final = "activity_log_"
#: The worker's tuning options, passed on only when given: ``worker.DEFAULT_<NAME>`` otherwise.
#: ``ddl_variants.LAYOUTS``, copied: that module pulls in SQLAlchemy, and ``--help`` must
#: stay cheap (a unit test checks that the two agree).
_LAYOUTS: Final = ("plain", "partitioned", "citus", "citus-partitioned", "timescaledb")
_TUNING: Final = ("batch_size", "max_wait", "claim_idle", "heartbeat_interval", "writers",
                  "stop_timeout")


def register(subparsers: Any) -> None:
    """Add ``init-db`` and ``worker`` to the ``activity-logging`` parser."""
    p = subparsers.add_parser(
        "init-db", help="create the activity_logs table and its indexes (idempotent)",
        description="Create the activity_logs table and its indexes if missing. Safe to re-run.",
    )
    p.add_argument("--database-url", default=None,
                   help=f"postgresql://, postgres://, postgresql+asyncpg:// or sqlite:/// "
                        f"(default: {ENV_DATABASE_URL}, else {DEFAULT_SQLITE_URL})")
    p.add_argument("--schema", default=None,
                   help=f"PostgreSQL schema to create the table in (default: {ENV_SCHEMA})")
    p.add_argument("--partitioned", action="store_true",
                   help="PostgreSQL: partition by month on timestamp (primary key (id, timestamp))")
    p.add_argument("--layout", choices=_LAYOUTS, default=None,
                   help="PostgreSQL: the table's layout: plain (default), partitioned (as "
                        "--partitioned), citus (distributed on id), citus-partitioned (by "
                        "month, distributed on id) or timescaledb (a compressed hypertable); "
                        "the last three need the extension (docs/scaling.md)")
    p.add_argument("--months-ahead", type=int, default=MONTHS_AHEAD,
                   help="with --partitioned: months of partitions to create ahead "
                        "(default: %(default)s)")
    p.add_argument("--roles", action="store_true",
                   help="PostgreSQL: also create the NOLOGIN group roles <prefix>writer, "
                        "<prefix>reader and <prefix>maintenance and grant them least "
                        "privilege (idempotent; the SQL is shipped: --print-sql; docs/roles.md)")
    p.add_argument("--role-prefix", default=_ROLE_PREFIX,
                   help="with --roles: prefix of the role names (default: %(default)s)")
    p.add_argument("--reject-updates", action=argparse.BooleanOptionalAction, default=None,
                   help="PostgreSQL: triggers refusing UPDATE and TRUNCATE of activity_logs "
                        "(retention's DELETE and partition drops still work; default: on "
                        "with --roles, else off)")
    p.add_argument("--print-sql", action="store_true",
                   help="print the SQL --layout / --roles / --reject-updates run (for psql "
                        "-f), and exit without connecting")
    p.add_argument("--rebuild-rollup", action="store_true",  # helper E's (rollup.py)
                   help="PostgreSQL: recount the summaries' daily rollup from every row "
                        "(writers wait meanwhile; docs/queries.md)")
    p.set_defaults(func=cmd_init_db)


    w = subparsers.add_parser(
        "worker", help="drain the Redis stream into PostgreSQL",
        description="Read activity records from the Redis stream through a consumer group and "
                    "store them in PostgreSQL. SIGTERM/SIGINT: warm stop, store the batch in hand "
                    "(at most --stop-timeout seconds, else leave it pending) and exit 0; a "
                    "second signal: cold stop, exit at once with 128 + the signal number "
                    "(unacknowledged entries stay pending).",
    )
    w.add_argument("--redis-url", default=None,
                   help=f"Redis holding the stream (default: {ENV_REDIS_URL})")
    w.add_argument("--database-url", default=None,
                   help=f"PostgreSQL URL (default: {ENV_DATABASE_URL})")
    w.add_argument("--schema", default=None,
                   help=f"PostgreSQL schema holding the table (default: {ENV_SCHEMA})")
    stream_option(w)
    group_option(w)
    w.add_argument("--consumer", default=None,
                   help="this worker's name in the group (default: <hostname>-<pid>)")
    w.add_argument("--batch-size", type=int, default=_default("DEFAULT_BATCH_SIZE"),
                   help="records per insert transaction (default: %(default)s)")
    w.add_argument("--max-wait", type=float, default=_default("DEFAULT_MAX_WAIT"),
                   help="seconds a read blocks waiting for new entries (default: %(default)s)")
    w.add_argument("--claim-idle", type=float, default=_default("DEFAULT_CLAIM_IDLE"),
                   help="seconds before entries left pending by a silent consumer are claimed "
                        "(default: %(default)s)")
    w.add_argument("--heartbeat-interval", type=float,
                   default=_default("DEFAULT_HEARTBEAT_INTERVAL"),
                   help="seconds between heartbeats (default: %(default)s)")
    w.add_argument("--writers", type=int, default=_default("DEFAULT_WRITERS"),
                   help="batches inserted at once, one PostgreSQL connection each "
                        "(default: %(default)s)")
    w.add_argument("--stop-timeout", type=float, default=_default("DEFAULT_STOP_TIMEOUT"),
                   help="seconds a warm stop waits for the batch in hand to be stored before "
                        "leaving it pending (default: %(default)s)")
    w.add_argument("--signing-key-file", metavar="PATH", default=None,
                   help="signing key ring file (one key per line, the first current; default "
                        "ACTIVITY_LOG_SIGNING_KEY or ACTIVITY_LOG_SIGNING_KEY_FILE)")
    w.add_argument("--exit-when-idle", action="store_true",
                   help="exit 0 once the stream has nothing left to read (one-shot drain)")
    w.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port at /metrics (needs the metrics "
                        "extra: pip install 'activity_logging[metrics]'; 0 picks a free port)")
    w.add_argument("--metrics-host", default=_METRICS_HOST,
                   help="address the metrics server listens on (default: %(default)s; "
                        "0.0.0.0 for every interface)")
    w.set_defaults(func=cmd_worker)


def _default(name: str) -> LibraryDefault:
    return LibraryDefault("worker", name)


def cmd_init_db(args: argparse.Namespace) -> int:
    """``init-db``: create the table of ``--layout`` (and partitions) idempotently; with
    ``--roles`` / ``--reject-updates``, then the roles and the append-only triggers
    (``roles.setup``). ``--print-sql`` prints the SQL of the layout (when ``--layout`` or
    ``--partitioned`` is given), then of the roles and triggers, and connects to nothing."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from . import roles
    from .db import as_permission_error, init_db, is_permission_error

    url, schema = database(args)
    if args.months_ahead < 0:
        raise ConfigurationError(f"--months-ahead must be >= 0, got {args.months_ahead}")
    layout = _layout(args)
    append_only = _append_only(args, layout)
    if args.roles or append_only or args.print_sql:
        roles.role_names(args.role_prefix)  # a bad prefix is exit 2 before anything is made
        if args.print_sql:
            if args.layout is not None or args.partitioned:
                from .ddl_variants import print_sql

                sys.stdout.write(print_sql(layout))
                if not (args.roles or append_only):
                    return EXIT_OK
            return _print_role_sql(with_roles=args.roles, append_only=append_only)
        if is_sqlite(url):
            raise ConfigurationError("--roles and --reject-updates need PostgreSQL "
                                     "(SQLite has no roles), got a sqlite URL")
    try:
        path = sqlite_file(url)
        if path is not None and layout == "plain":  # init_db refuses the others on SQLite
            probe_sqlite(path, create=True)
        notice = asyncio.run(init_db(url, schema=schema, layout=layout,
                                     months_ahead=args.months_ahead))
        if args.rebuild_rollup:  # helper E's: the daily rollup recounted (rollup.py)
            from .rollup import rebuild_rollup_at

            counted = asyncio.run(rebuild_rollup_at(url, schema=schema))
            print(f"daily rollup rebuilt: {counted} rows (day, type, severity, actor type)")
        done: roles.RolesSetup | None = None
        if args.roles or append_only:
            done = asyncio.run(roles.setup(url, schema=schema, prefix=args.role_prefix,
                                           roles=args.roles, append_only=append_only))
    except (DBAPIError, asyncpg.PostgresError, sqlite3.Error) as exc:
        if is_permission_error(exc):
            raise as_permission_error(
                exc, role=None, doing="create the tables",
                fix="run init-db as the schema's owner or a superuser, or as a member of the "
                    "maintenance role once the roles exist (docs/roles.md)") from exc
        print(f"activity-logging init-db: database error at {redact_url(url)}: "
              f"{database_error_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"activity-logging init-db: cannot open {redact_url(url)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if notice is not None:  # the table is ready; text search merely has no index
        print(f"activity-logging init-db: {notice}", file=sys.stderr)
    print(f"activity_logs ready in {redact_url(url)}{f' schema {schema}' if schema else ''}"
          f"{_LAYOUT_NOTES.get(layout, '')}")
    if done is not None and done.names is not None:
        names = done.names
        print(f"roles {', '.join(names.all())} ready, granted on {', '.join(done.tables)}; "
              f"log in as a member: CREATE ROLE app_worker LOGIN PASSWORD '...' "
              f"IN ROLE {names.writer}")
    if done is not None and done.append_only:
        print("activity_logs is append-only: UPDATE and TRUNCATE are refused by triggers")
    return EXIT_OK


#: What ``init-db`` adds to its "ready" line for each layout but plain.
_LAYOUT_NOTES: Final = {
    "partitioned": " (partitioned by month)",
    "citus": " (Citus: distributed on id)",
    "citus-partitioned": " (partitioned by month; Citus: distributed on id)",
    "timescaledb": " (TimescaleDB hypertable)",
}


def _layout(args: argparse.Namespace) -> str:
    """``--layout``, with ``--partitioned`` meaning ``--layout partitioned``; exit 2 for a
    layout not by month given with ``--partitioned``."""
    if args.layout is None:
        return "partitioned" if args.partitioned else "plain"
    if args.partitioned and args.layout not in ("partitioned", "citus-partitioned"):
        raise ConfigurationError(f"--partitioned does not go with --layout {args.layout}: "
                                 "give --layout partitioned or --layout citus-partitioned")
    return str(args.layout)


def _append_only(args: argparse.Namespace, layout: str) -> bool:
    """Whether to install the append-only triggers: ``--reject-updates``, else on with
    ``--roles``; never on Citus, which refuses triggers on distributed tables (exit 2 when
    asked for, off by default there)."""
    if not layout.startswith("citus"):
        return bool(args.roles if args.reject_updates is None else args.reject_updates)
    if args.reject_updates:
        raise ConfigurationError(
            f"--reject-updates does not go with --layout {layout}: Citus refuses triggers on "
            "distributed tables; the roles already grant no UPDATE (docs/scaling.md)")
    return False


def _print_role_sql(*, with_roles: bool, append_only: bool) -> int:
    """``init-db --print-sql``: the shipped SQL files, as ``psql -f`` runs them."""
    from . import roles

    if not (with_roles or append_only):
        raise ConfigurationError("--print-sql prints what --roles or --reject-updates runs: "
                                 "give one of them")
    files = ([roles.ROLES_SQL] if with_roles else []) + (
        [roles.APPEND_ONLY_SQL] if append_only else [])
    for name in files:
        sys.stdout.write(roles.sql_file(name))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    """``worker``: drain until SIGTERM/SIGINT (exit 0), or a second signal (exit 128 + signal)."""
    # A signal that arrives while the heavy modules load is held, not a default kill, and
    # handed to the worker once it exists: every moment of the process obeys a stop (those
    # held by _startup before the CLI was even imported come first).
    early: list[int] = _startup.held

    def hold(signum: int, _frame: FrameType | None) -> None:
        early.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in _STOP_SIGNALS}
    try:
        from .signing import resolve_keyring
        from .worker import ActivityWorker, tune_gc_for_draining

        options = given(args, _TUNING)
        redis_url = resolve_redis_url(args.redis_url)
        worker = ActivityWorker(
            redis_url, resolve_database_url(args.database_url), stream=args.stream,
            stream_shards=args.stream_shards, group=args.group, consumer=args.consumer,
            schema=args.schema,
            signing_keys=resolve_keyring(key_file=args.signing_key_file), **options,
        )
        if args.metrics_port is not None:
            _serve_metrics(worker, args.metrics_port, args.metrics_host)
        tune_gc_for_draining()
        asyncio.run(_run_worker(worker, early, hold, stop_when_idle=args.exit_when_idle))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if worker.stopped_cold:
        return EXIT_COLD_STOP_BASE + (worker.last_signal or signal.SIGTERM)
    return EXIT_OK


def _serve_metrics(worker: ActivityWorker, port: int, host: str) -> None:
    """Start the metrics endpoint for ``worker``; raises ``ConfigurationError`` (exit 2).

    The server thread is a daemon and is left running to the end: a scrape during the warm
    stop still answers, and closing it would add up to half a second to every stop.
    """
    try:
        from .metrics import start_worker_metrics
    except ImportError as exc:
        raise ConfigurationError(f"--metrics-port: {exc}") from None
    server = start_worker_metrics(worker, port, host)
    logger.info("metrics on %s", server.url)


async def _run_worker(
    worker: ActivityWorker, early: list[int], hold: Callable[[int, FrameType | None], None],
    *, stop_when_idle: bool,
) -> None:
    for signum in early:  # signals held before the worker's own handlers existed
        worker.handle_signal(signum)
    try:
        await worker.run(stop_when_idle=stop_when_idle, install_signal_handlers=True)
    finally:
        # run() restored the default actions; hold signals again until asyncio.run is done.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, hold)
