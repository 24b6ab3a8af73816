"""Drainer verbs of ``activity-logging``: ``init-db`` and ``worker``.

Heavy imports (SQLAlchemy, asyncpg, redis) happen inside the verbs so ``--help`` stays fast.
Bad arguments raise ``ConfigurationError`` (exit 2), an unreachable database
``StoreUnavailableError`` (exit 3); ``cli.main`` maps both. Other expected database failures
(no such database or schema, an SQLite file that cannot be opened) print one line, exit 1.
``worker`` exits 0 on a warm stop (the first SIGTERM/SIGINT) and ``128 + signal number``
on a cold stop (the second: 143 after SIGTERM, 130 after SIGINT), what a shell reports for
a command ended by that signal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from . import _startup
from .config import (
    DEFAULT_GROUP,
    DEFAULT_SQLITE_URL,
    resolve_database_url,
    resolve_redis_url,
    resolve_schema,
)
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .worker import ActivityWorker

logger: Final = logging.getLogger("activity_logging.cli")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
#: A cold stop exits with this plus the number of the signal that forced it.
EXIT_COLD_STOP_BASE: Final = 128
_STOP_SIGNALS: Final = _startup.STOP_SIGNALS
_METRICS_HOST: Final = "127.0.0.1"  # metrics.DEFAULT_METRICS_HOST, not imported: optional extra


def register(subparsers: Any) -> None:
    """Add ``init-db`` and ``worker`` to the ``activity-logging`` parser."""
    p = subparsers.add_parser(
        "init-db", help="create the activity_logs table and its indexes (idempotent)",
        description="Create the activity_logs table and its indexes if missing. Safe to re-run.",
    )
    p.add_argument("--database-url", default=None,
                   help=f"postgresql://, postgres://, postgresql+asyncpg:// or sqlite:/// "
                        f"(default: DATABASE_URL, else {DEFAULT_SQLITE_URL})")
    p.add_argument("--schema", default=None,
                   help="PostgreSQL schema to create the table in (default: ACTIVITY_LOG_SCHEMA)")
    p.add_argument("--partitioned", action="store_true",
                   help="PostgreSQL: partition by month on timestamp (primary key (id, timestamp))")
    p.add_argument("--months-ahead", type=int, default=3,
                   help="with --partitioned: months of partitions to create ahead (default: 3)")
    p.set_defaults(func=cmd_init_db)

    w = subparsers.add_parser(
        "worker", help="drain the Redis stream into PostgreSQL",
        description="Read activity records from the Redis stream through a consumer group and "
                    "store them in PostgreSQL. SIGTERM/SIGINT: warm stop, store the batch in hand "
                    "(at most --stop-timeout seconds, else leave it pending) and exit 0; a "
                    "second signal: cold stop, exit at once with 128 + the signal number "
                    "(unacknowledged entries stay pending).",
    )
    w.add_argument("--redis-url", default=None, help="Redis holding the stream (default: REDIS_URL)")
    w.add_argument("--database-url", default=None,
                   help="PostgreSQL URL (default: DATABASE_URL)")
    w.add_argument("--schema", default=None,
                   help="PostgreSQL schema holding the table (default: ACTIVITY_LOG_SCHEMA)")
    w.add_argument("--stream", default=None,
                   help="stream name (default: ACTIVITY_LOG_STREAM, else activity_log_stream)")
    w.add_argument("--group", default=DEFAULT_GROUP, help=f"consumer group (default: {DEFAULT_GROUP})")
    w.add_argument("--consumer", default=None,
                   help="this worker's name in the group (default: <hostname>-<pid>)")
    # Numeric defaults live in worker.py (not imported here: it pulls in SQLAlchemy/asyncpg);
    # an option left out is simply not passed.
    w.add_argument("--batch-size", type=int, default=None,
                   help="records per insert transaction (default: 10000)")
    w.add_argument("--max-wait", type=float, default=None,
                   help="seconds a read blocks waiting for new entries (default: 0.5)")
    w.add_argument("--claim-idle", type=float, default=None,
                   help="seconds before entries left pending by a silent consumer are claimed "
                        "(default: 60)")
    w.add_argument("--heartbeat-interval", type=float, default=None,
                   help="seconds between heartbeats (default: 5)")
    w.add_argument("--writers", type=int, default=None,
                   help="batches inserted at once, one PostgreSQL connection each (default: 1)")
    w.add_argument("--stop-timeout", type=float, default=None,
                   help="seconds a warm stop waits for the batch in hand to be stored before "
                        "leaving it pending (default: 1.5)")
    w.add_argument("--exit-when-idle", action="store_true",
                   help="exit 0 once the stream has nothing left to read (one-shot drain)")
    w.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port at /metrics (needs the metrics "
                        "extra: pip install 'activity_logging[metrics]'; 0 picks a free port)")
    w.add_argument("--metrics-host", default=_METRICS_HOST,
                   help=f"address the metrics server listens on (default: {_METRICS_HOST}; "
                        "0.0.0.0 for every interface)")
    w.set_defaults(func=cmd_worker)


def cmd_init_db(args: argparse.Namespace) -> int:
    """``init-db``: create the table (and partitions) idempotently."""
    from sqlalchemy.exc import DBAPIError

    from .cli_ops import database_error_line
    from .db import init_db
    from .urls import redact_url

    url = resolve_database_url(args.database_url, default=DEFAULT_SQLITE_URL)
    assert url is not None  # a default was given
    schema = resolve_schema(args.schema)
    if args.months_ahead < 0:
        raise ConfigurationError(f"--months-ahead must be >= 0, got {args.months_ahead}")
    try:
        asyncio.run(init_db(url, schema=schema, partitioned=args.partitioned,
                            months_ahead=args.months_ahead))
    except DBAPIError as exc:
        print(f"activity-logging init-db: database error at {redact_url(url)}: "
              f"{database_error_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"activity-logging init-db: cannot open {redact_url(url)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"activity_logs ready in {redact_url(url)}{f' schema {schema}' if schema else ''}"
          f"{' (partitioned by month)' if args.partitioned else ''}")
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
        from .worker import ActivityWorker, tune_gc_for_draining

        options: dict[str, Any] = {
            name: getattr(args, name)
            for name in ("batch_size", "max_wait", "claim_idle", "heartbeat_interval",
                         "writers", "stop_timeout")
            if getattr(args, name) is not None
        }
        redis_url = resolve_redis_url(args.redis_url)
        worker = ActivityWorker(
            redis_url, resolve_database_url(args.database_url), stream=args.stream,
            group=args.group, consumer=args.consumer, schema=args.schema, **options,
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
