"""``activity-logging demo``: log a few hundred call-center activities and show what landed.

Runs on the embedded default (SQLite, no servers): the records go through the real
``ActivityHandler``, exactly as an application's would. The handler never raises; a store
that cannot be read back (an SQLite file that cannot be opened) is one line on stderr, exit 1.
The handler, the store and SQLAlchemy are imported inside the verb, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from typing import Any

from ._internal import database_error_line
from .cli_common import EXIT_FAILED, EXIT_OK
from .config import DEFAULT_SQLITE_URL, ENV_DATABASE_URL, resolve_database_url
from .context import activity_context
from .exceptions import ActivityLoggingError, ConfigurationError
from .urls import is_sqlite, shown_url

_AGENTS = ["agent-ana", "agent-ben", "agent-chen", "agent-dara", "agent-eli"]
_STATUSES = ["available", "on_call", "wrap_up", "break", "offline"]


def register(sub: Any) -> None:
    """Add the ``demo`` verb."""
    parser = sub.add_parser(
        "demo", help="log sample call-center activities to the embedded store and show them",
        description="Log sample call-center activities through ActivityHandler (embedded SQLite "
        "by default, no servers needed), then print counts and the latest rows.",
    )
    parser.add_argument("--database-url", default=None,
                        help=f"store to write to (default: {ENV_DATABASE_URL}, else "
                        f"{DEFAULT_SQLITE_URL})")
    parser.add_argument("--count", type=int, default=300,
                        help="calls to simulate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable output")
    parser.add_argument("--latest", type=int, default=10,
                        help="latest rows to print (default: %(default)s)")
    parser.set_defaults(func=run)


def _simulate(log: logging.Logger, count: int, rng: random.Random) -> int:
    """Sample data only: ``random`` is fine here (S311 is about secrets)."""
    logged = 0
    for n in range(count):
        agent = rng.choice(_AGENTS)
        call_id = f"call-{n:05d}"
        with activity_context(request_id=f"req-{rng.getrandbits(48):012x}",
                              ip_address=f"10.0.{rng.randint(0, 9)}.{rng.randint(1, 254)}",
                              user_agent="callcenter-ui/2.3", actor_type="agent", actor_id=agent):
            log.info("call_created", extra={"target_type": "call", "target_id": call_id,
                                            "description": f"Inbound call assigned to {agent}",
                                            "changes": {"status": {"old": None, "new": "ringing"}},
                                            "queue": rng.choice(["sales", "support", "billing"])})
            outcome = rng.random()
            if outcome < 0.85:
                log.info("call_ended", extra={"target_type": "call", "target_id": call_id,
                                              "description": "Call ended by agent",
                                              "duration_s": rng.randint(20, 900)})
            elif outcome < 0.97:
                log.warning("call_updated", extra={
                    "target_type": "call", "target_id": call_id,
                    "description": "Call dropped, customer will be called back",
                    "changes": {"status": {"old": "ringing", "new": "dropped"}},
                })
            else:
                log.error("system_error", extra={"target_type": "call", "target_id": call_id,
                                                 "description": "Recording upload failed"})
            logged += 2
            if rng.random() < 0.15:
                old, new = rng.sample(_STATUSES, 2)
                log.info("agent_status_changed", extra={"target_type": "agent", "target_id": agent,
                                                        "description": f"Status changed from {old} to {new}",
                                                        "changes": {"status": {"old": old, "new": new}}})
                logged += 1
    return logged


def _cannot_read(url: str, exc: BaseException) -> int:
    print(f"activity-logging demo: cannot open {url}: {database_error_line(exc)}", file=sys.stderr)
    return EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    """Log the sample activities, flush, print a summary. Exit 0 when everything landed."""
    from .handler import ActivityHandler
    from .store_sqlite import SQLiteStore

    url = resolve_database_url(args.database_url, default=DEFAULT_SQLITE_URL) or DEFAULT_SQLITE_URL
    if not is_sqlite(url):
        raise ConfigurationError(f"demo writes to the embedded SQLite store; got {shown_url(url)}")
    if args.count < 1:
        raise ConfigurationError(f"--count must be >= 1, got {args.count}")
    store = SQLiteStore(url, create=True)
    try:
        store.connect_now()  # fail fast: the handler would drop every record, after its flush timeout
    except ActivityLoggingError as exc:
        return _cannot_read(url, exc)
    finally:
        store.abort()
    handler = ActivityHandler(database_url=url, direct=True)
    log = logging.getLogger("activity.demo")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        logged = _simulate(log, args.count, random.Random(args.seed))  # noqa: S311 - sample data, not secrets
        handler.flush(30.0)
        stats = handler.stats()
    finally:
        log.removeHandler(handler)
        handler.close()
    try:
        summary = asyncio.run(_summary(url, args.latest))
    except Exception as exc:
        return _cannot_read(url, exc)
    print(f"Logged {logged} activities through ActivityHandler -> {url}")
    print(f"Handler: sent={stats['sent']} dropped={stats['dropped_queue_full']} lost={stats['lost']}")
    _print_summary(*summary)
    return EXIT_OK if stats["sent"] == logged else EXIT_FAILED


def _print_summary(total: int, by_type: list[Any], by_sev: list[Any], latest: list[Any]) -> None:
    print(f"Rows now in activity_logs: {total}\n")
    print("By activity type:")
    for name, n in by_type:
        print(f"  {name:<24}{n:>7}")
    print("By severity:")
    for name, n in by_sev:
        print(f"  {name:<24}{n:>7}")
    print(f"\nLatest {len(latest)}:")
    print(f"  {'timestamp (UTC)':<25}{'severity':<9}{'activity':<22}{'actor':<12}{'target':<12}"
          f"{'ip':<13}description")
    for ts, sev, kind, actor, target, ip, desc in latest:
        print(f"  {ts.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]:<25}{sev:<9}{kind:<22}{actor or '':<12}"
              f"{target or '':<12}{ip or '':<13}{(desc or '')[:50]}")


async def _summary(url: str, latest: int) -> tuple[int, list[Any], list[Any], list[Any]]:
    """Rows in all, per activity type, per severity, and the ``latest`` newest rows."""
    from sqlalchemy import func, select

    from .db import read_connection
    from .schema import activity_logs as table

    async with read_connection(url) as conn:
        total = int(await conn.scalar(select(func.count()).select_from(table)) or 0)
        by_type = (await conn.execute(select(table.c.activity_type, func.count()).group_by(
            table.c.activity_type).order_by(func.count().desc()))).all()
        by_sev = (await conn.execute(select(table.c.severity, func.count()).group_by(
            table.c.severity).order_by(func.count().desc()))).all()
        newest = (await conn.execute(select(
            table.c.timestamp, table.c.severity, table.c.activity_type, table.c.actor_id,
            table.c.target_id, table.c.ip_address, table.c.description,
        ).order_by(table.c.timestamp.desc(), table.c.id.desc()).limit(latest))).all()
    return total, list(by_type), list(by_sev), list(newest)
