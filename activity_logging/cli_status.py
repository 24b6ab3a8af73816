"""``activity-logging status``: the pipeline's health in one pass (``status.gather_status``).

Exit 0 healthy, 1 unhealthy, 3 Redis or the database unreachable; a missing table is a
problem in the report (exit 1), a missing SQLite file one line on stderr (exit 1).
``status`` is imported here at once: it loads SQLAlchemy and redis only when it reads.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    database,
    database_options,
    positive_float,
    print_json,
    redis_options,
    require_store,
    verb,
)
from .config import DEFAULT_HEARTBEAT_TTL, resolve_redis_url, resolve_stream
from .status import DEFAULT_MAX_LAG, gather_status, render_status


def register(sub: Any) -> None:
    """Add ``status`` to the ``activity-logging`` parser."""
    p = sub.add_parser(
        "status", help="pipeline health: stream, workers, dead letters, lag (exit 1 if unhealthy)",
        description="Report the pipeline's health in one pass. Exit codes: 0 healthy, 1 unhealthy "
        "(no live worker, dead letters, records waiting longer than --max-lag), 3 unreachable.")
    database_options(p)
    redis_options(p)
    p.add_argument("--max-lag", type=positive_float, default=DEFAULT_MAX_LAG,
                   help="seconds a record may wait in the stream before unhealthy "
                   f"(default: {DEFAULT_MAX_LAG:g})")
    p.add_argument("--heartbeat-ttl", type=positive_float, default=DEFAULT_HEARTBEAT_TTL,
                   help="heartbeat age in seconds that still counts as live "
                   f"(default: {DEFAULT_HEARTBEAT_TTL:g})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)


@verb
async def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when healthy, 1 when not, 3 when Redis or the database is unreachable."""
    url, schema = database(args)
    require_store(url)
    status = await gather_status(
        url, resolve_redis_url(args.redis_url), schema=schema, stream=resolve_stream(args.stream),
        stream_shards=args.stream_shards,
        group=args.group, max_lag=args.max_lag, heartbeat_ttl=args.heartbeat_ttl,
    )
    if args.json:
        print_json(status.to_dict())
    else:
        print(render_status(status))
    return EXIT_OK if status.healthy else EXIT_FAILED
