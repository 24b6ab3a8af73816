"""What the worker refused: ``activity-logging dead-letters list | show ID | count | purge``.

Reads ``activity_log_dead_letters`` (``dead_letters.py``) in the database the trail is in
(``--database-url``, ``--schema``), newest first. ``list`` leaves out the excerpts,
``show`` prints one dead letter with its excerpt; ``--json`` for machines. Text from the
table is escaped for the terminal (``cli_render.printable``): a dead letter is hostile
input by definition. ``purge`` deletes by age and keeps at most ``--keep`` rows (what the
worker does hourly when its role may delete; run it from cron for a writer-only worker).
SQLAlchemy is imported inside the verbs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    LibraryDefault,
    database,
    database_options,
    positive_int,
    print_json,
    require_store,
    resolve,
    verb,
)
from .cli_render import printable
from .entry_limits import REFUSAL_REASONS
from .exceptions import ConfigurationError
from .when import parse_when

#: The columns ``list`` shows, in order, and their widths (None: the rest of the line).
_LIST_COLUMNS: tuple[tuple[str, int | None], ...] = (
    ("id", 8), ("dead_at", 26), ("reason", 14), ("source_id", 16), ("position", 8),
    ("record_bytes", 12), ("error", None),
)


def register(sub: Any) -> None:
    """Add ``dead-letters`` (with ``list``, ``show``, ``count``, ``purge``) to the parser."""
    p = sub.add_parser(
        "dead-letters", help="what the worker refused (list, show, count, purge)",
        description="Dead letters: the records and entries the worker refused (too big, "
                    "undecodable, malformed, dated outside the accepted window, refused by "
                    "the database), kept in activity_log_dead_letters with a bounded excerpt, "
                    "the size and the sha256 of what was refused.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="the newest dead letters (no excerpts)")
    database_options(ls)
    ls.add_argument("--limit", type=positive_int, default=50,
                    help="dead letters to show (default: %(default)s)")
    ls.add_argument("--before-id", type=int, default=None,
                    help="only those older than this id (the next page)")
    ls.add_argument("--reason", choices=list(REFUSAL_REASONS), default=None,
                    help="only this reason")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="one dead letter, with its excerpt")
    database_options(show)
    show.add_argument("id", type=int, help="the dead letter's id (from list)")
    show.add_argument("--json", action="store_true", help="one JSON document")
    show.set_defaults(func=cmd_show)

    cnt = actions.add_parser("count", help="how many dead letters there are")
    database_options(cnt)
    cnt.add_argument("--json", action="store_true", help='{"count": N}')
    cnt.set_defaults(func=cmd_count)

    purge = actions.add_parser("purge", help="delete old dead letters, keep at most --keep")
    database_options(purge)
    purge.add_argument("--older-than", metavar="AGE",
                       default=LibraryDefault("dead_letters", "DEFAULT_MAX_AGE_DAYS"),
                       help="delete those older than this: an age (30d, 12h) or a time "
                            "(ISO 8601) (default: %(default)s days)")
    purge.add_argument("--keep", type=positive_int,
                       default=LibraryDefault("dead_letters", "DEFAULT_MAX_ROWS"),
                       help="then keep at most this many, the newest (default: %(default)s)")
    purge.add_argument("--json", action="store_true", help='{"deleted": N}')
    purge.set_defaults(func=cmd_purge)


@verb
async def cmd_list(args: argparse.Namespace) -> int:
    """``dead-letters list``: the newest first, a table or ``--json``."""
    from . import dead_letters
    from .db import read_connection

    url, schema = database(args)
    require_store(url)
    async with read_connection(url, schema=schema) as conn:
        letters = await dead_letters.fetch(conn, limit=args.limit, before_id=args.before_id,
                                           reason=args.reason)
    if args.json:
        print_json(letters)
        return EXIT_OK
    print(_table(letters))
    print(f"({len(letters)} dead letters)", file=sys.stderr)
    if len(letters) == args.limit:
        print(f"more: --before-id {letters[-1]['id']}", file=sys.stderr)
    return EXIT_OK


@verb
async def cmd_show(args: argparse.Namespace) -> int:
    """``dead-letters show ID``: every column, the excerpt last."""
    from . import dead_letters
    from .db import read_connection

    url, schema = database(args)
    require_store(url)
    async with read_connection(url, schema=schema) as conn:
        letter = await dead_letters.get(conn, args.id)
    if letter is None:
        print(f"activity-logging dead-letters: no dead letter with id {args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(letter)
        return EXIT_OK
    for name, value in letter.items():
        if name != "record":
            print(f"{name + ':':<15}{printable(_text(value))}")
    shown = len(letter["record"] or "")
    print(f"record ({shown} characters kept of {letter['record_bytes']} bytes):")
    print(printable(letter["record"] or ""))
    return EXIT_OK


@verb
async def cmd_count(args: argparse.Namespace) -> int:
    """``dead-letters count``."""
    from . import dead_letters
    from .db import read_connection

    url, schema = database(args)
    require_store(url)
    async with read_connection(url, schema=schema) as conn:
        total = await dead_letters.count(conn)
    if args.json:
        sys.stdout.write(orjson.dumps({"count": total}).decode() + "\n")
    else:
        print(total)
    return EXIT_OK


@verb
async def cmd_purge(args: argparse.Namespace) -> int:
    """``dead-letters purge``: by age, then by count; prints how many were deleted."""
    from . import dead_letters
    from .db import read_connection

    url, schema = database(args)
    now = datetime.now(UTC)
    if isinstance(args.older_than, LibraryDefault):
        older_than = timedelta(days=resolve(args.older_than))
    else:
        older_than = now - parse_when(args.older_than, now=now)
        if older_than.total_seconds() < 0:
            raise ConfigurationError(f"--older-than {args.older_than!r} is in the future")
    require_store(url)
    async with read_connection(url, schema=schema) as conn:
        deleted = await dead_letters.purge(conn, older_than=older_than, keep=resolve(args.keep))
    if args.json:
        sys.stdout.write(orjson.dumps({"deleted": deleted}).decode() + "\n")
    else:
        print(f"deleted {deleted} dead letters", file=sys.stderr)
    return EXIT_OK


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _table(letters: list[dict[str, Any]]) -> str:
    """The ``list`` table: one line per dead letter, every cell escaped and cut to fit."""
    head = " ".join(name.upper().ljust(width) if width else name.upper()
                    for name, width in _LIST_COLUMNS)
    lines = [head]
    for letter in letters:
        cells = []
        for name, width in _LIST_COLUMNS:
            text = printable(_text(letter.get(name)))
            if width is None:
                cells.append(text[:160])
            else:
                cells.append((text if len(text) <= width else text[: width - 1] + "…").ljust(width))
        lines.append(" ".join(cells))
    return "\n".join(lines)
