"""Retention and maintenance: ``activity-logging cleanup``, ``vacuum``, ``partitions`` and
``scheduler``.

``cleanup`` removes what is older than the retention period (rows, or whole monthly
partitions), ``vacuum`` reclaims the space, ``partitions`` creates monthly partitions ahead
(or for given months), ``scheduler`` runs cleanup and vacuum on a timetable. They are the
maintenance role's work (docs/roles.md): a permission error is ``PermissionDeniedError``
(one line naming the fix, exit 4), and ``vacuum`` refuses to run as a role that does not
own the table (PostgreSQL would skip it and report success).
``retention`` and ``scheduler`` pull in SQLAlchemy: they are imported inside the verbs, so
building the parser stays cheap. Bad arguments are exit 2, an unreachable database exit 3
(``cli.main``), other expected database failures one line, exit 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    MONTHS_AHEAD,
    AsyncVerb,
    LibraryDefault,
    database,
    database_options,
    positive_int,
    print_json,
    redis_options,
    require_store,
    resolve,
    verb,
)
from .cli_render import render_cleanup
from .config import DEFAULT_RETENTION_DAYS, ENV_RETENTION_DAYS, resolve_redis_url, resolve_stream
from .exceptions import ActivityLoggingError, ConfigurationError
from .urls import is_sqlite

if TYPE_CHECKING:
    from .handler import ActivityHandler

_RETENTION_HELP: Final = (f"keep this many days (default: {ENV_RETENTION_DAYS}, else "
                          f"{DEFAULT_RETENTION_DAYS})")


def register(sub: Any) -> None:
    """Add ``cleanup``, ``vacuum`` and ``scheduler`` to the ``activity-logging`` parser."""
    p = sub.add_parser("cleanup", help="remove activities older than the retention period",
                       description="Delete expired activities in batches (plain table) or drop "
                       "expired monthly partitions and create the next ones (partitioned).")
    database_options(p)
    p.add_argument("--retention-days", type=positive_int, default=None, help=_RETENTION_HELP)
    p.add_argument("--batch-size", type=positive_int,
                   default=LibraryDefault("retention", "DEFAULT_BATCH_SIZE"),
                   help="rows deleted per transaction (default: %(default)s)")
    p.add_argument("--detach", action="store_true",
                   help="detach expired partitions (keep them as tables) instead of dropping")
    p.add_argument("--months-ahead", type=positive_int, default=MONTHS_AHEAD,
                   help="partitions to keep created ahead (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="count the rows and list the partitions a run would remove; change nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr while deleting (default: when stderr is a terminal)")
    p.add_argument("--signing-key-file", metavar="PATH", default=None,
                   help="key ring that signs the retention cut markers of a signed trail "
                        "(default ACTIVITY_LOG_SIGNING_KEY or ACTIVITY_LOG_SIGNING_KEY_FILE)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("vacuum", help="VACUUM (ANALYZE) the activity table",
                       description="Run VACUUM (ANALYZE) outside a transaction.")
    database_options(p)
    p.add_argument("--no-analyze", action="store_true", help="plain VACUUM")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_vacuum)

    p = sub.add_parser("partitions", help="create monthly partitions ahead (partitioned table)",
                       description="Create the partitions of the current month and --months-ahead "
                       "after it, and of each --month, that do not exist yet. The maintenance "
                       "side's job: the worker, running as the writer role, may not create them.")
    database_options(p)
    p.add_argument("--months-ahead", type=_months, default=MONTHS_AHEAD,
                   help="months after the current one (default: %(default)s)")
    p.add_argument("--month", type=_year_month, action="append", default=[], metavar="YYYY-MM",
                   help="also this month (a backlog's, say); repeatable")
    p.add_argument("--dry-run", action="store_true", help="list what would be created")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_partitions)

    p = sub.add_parser("scheduler", help="run cleanup daily and vacuum weekly (long-running)",
                       description="Run maintenance on a schedule: cleanup daily at --cleanup-at, "
                       "vacuum weekly on --vacuum-day at --vacuum-at, local time (--tz to set it). "
                       "Each run is recorded as a system_event activity.")
    database_options(p)
    redis_options(p)
    # The times' defaults are MaintenanceScheduler's (a unit test checks that they agree).
    p.add_argument("--cleanup-at", default="02:00", help="HH:MM local time (default: %(default)s)")
    p.add_argument("--vacuum-day", default="sunday", help="weekday (default: %(default)s)")
    p.add_argument("--vacuum-at", default="03:00", help="HH:MM local time (default: %(default)s)")
    p.add_argument("--tz", help="IANA time zone for the times above (default: the system's)")
    p.add_argument("--retention-days", type=positive_int, default=None, help=_RETENTION_HELP)
    p.add_argument("--detach", action="store_true", help="detach expired partitions")
    p.add_argument("--once", action="store_true", help="run cleanup then vacuum now, and exit")
    p.add_argument("--signing-key-file", metavar="PATH", default=None,
                   help="key ring for cleanup's cut markers (and the scheduler's own records); "
                        "sets ACTIVITY_LOG_SIGNING_KEY_FILE for this process")
    p.set_defaults(func=cmd_scheduler)


def _months(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _year_month(text: str) -> tuple[int, int]:
    """argparse type: ``YYYY-MM`` as ``(year, month)``."""
    try:
        when = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month as YYYY-MM: {text!r}") from None
    return when.year, when.month


def _maintenance_work(doing: str) -> Callable[[AsyncVerb], AsyncVerb]:
    """Turn the server's refusal of this role (SQLSTATE 42501, class 28) in a verb into
    ``PermissionDeniedError`` (exit 4) naming ``doing`` and the maintenance role, instead of
    a database error or a traceback (the partition DDL runs on raw asyncpg)."""
    def wrap(func: AsyncVerb) -> AsyncVerb:
        @functools.wraps(func)
        async def run(args: argparse.Namespace) -> int:
            from .db import as_permission_error, is_permission_error
            from .roles import MAINTENANCE_FIX

            try:
                return await func(args)
            except Exception as exc:
                if isinstance(exc, ActivityLoggingError) or not is_permission_error(exc):
                    raise
                raise as_permission_error(exc, role=None, doing=doing,
                                          fix=MAINTENANCE_FIX) from exc
        return run
    return wrap


# --- cleanup, vacuum, partitions --------------------------------------------------------------


@verb
@_maintenance_work("remove expired activities")
async def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove activities older than the retention period (``--dry-run``: count them only)."""
    from .export import ProgressLine
    from .retention import cleanup, resolve_cleanup_days

    url, schema = database(args)
    resolve_cleanup_days(args.retention_days)  # a bad value is exit 2, whatever the store
    require_store(url)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressLine(sys.stderr, enabled=show and not args.dry_run, unit="rows deleted")

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done)

    from .signing import resolve_keyring

    result = await cleanup(url, schema=schema, retention_days=args.retention_days,
                           batch_size=resolve(args.batch_size), detach=args.detach,
                           months_ahead=args.months_ahead, dry_run=args.dry_run,
                           on_progress=progress if bar.enabled else None,
                           keyring=resolve_keyring(key_file=args.signing_key_file))
    if bar.enabled:
        bar.update(result.deleted_rows, final=True)
    if args.json:
        print_json(result.to_dict())
    else:
        print(render_cleanup(result, detach=args.detach))
    return EXIT_OK


@verb
@_maintenance_work("vacuum")
async def cmd_vacuum(args: argparse.Namespace) -> int:
    """VACUUM (ANALYZE) the table; refused up front for a role that does not own it."""
    from .retention import vacuum

    url, schema = database(args)
    require_store(url)
    if not is_sqlite(url):
        from .config import DEFAULT_TABLE
        from .db import connect_pg
        from .roles import require_owner

        conn = await connect_pg(url, schema=schema)
        try:
            await require_owner(conn, DEFAULT_TABLE, doing="vacuum")
        finally:
            await conn.close()
    result = await vacuum(url, schema=schema, analyze=not args.no_analyze)
    if args.json:
        print_json(result.to_dict())
    else:
        print(f"{result.statement}: done in {result.seconds:.1f} s")
    return EXIT_OK


@verb
@_maintenance_work("create partitions")
async def cmd_partitions(args: argparse.Namespace) -> int:
    """Create the missing partitions of the current month, ``--months-ahead`` and ``--month``."""
    from .config import DEFAULT_TABLE
    from .db import connect_pg, quote_identifier
    from .partitions import (
        absent_months,
        create_partitions,
        is_partitioned,
        months_from,
        partition_name,
    )

    url, schema = database(args)
    if is_sqlite(url):
        raise ConfigurationError("partitions need PostgreSQL (a partitioned table), got a "
                                 "sqlite URL")
    wanted = sorted(set(months_from(datetime.now(UTC), args.months_ahead)) | set(args.month))
    table = DEFAULT_TABLE
    conn = await connect_pg(url, schema=schema)
    try:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", quote_identifier(table)):
            print(f"activity-logging partitions: table {table} not found; run "
                  "`activity-logging init-db --partitioned` first", file=sys.stderr)
            return EXIT_FAILED
        if not await is_partitioned(conn, table):
            print(f"activity-logging partitions: {table} is a plain table (no partitions to "
                  "make; init-db --partitioned makes a partitioned one)", file=sys.stderr)
            return EXIT_FAILED
        if args.dry_run:
            names = [partition_name(table, *m) for m in await absent_months(conn, wanted,
                                                                            table=table)]
        else:
            names = await create_partitions(conn, wanted, table=table)
    finally:
        await conn.close()
    if args.json:
        print_json({"created": [] if args.dry_run else names,
                    "would_create": names if args.dry_run else [],
                    "existing": len(wanted) - len(names), "dry_run": args.dry_run})
    elif names:
        print(f"{'would create' if args.dry_run else 'created'} {', '.join(names)}")
    else:
        first, last = wanted[0], wanted[-1]
        print(f"all {len(wanted)} partitions exist ({first[0]:04d}-{first[1]:02d} .. "
              f"{last[0]:04d}-{last[1]:02d})")
    return EXIT_OK


# --- scheduler --------------------------------------------------------------------------------


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Run maintenance on a schedule until SIGTERM/SIGINT (or once, with ``--once``)."""
    from .retention import resolve_cleanup_days
    from .scheduler import MaintenanceScheduler, local_timezone_name

    url, schema = database(args)
    resolve_cleanup_days(args.retention_days)  # fail now (exit 2), not at 02:00
    if args.signing_key_file:
        from .signing import KEY_FILE_ENV, KeyRing

        KeyRing.from_file(args.signing_key_file)  # a bad file is exit 2 now, not at 02:00
        os.environ[KEY_FILE_ENV] = args.signing_key_file
    if args.tz:
        _set_timezone(args.tz)
    sched = MaintenanceScheduler(
        url, schema=schema, retention_days=args.retention_days, cleanup_at=args.cleanup_at,
        vacuum_day=args.vacuum_day, vacuum_at=args.vacuum_at, detach=args.detach,
    )
    handler = _attach_activity_handler(args, url, schema)
    try:
        if args.once:
            ok = [sched.run_job(name) for name in ("cleanup", "vacuum")]
            return EXIT_OK if all(ok) else EXIT_FAILED
        logging.getLogger("activity_logging.scheduler").info(
            "scheduler running in time zone %s (TZ=%s)", local_timezone_name(),
            os.environ.get("TZ", "system default"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: sched.stop())
        sched.run_forever()
        return EXIT_OK
    finally:
        if handler is not None:
            logging.getLogger("activity").removeHandler(handler)
            handler.close()


def _set_timezone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {name!r} (use an IANA name, e.g. Europe/Paris)"
                                 ) from None
    # `schedule` reads local wall-clock time; this process exists to run the schedule, so
    # setting its zone is how the configured times get their explicit zone.
    os.environ["TZ"] = name
    time.tzset()


def _attach_activity_handler(args: argparse.Namespace, url: str, schema: str | None
                             ) -> ActivityHandler | None:
    """Ship the scheduler's system_event records, unless the "activity" logger already does."""
    log = logging.getLogger("activity")
    if log.handlers:
        return None
    from .handler import ActivityHandler  # lazy: only a running scheduler ships records

    handler = ActivityHandler(redis_url=resolve_redis_url(args.redis_url),
                              stream=resolve_stream(args.stream), database_url=url, schema=schema)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler
