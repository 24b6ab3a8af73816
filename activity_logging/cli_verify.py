"""``activity-logging verify``: was anything lost? Per producer, gaps in the stored ``seq``.

Exit 0 when no record is missing, 1 when any is (or on a database error, in one line).
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    database,
    database_options,
    positive_int,
    print_json,
    require_store,
    verb,
)
from .cli_render import render_sequence_report
from .when import parse_when


def register(sub: Any) -> None:
    """Add ``verify`` to the ``activity-logging`` parser."""
    p = sub.add_parser("verify", help="check the stored trail for lost records (seq gaps)",
                       description="Per producer_id, count rows and find gaps in seq. Exit 1 when "
                       "any record is missing. Pass --since after the retention cutoff.")
    database_options(p)
    p.add_argument("--producer", help="only this producer_id")
    p.add_argument("--since", help="only rows from this time (ISO 8601 or an age: 30d)")
    p.add_argument("--max-gaps", type=positive_int, default=20, help="gaps listed per producer")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)


@verb
async def cmd_verify(args: argparse.Namespace) -> int:
    """Check per-producer sequence numbers; exit 1 when any gap (lost records) is found."""
    from .crud import activity_log_crud  # lazy: SQLAlchemy
    from .db import read_connection

    url, schema = database(args)
    since = parse_when(args.since) if args.since else None
    require_store(url)
    async with read_connection(url, schema=schema) as conn:
        reports = await activity_log_crud.get_sequence_report(
            conn, producer_id=args.producer, since=since)
    missing = sum(r.missing for r in reports)
    if args.json:
        print_json({"ok": missing == 0, "producers": len(reports),
                    "rows": sum(r.rows for r in reports), "missing": missing,
                    "duplicates": sum(r.duplicates for r in reports),
                    "report": [r.to_dict() for r in reports]})
    else:
        print(render_sequence_report(reports, max_gaps=args.max_gaps))
    return EXIT_OK if missing == 0 else EXIT_FAILED
