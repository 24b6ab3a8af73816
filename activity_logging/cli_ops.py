"""Operations verbs of ``activity-logging``: status, query, export, cleanup, vacuum, scheduler,
verify.

Each verb is a function ``(args) -> exit code``; heavy imports happen inside it so ``--help``
stays fast. Expected failures never print a traceback: bad arguments raise
``ConfigurationError`` (exit 2), unreachable services ``StoreUnavailableError`` (exit 3),
both mapped by ``cli.main``; a missing table, a missing SQLite file (never created by a
verb here), a database error or a failed write of the output is reported in one line
(exit 1). Each verb prints its result once, on stdout; the library underneath logs it only
at DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from .config import (
    DEFAULT_GROUP,
    DEFAULT_HEARTBEAT_TTL,
    DEFAULT_SQLITE_URL,
    resolve_database_url,
    resolve_redis_url,
    resolve_schema,
    resolve_stream,
)
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .crud import ActivityFilter, ActivityRecord, ActivitySummary

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

_RELATIVE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- argument helpers -------------------------------------------------------------------------


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """A CLI time: ISO 8601 (``2026-03-01``, ``2026-03-01T12:00+01:00``; naive = UTC) or an
    age before now (``90s``, ``15m``, ``24h``, ``7d``, ``2w``). Raises ``ConfigurationError``,
    also for a time outside what ``datetime`` holds (``99999999999w``)."""
    match = _RELATIVE.match(text)
    try:
        if match:
            base = now or datetime.now(UTC)
            return base - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ConfigurationError(
                f"invalid time {text!r}: use ISO 8601 (2026-03-01, 2026-03-01T12:00Z) "
                "or an age (24h, 7d)"
            ) from None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ConfigurationError(
            f"time {text!r} is out of range (years 1 to 9999)") from None


def _database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None,
                        help=f"store to use (default: DATABASE_URL, else {DEFAULT_SQLITE_URL})")
    parser.add_argument("--schema", default=None,
                        help="PostgreSQL schema holding the table (default: ACTIVITY_LOG_SCHEMA)")


def _redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None,
                        help="Redis holding the stream (default: REDIS_URL; none = embedded mode)")
    parser.add_argument("--stream", default=None,
                        help="stream name (default: ACTIVITY_LOG_STREAM, else activity_log_stream)")
    parser.add_argument("--group", default=DEFAULT_GROUP,
                        help=f"consumer group (default: {DEFAULT_GROUP})")


def _filter_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("filters (combined with AND)")
    g.add_argument("--since", help="from this time, inclusive (ISO 8601 or an age: 24h, 7d)")
    g.add_argument("--until", help="before this time, exclusive (ISO 8601 or an age)")
    g.add_argument("--type", dest="activity_type", action="append", metavar="TYPE",
                   help="activity type; repeat for any of several")
    g.add_argument("--actor-type")
    g.add_argument("--actor-id")
    g.add_argument("--target-type")
    g.add_argument("--target-id")
    g.add_argument("--request-id")
    g.add_argument("--severity", action="append", metavar="SEVERITY",
                   help="debug/info/warning/error/critical; repeat for any of several")
    g.add_argument("--text", help="case-insensitive substring of the description")


def _filters(args: argparse.Namespace) -> ActivityFilter:
    from .crud import ActivityFilter

    return ActivityFilter.build(
        start=parse_when(args.since) if args.since else None,
        end=parse_when(args.until) if args.until else None,
        activity_type=args.activity_type, actor_type=args.actor_type, actor_id=args.actor_id,
        target_type=args.target_type, target_id=args.target_id, request_id=args.request_id,
        severity=args.severity, text=args.text,
    )


def _database(args: argparse.Namespace) -> tuple[str, str | None]:
    url = resolve_database_url(args.database_url, default=DEFAULT_SQLITE_URL)
    assert url is not None
    return url, resolve_schema(args.schema)


class MissingStoreError(Exception):
    """A verb that reads an existing store was pointed at an SQLite file that is not there."""


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL opens (relative to the working directory, as SQLite does);
    None for PostgreSQL, an in-memory database or a ``uri=true`` filename."""
    from sqlalchemy.engine import make_url

    from .urls import is_sqlite

    if not is_sqlite(url):
        return None
    parsed = make_url(url)
    name = parsed.database
    if not name or name == ":memory:" or str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return Path(name)


def require_store(url: str) -> None:
    """Raise ``MissingStoreError`` when ``url`` is an SQLite file that does not exist.

    Opening it would create an empty file (SQLite does, on connect), and the verb would then
    report a missing table in a database that was never there: a typo in the path, or a
    store nothing has written to yet, must be said as such.
    """
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise MissingStoreError(
            f"no database at {url}: {path} does not exist (a typo in --database-url or "
            f"DATABASE_URL, or nothing logged there yet: `activity-logging demo` makes one)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


def database_error_line(exc: BaseException) -> str:
    """The first line of the driver's (the server's) own message for a database error."""
    orig = getattr(exc, "orig", None)
    message = str(orig) if orig is not None else str(exc)
    return message.splitlines()[0] if message.strip() else type(exc).__name__


def report_database_error(command: str, exc: BaseException) -> int:
    """Print a database error in one line on stderr; returns ``EXIT_FAILED``.

    Only an undefined table (SQLSTATE 42P01, SQLite "no such table") says to run
    ``init-db``: a missing database, schema or column is reported with the server's message.
    """
    from .db import is_missing_table

    first = database_error_line(exc)
    if is_missing_table(exc):
        print(f"activity-logging {command}: table not found ({first}); "
              "run `activity-logging init-db` first", file=sys.stderr)
    else:
        print(f"activity-logging {command}: database error: {first}", file=sys.stderr)
    return EXIT_FAILED


def _verb(func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
          ) -> Callable[[argparse.Namespace], int]:
    """Run an async verb; report database errors in one line instead of a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import DBAPIError

        try:
            return asyncio.run(func(args))
        except DBAPIError as exc:
            return report_database_error(args.command, exc)
        except MissingStoreError as exc:
            print(f"activity-logging {args.command}: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return run


# --- status -----------------------------------------------------------------------------------


@_verb
async def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when healthy, 1 when not, 3 when Redis or the database is unreachable."""
    from .status import gather_status, render_status

    url, schema = _database(args)
    require_store(url)
    status = await gather_status(
        url, resolve_redis_url(args.redis_url), schema=schema, stream=resolve_stream(args.stream),
        group=args.group, max_lag=args.max_lag, heartbeat_ttl=args.heartbeat_ttl,
    )
    if args.json:
        _print_json(status.to_dict())
    else:
        print(render_status(status))
    return EXIT_OK if status.healthy else EXIT_FAILED


# --- query ------------------------------------------------------------------------------------

_TABLE_COLUMNS: Final = (
    ("timestamp", 23), ("severity", 8), ("activity_type", 22), ("actor", 28), ("target", 24),
    ("description", 48),
)
#: ``--show-changes`` adds this last column, never cut: the changes are the point of it.
_CHANGES_COLUMN: Final = ("changes", 0)


def _cell(record: ActivityRecord, name: str) -> str:
    if name == "timestamp":
        return record.timestamp.isoformat(sep=" ", timespec="milliseconds")[:23]
    if name == "actor":
        return ":".join(p for p in (record.actor_type, record.actor_id) if p) or "-"
    if name == "target":
        return ":".join(p for p in (record.target_type, record.target_id) if p) or "-"
    if name == "changes":
        from .changes import format_changes

        return " ".join(format_changes(record.changes).split())
    value = getattr(record, name)
    return "-" if value is None else " ".join(str(value).split())


def render_table(records: list[ActivityRecord], *, show_changes: bool = False) -> str:
    """Records as an aligned text table, one line each, long cells cut with ``…``.

    ``show_changes`` adds a last column, ``field: old → new; ...`` (values as JSON), uncut.
    """
    columns = (*_TABLE_COLUMNS, _CHANGES_COLUMN) if show_changes else _TABLE_COLUMNS

    def fit(text: str, width: int) -> str:
        return text if not width or len(text) <= width else text[: width - 1] + "…"

    lines = ["  ".join(f"{name.upper():<{w}}" for name, w in columns).rstrip()]
    for rec in records:
        lines.append("  ".join(f"{fit(_cell(rec, n), w):<{w}}" for n, w in columns).rstrip())
    return "\n".join(lines)


def render_summary(summary: ActivitySummary, *, bar_width: int = 40) -> str:
    """A summary as text: the total, then counts by type, by severity and by day (with bars)."""
    last_day = (summary.until - timedelta(days=1)).date()
    lines = [f"{summary.total} activities, {summary.since.date()} to {last_day} "
             f"({summary.days} days, UTC)"]
    peak = max(summary.by_day.values(), default=0)
    for title, counts in (("TYPE", summary.by_type), ("SEVERITY", summary.by_severity),
                          ("DAY", summary.by_day)):
        width = max([len(title), *map(len, counts)])
        lines += ["", f"{title:<{width}}  {'COUNT':>9}"]
        for key, n in counts.items():
            line = f"{key:<{width}}  {n:>9}"
            if title == "DAY" and peak and n:
                line += "  " + "#" * max(1, round(n / peak * bar_width))
            lines.append(line)
        if not counts:
            lines.append("(none)")
    return "\n".join(lines)


@_verb
async def cmd_query(args: argparse.Namespace) -> int:
    """Print matching activities (table, JSON lines) or, with ``--summary``, the counts."""
    from .crud import activity_log_crud
    from .db import create_async_engine_for
    from .retention import reachable

    url, schema = _database(args)
    filters = _filters(args)
    require_store(url)
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url), engine.connect() as conn:
            if args.summary is not None:
                summary = await activity_log_crud.get_activity_summary(conn, days=args.summary)
            else:
                page = await activity_log_crud.get_page(
                    conn, filters, limit=args.limit, cursor=args.cursor, order=args.order)
    finally:
        await engine.dispose()
    if args.summary is not None:
        if args.format == "table":
            print(render_summary(summary))
        elif args.format == "json":
            _print_json(summary.to_dict())
        else:
            sys.stdout.write(orjson.dumps(summary.to_dict()).decode() + "\n")
        return EXIT_OK
    if args.format == "jsonl":
        for rec in page.items:
            sys.stdout.write(rec.to_json().decode() + "\n")
    elif args.format == "json":
        _print_json([rec.to_dict() for rec in page.items])
    else:
        print(render_table(page.items, show_changes=args.show_changes))
        print(f"({len(page.items)} rows)", file=sys.stderr)
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return EXIT_OK


# --- export -----------------------------------------------------------------------------------


@_verb
async def cmd_export(args: argparse.Namespace) -> int:
    """Stream matching activities to a file (or stdout) as JSON lines or CSV."""
    from .export import export_activities

    url, schema = _database(args)
    filters = _filters(args)
    require_store(url)
    to_stdout = args.output in (None, "-")
    try:
        if to_stdout:
            result = await export_activities(
                url, sys.stdout.buffer, fmt=args.format, filters=filters, schema=schema,
                batch_size=args.batch_size, progress=args.progress)
        else:
            try:
                out = open(args.output, "wb")  # noqa: SIM115, ASYNC230 - closed below; local file
            except OSError as exc:
                raise ConfigurationError(f"cannot write {args.output!r}: {exc.strerror}") from None
            with out:
                result = await export_activities(
                    url, out, fmt=args.format, filters=filters, schema=schema,
                    batch_size=args.batch_size, progress=args.progress)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): cli.main ends quietly
    except OSError as exc:
        # export_activities maps connect/fetch failures to StoreUnavailableError: an
        # OSError here comes from writing the output (disk full, I/O error).
        where = "stdout" if to_stdout else repr(args.output)
        print(f"activity-logging export: cannot write {where}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"exported {result.rows} rows as {result.format} in {result.seconds:.1f} s",
          file=sys.stderr)
    return EXIT_OK


# --- cleanup, vacuum, scheduler ----------------------------------------------------------------


@_verb
async def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove activities older than the retention period (``--dry-run``: count them only)."""
    from .export import ProgressLine
    from .retention import cleanup, resolve_cleanup_days

    url, schema = _database(args)
    resolve_cleanup_days(args.retention_days)  # a bad value is exit 2, whatever the store
    require_store(url)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressLine(sys.stderr, enabled=show and not args.dry_run, unit="rows deleted")

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done)

    result = await cleanup(url, schema=schema, retention_days=args.retention_days,
                           batch_size=args.batch_size, detach=args.detach,
                           months_ahead=args.months_ahead, dry_run=args.dry_run,
                           on_progress=progress if bar.enabled else None)
    if bar.enabled:
        bar.update(result.deleted_rows, final=True)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(render_cleanup(result, detach=args.detach))
    return EXIT_OK


def render_cleanup(result: Any, *, detach: bool = False) -> str:
    """One line saying what a ``CleanupResult`` did, or would do in a dry run."""
    removed = result.detached_partitions if detach else result.dropped_partitions
    verb = "detached" if detach else "dropped"
    head = (f"cutoff {result.cutoff.isoformat(timespec='seconds')} "
            f"({result.retention_days} days): ")
    if result.dry_run:
        return (f"dry run, nothing changed: {head}{result.deleted_rows} rows older than the "
                f"cutoff; partitions that would be {verb}: {', '.join(removed) or 'none'}; "
                f"would be created: {', '.join(result.created_partitions) or 'none'}")
    return (f"{head}{result.deleted_rows} rows deleted in {result.batches} batches; "
            f"partitions {verb}: {', '.join(removed) or 'none'}; "
            f"created: {', '.join(result.created_partitions) or 'none'}")


@_verb
async def cmd_vacuum(args: argparse.Namespace) -> int:
    """VACUUM (ANALYZE) the table."""
    from .retention import vacuum

    url, schema = _database(args)
    require_store(url)
    result = await vacuum(url, schema=schema, analyze=not args.no_analyze)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(f"{result.statement}: done in {result.seconds:.1f} s")
    return EXIT_OK


def _set_timezone(name: str) -> None:
    import time
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {name!r} (use an IANA name, e.g. Europe/Paris)"
                                 ) from None
    # `schedule` reads local wall-clock time; this process exists to run the schedule, so
    # setting its zone is how the configured times get their explicit zone.
    os.environ["TZ"] = name
    time.tzset()


def _attach_activity_handler(args: argparse.Namespace, url: str, schema: str | None) -> Any:
    """Ship the scheduler's system_event records, unless the "activity" logger already does."""
    import logging

    log = logging.getLogger("activity")
    if log.handlers:
        return None
    from .handler import ActivityHandler

    handler = ActivityHandler(redis_url=resolve_redis_url(args.redis_url),
                              stream=resolve_stream(args.stream), database_url=url, schema=schema)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Run maintenance on a schedule until SIGTERM/SIGINT (or once, with ``--once``)."""
    import logging
    import signal

    from .retention import resolve_cleanup_days
    from .scheduler import MaintenanceScheduler, local_timezone_name

    url, schema = _database(args)
    resolve_cleanup_days(args.retention_days)  # fail now (exit 2), not at 02:00
    if args.tz:
        _set_timezone(args.tz)
    sched = MaintenanceScheduler(
        url, schema=schema, retention_days=args.retention_days, cleanup_at=args.cleanup_at,
        vacuum_day=args.vacuum_day, vacuum_at=args.vacuum_at, detach=args.detach,
    )
    handler = _attach_activity_handler(args, url, schema)
    log = logging.getLogger("activity_logging.scheduler")
    try:
        if args.once:
            ok = [sched.run_job(name) for name in ("cleanup", "vacuum")]
            return EXIT_OK if all(ok) else EXIT_FAILED
        log.info("scheduler running in time zone %s (TZ=%s)", local_timezone_name(),
                 os.environ.get("TZ", "system default"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: sched.stop())
        sched.run_forever()
        return EXIT_OK
    finally:
        if handler is not None:
            logging.getLogger("activity").removeHandler(handler)
            handler.close()


# --- verify -----------------------------------------------------------------------------------


@_verb
async def cmd_verify(args: argparse.Namespace) -> int:
    """Check per-producer sequence numbers; exit 1 when any gap (lost records) is found."""
    from .crud import activity_log_crud
    from .db import create_async_engine_for
    from .retention import reachable

    url, schema = _database(args)
    since = parse_when(args.since) if args.since else None
    require_store(url)
    engine = create_async_engine_for(url, schema=schema)
    try:
        async with reachable(url), engine.connect() as conn:
            reports = await activity_log_crud.get_sequence_report(
                conn, producer_id=args.producer, since=since)
    finally:
        await engine.dispose()
    missing = sum(r.missing for r in reports)
    duplicates = sum(r.duplicates for r in reports)
    if args.json:
        _print_json({"ok": missing == 0, "producers": len(reports),
                     "rows": sum(r.rows for r in reports), "missing": missing,
                     "duplicates": duplicates, "report": [r.to_dict() for r in reports]})
    else:
        print(f"{'PRODUCER':<40} {'ROWS':>10} {'FIRST':>10} {'LAST':>10} "
              f"{'MISSING':>8} {'DUPS':>6}")
        for r in reports:
            print(f"{r.producer_id:<40} {r.rows:>10} {r.first_seq:>10} {r.last_seq:>10} "
                  f"{r.missing:>8} {r.duplicates:>6}")
            for start, end in r.gaps[:args.max_gaps]:
                print(f"    gap: seq {start}" + (f"..{end}" if end != start else ""))
            if len(r.gaps) > args.max_gaps:
                print(f"    ... {len(r.gaps) - args.max_gaps} more gaps")
        verdict = "OK: no gaps" if missing == 0 else f"LOSS: {missing} records missing"
        print(f"{verdict} ({len(reports)} producers, {sum(r.rows for r in reports)} rows, "
              f"{duplicates} duplicate seq)")
    return EXIT_OK if missing == 0 else EXIT_FAILED


# --- registration -----------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the operations verbs to the ``activity-logging`` parser."""
    p = sub.add_parser(
        "status", help="pipeline health: stream, workers, dead letters, lag (exit 1 if unhealthy)",
        description="Report the pipeline's health in one pass. Exit codes: 0 healthy, 1 unhealthy "
        "(no live worker, dead letters, records waiting longer than --max-lag), 3 unreachable.")
    _database_options(p)
    _redis_options(p)
    p.add_argument("--max-lag", type=_positive_float, default=300.0,
                   help="seconds a record may wait in the stream before unhealthy (default: 300)")
    p.add_argument("--heartbeat-ttl", type=_positive_float, default=DEFAULT_HEARTBEAT_TTL,
                   help="heartbeat age in seconds that still counts as live "
                   f"(default: {DEFAULT_HEARTBEAT_TTL:g})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("query", help="search activities (table or JSON lines)",
                       description="Search stored activities, newest first, one page at a time.")
    _database_options(p)
    _filter_options(p)
    p.add_argument("--limit", type=_positive_int, default=50, help="rows per page (default: 50)")
    p.add_argument("--cursor", help="continue after a previous page (printed on stderr)")
    p.add_argument("--order", choices=["desc", "asc"], default="desc")
    p.add_argument("--format", choices=["table", "jsonl", "json"], default="table",
                   help="table (default), JSON lines, or one JSON document")
    p.add_argument("--show-changes", action="store_true",
                   help="table: add a CHANGES column (field: old → new)")
    p.add_argument("--summary", type=_positive_int, metavar="DAYS",
                   help="print counts by type, severity and day for the last DAYS days instead "
                   "(a table; JSON with --format json)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="stream activities to JSON lines or CSV",
                       description="Export matching activities in (timestamp, id) order with a "
                       "server-side cursor, in constant memory; progress on a terminal.")
    _database_options(p)
    _filter_options(p)
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--batch-size", type=_positive_int, default=5000,
                   help="rows fetched per round trip (default: 5000)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cleanup", help="remove activities older than the retention period",
                       description="Delete expired activities in batches (plain table) or drop "
                       "expired monthly partitions and create the next ones (partitioned).")
    _database_options(p)
    p.add_argument("--retention-days", type=_positive_int, default=None,
                   help="keep this many days (default: ACTIVITY_LOG_RETENTION_DAYS, else 90)")
    p.add_argument("--batch-size", type=_positive_int, default=10_000,
                   help="rows deleted per transaction (default: 10000)")
    p.add_argument("--detach", action="store_true",
                   help="detach expired partitions (keep them as tables) instead of dropping")
    p.add_argument("--months-ahead", type=_positive_int, default=3,
                   help="partitions to keep created ahead (default: 3)")
    p.add_argument("--dry-run", action="store_true",
                   help="count the rows and list the partitions a run would remove; change nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr while deleting (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("vacuum", help="VACUUM (ANALYZE) the activity table",
                       description="Run VACUUM (ANALYZE) outside a transaction.")
    _database_options(p)
    p.add_argument("--no-analyze", action="store_true", help="plain VACUUM")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_vacuum)

    p = sub.add_parser("scheduler", help="run cleanup daily and vacuum weekly (long-running)",
                       description="Run maintenance on a schedule: cleanup daily at --cleanup-at, "
                       "vacuum weekly on --vacuum-day at --vacuum-at, local time (--tz to set it). "
                       "Each run is recorded as a system_event activity.")
    _database_options(p)
    _redis_options(p)
    p.add_argument("--cleanup-at", default="02:00", help="HH:MM local time (default: 02:00)")
    p.add_argument("--vacuum-day", default="sunday", help="weekday (default: sunday)")
    p.add_argument("--vacuum-at", default="03:00", help="HH:MM local time (default: 03:00)")
    p.add_argument("--tz", help="IANA time zone for the times above (default: the system's)")
    p.add_argument("--retention-days", type=_positive_int, default=None)
    p.add_argument("--detach", action="store_true", help="detach expired partitions")
    p.add_argument("--once", action="store_true", help="run cleanup then vacuum now, and exit")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("verify", help="check the stored trail for lost records (seq gaps)",
                       description="Per producer_id, count rows and find gaps in seq. Exit 1 when "
                       "any record is missing. Pass --since after the retention cutoff.")
    _database_options(p)
    p.add_argument("--producer", help="only this producer_id")
    p.add_argument("--since", help="only rows from this time (ISO 8601 or an age: 30d)")
    p.add_argument("--max-gaps", type=_positive_int, default=20, help="gaps listed per producer")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)
