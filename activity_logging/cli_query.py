"""Reading the trail: ``activity-logging query`` (a page, or ``--summary``) and ``export``.

Both take the same filters (combined with AND) and read the store that
``--read-database-url`` names (a read replica; ``cli_common.read_database``), which is the
database URL unless said otherwise. ``query`` prints one page, newest first, and the cursor
of the next on stderr; ``export`` streams every matching row in ``(timestamp, id)`` order to
a file or stdout. SQLAlchemy (through ``crud``, ``db``, ``export``) is imported inside the
verbs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    LibraryDefault,
    database_options,
    positive_int,
    print_json,
    read_database,
    resolve,
    verb,
)
from .cli_render import json_printable, render_summary, render_table
from .exceptions import ConfigurationError
from .urls import redact_url
from .when import parse_when

if TYPE_CHECKING:
    from .crud import ActivityFilter, ActivityPage, ActivitySummary


def register(sub: Any) -> None:
    """Add ``query`` and ``export`` to the ``activity-logging`` parser."""
    p = sub.add_parser("query", help="search activities (table or JSON lines)",
                       description="Search stored activities, newest first, one page at a time.")
    database_options(p, read=True)
    filter_options(p)
    p.add_argument("--limit", type=positive_int, default=50,
                   help="rows per page (default: %(default)s)")
    p.add_argument("--cursor", help="continue after a previous page (printed on stderr)")
    p.add_argument("--order", choices=["desc", "asc"], default="desc")
    p.add_argument("--format", choices=["table", "jsonl", "json"], default="table",
                   help="table (default), JSON lines, or one JSON document")
    p.add_argument("--show-changes", action="store_true",
                   help="table: add a CHANGES column (field: old → new)")
    p.add_argument("--summary", type=positive_int, metavar="DAYS",
                   help="print counts by type, severity and day for the last DAYS days instead "
                   "(a table; JSON with --format json)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="stream activities to JSON lines or CSV",
                       description="Export matching activities in (timestamp, id) order with a "
                       "server-side cursor, in constant memory; progress on a terminal.")
    database_options(p, read=True)
    filter_options(p)
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--batch-size", type=positive_int,
                   default=LibraryDefault("export", "DEFAULT_BATCH_SIZE"),
                   help="rows fetched per round trip (default: %(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_export)


def filter_options(parser: argparse.ArgumentParser) -> None:
    """The filters ``query`` and ``export`` share."""
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


def filters(args: argparse.Namespace) -> ActivityFilter:
    """The ``ActivityFilter`` the filter options describe; ``ConfigurationError`` if invalid."""
    from .crud import ActivityFilter

    return ActivityFilter.build(
        start=parse_when(args.since) if args.since else None,
        end=parse_when(args.until) if args.until else None,
        activity_type=args.activity_type, actor_type=args.actor_type, actor_id=args.actor_id,
        target_type=args.target_type, target_id=args.target_id, request_id=args.request_id,
        severity=args.severity, text=args.text,
    )


# --- query ------------------------------------------------------------------------------------


@verb
async def cmd_query(args: argparse.Namespace) -> int:
    """Print matching activities (table, JSON lines) or, with ``--summary``, the counts."""
    from .crud import activity_log_crud
    from .db import read_connection

    store = read_database(args)
    chosen = filters(args)
    store.require()
    async with read_connection(store.url, schema=store.schema) as conn:
        if args.summary is not None:
            summary = await activity_log_crud.get_activity_summary(conn, days=args.summary)
        else:
            page = await activity_log_crud.get_page(
                conn, chosen, limit=args.limit, cursor=args.cursor, order=args.order)
    if args.summary is not None:
        _print_summary(summary, args.format)
    else:
        _print_page(page, args.format, show_changes=args.show_changes)
    return EXIT_OK


def _print_summary(summary: ActivitySummary, fmt: str) -> None:
    if fmt == "table":
        print(render_summary(summary))
    elif fmt == "json":
        print_json(summary.to_dict())
    else:
        sys.stdout.write(json_printable(orjson.dumps(summary.to_dict()).decode()) + "\n")


def _print_page(page: ActivityPage, fmt: str, *, show_changes: bool) -> None:
    """The rows on stdout; the row count (table) and the next cursor on stderr. Stored values
    reach the terminal escaped: the table through ``printable``, JSON through orjson (C0)
    and ``json_printable`` (DEL, C1, bidi controls as ``\\uXXXX``)."""
    if fmt == "jsonl":
        for rec in page.items:
            sys.stdout.write(json_printable(rec.to_json().decode()) + "\n")
    elif fmt == "json":
        print_json([rec.to_dict() for rec in page.items])
    else:
        print(render_table(page.items, show_changes=show_changes))
        print(f"({len(page.items)} rows)", file=sys.stderr)
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)


# --- export -----------------------------------------------------------------------------------


@verb
async def cmd_export(args: argparse.Namespace) -> int:
    """Stream matching activities to a file (or stdout) as JSON lines or CSV."""
    from .export import export_activities

    store = read_database(args)
    url = store.url
    options: dict[str, Any] = {
        "fmt": args.format, "filters": filters(args), "schema": store.schema,
        "batch_size": resolve(args.batch_size), "progress": args.progress,
    }
    store.require()
    to_stdout = args.output in (None, "-")
    try:
        if to_stdout:
            result = await export_activities(url, sys.stdout.buffer, **options)
        else:
            try:
                out = open(args.output, "wb")  # noqa: SIM115, ASYNC230 - closed below; local file
            except OSError as exc:
                raise ConfigurationError(f"cannot write {args.output!r}: {exc.strerror}") from None
            with out:
                result = await export_activities(url, out, **options)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): cli.main ends quietly
    except OSError as exc:
        # export_activities maps connect/fetch failures to StoreUnavailableError: an
        # OSError here comes from writing the output (disk full, I/O error).
        where = "stdout" if to_stdout else repr(args.output)
        print(f"activity-logging export: cannot write {where}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILED
    source = f" from the read replica {redact_url(url)}" if store.separate else ""
    print(f"exported {result.rows} rows as {result.format} in {result.seconds:.1f} s{source}",
          file=sys.stderr)
    return EXIT_OK
