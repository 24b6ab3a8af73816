"""The ``serve`` verb of ``activity-logging``: the read-only audit viewer under uvicorn.

Access always takes a token. ``ACTIVITY_LOG_VIEWER_TOKEN`` supplies it (at least 16
characters); a request shows it as ``Authorization: Bearer <token>`` or as the password of
HTTP Basic (any user name), which is what a browser asks for. Without the variable, ``serve``
listens only on a loopback address, with a random token made for this run and printed on
stderr; asked for any other address (``0.0.0.0``, a LAN address, a host name) it refuses to
start (exit 2) and says why: the audit trail would be open to the network.

Pages read ``--read-database-url`` (a read replica; by default the database URL, see
``config.resolve_read_database_url``); the pipeline health at ``/metrics`` is the primary's
(``--database-url``). The announcement on stderr names the database the pages read.

Jinja2 and uvicorn (the ``viewer`` extra) are imported inside the verb so ``--help`` stays
fast. Exit codes as ``cli``: 1 when there is no database file or no table, 2 bad arguments,
3 the database is unreachable. SIGTERM/SIGINT stop it gracefully (requests in flight finish,
the pool is closed), then, as uvicorn does, the process ends by that signal (a shell reports
143 or 130) so process managers see why it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from typing import Any, Final

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    READ_URL_DEFAULT,
    read_database_option,
    report_database_error,
)
from .config import (
    DEFAULT_SQLITE_URL,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    ENV_SCHEMA,
    ENV_STREAM,
    resolve_database_url,
    resolve_read_database_url,
    resolve_redis_url,
    resolve_schema,
    resolve_stream,
)
from .exceptions import ConfigurationError
from .urls import redact_url

logger: Final = logging.getLogger("activity_logging.cli")

ENV_VIEWER_TOKEN: Final = "ACTIVITY_LOG_VIEWER_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
#: ``viewer.app.DEFAULT_PAGE_SIZE``, copied: the viewer needs the optional viewer extra, and
#: ``serve --help`` must work without it (a unit test checks that the two agree).
_PAGE_SIZE: Final = 50


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``activity-logging`` parser."""
    p = subparsers.add_parser(
        "serve", help="run the read-only audit viewer (web UI)",
        description="Serve the read-only audit viewer with uvicorn. Every request needs the token "
                    f"from {ENV_VIEWER_TOKEN} (Authorization: Bearer, or HTTP Basic with any "
                    "user name and the token as password). Without it, serve listens on "
                    "loopback only, with a one-run token printed on stderr.",
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default: %(default)s; anything but loopback "
                        f"needs {ENV_VIEWER_TOKEN})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port to listen on (default: %(default)s; 0 picks a free one)")
    p.add_argument("--database-url", default=None,
                   help=f"store of the pipeline: shown unless --read-database-url says "
                        f"otherwise, and the one /metrics checks (default: {ENV_DATABASE_URL}, "
                        f"else {DEFAULT_SQLITE_URL})")
    read_database_option(p, help_text="store to show, opened read-only, e.g. a read replica "
                         f"(default: {READ_URL_DEFAULT})")
    p.add_argument("--schema", default=None,
                   help=f"PostgreSQL schema holding the table (default: {ENV_SCHEMA})")
    p.add_argument("--root-path", default="",
                   help="path prefix the viewer is served under behind a proxy (e.g. /audit)")
    p.add_argument("--page-size", type=int, default=None,
                   help=f"rows per page (default: {_PAGE_SIZE})")
    p.add_argument("--redis-url", default=None,
                   help=f"Redis of the pipeline, for the health at /metrics (default: {ENV_REDIS_URL})")
    p.add_argument("--stream", default=None,
                   help=f"stream name, for the health at /metrics (default: {ENV_STREAM})")
    p.set_defaults(func=cmd_serve)


def _token(host: str) -> tuple[str, bool]:
    """The token requests must carry, and whether it was made for this run.

    Raises ``ConfigurationError`` when there is no token and ``host`` is not loopback.
    """
    from .viewer.security import is_loopback

    token = (os.environ.get(ENV_VIEWER_TOKEN) or "").strip()
    if token:
        return token, False
    if not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host!r} without {ENV_VIEWER_TOKEN}: anyone who can reach "
            "that address could read the whole audit trail. Set a token first, e.g.\n"
            f"    export {ENV_VIEWER_TOKEN}=$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')\n"
            f"or listen on a loopback address (--host {DEFAULT_HOST})."
        )
    return secrets.token_urlsafe(24), True


def _pipeline_metrics(database_url: str, args: argparse.Namespace) -> Any:
    """The pipeline health for Prometheus at ``/metrics``, when prometheus_client is installed."""
    try:
        from .metrics import pipeline_metrics_app
    except ImportError:  # the metrics extra is optional: the viewer works without it
        return None
    return pipeline_metrics_app(database_url, resolve_redis_url(args.redis_url),
                                schema=resolve_schema(args.schema), stream=resolve_stream(args.stream))


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: check the store, bind, announce the URL, serve until SIGTERM/SIGINT."""
    try:
        import jinja2  # noqa: F401 - only to fail early and clearly without the extra
        import uvicorn
    except ImportError as exc:
        raise ConfigurationError(
            f"serve needs the viewer extra ({exc.name} is missing): "
            "pip install 'activity_logging[viewer]'") from None
    from sqlalchemy.exc import DBAPIError

    from .urls import sqlite_file
    from .viewer import TokenAuthorizer, create_viewer_app

    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be from 0 to 65535, got {args.port}")
    token, generated = _token(args.host)
    authorizer = TokenAuthorizer(token)  # ConfigurationError for a short token
    url = resolve_database_url(args.database_url, default=DEFAULT_SQLITE_URL)
    assert url is not None  # a default was given
    read_url = resolve_read_database_url(args.read_database_url, args.database_url, default=url)
    assert read_url is not None
    path = sqlite_file(read_url)
    if path is not None and not path.exists():
        option = ("--read-database-url or ACTIVITY_LOG_READ_DATABASE_URL" if read_url != url
                  else "--database-url")
        print(f"activity-logging serve: no SQLite database at {path} (nothing has been logged "
              f"there yet; check {option})", file=sys.stderr)
        return EXIT_FAILED
    options: dict[str, Any] = {}
    if args.page_size is not None:
        options["page_size"] = args.page_size
    # The pipeline's health is the primary's: rows arriving there, not what a replica replayed.
    options["metrics_app"] = _pipeline_metrics(url, args)
    app = create_viewer_app(database_url=url, read_database_url=read_url,
                            schema=resolve_schema(args.schema), authorize=authorizer, **options)
    try:
        asyncio.run(_check_then_close(app))
    except DBAPIError as exc:
        return report_database_error("serve", exc)

    config = uvicorn.Config(
        app, host=args.host, port=args.port, root_path=args.root_path, log_config=None,
        server_header=False, lifespan="on",
    )
    sock = config.bind_socket()  # bound here, so port 0 is known before the announcement
    try:
        port = sock.getsockname()[1]
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        where = f"http://{shown_host}:{port}{args.root_path.rstrip('/')}/"
        print(f"activity-logging serve: {redact_url(read_url)} read-only at {where}",
              file=sys.stderr)
        if read_url != url:
            health = (f"; /metrics checks the pipeline on {redact_url(url)}"
                      if options["metrics_app"] is not None else "")
            print(f"activity-logging serve: pages read the replica, which shows rows once it has "
                  f"replayed them{health}", file=sys.stderr)
        if generated:
            print(f"activity-logging serve: no {ENV_VIEWER_TOKEN} set, so this run's token is "
                  f"{token}\n  sign in with any user name and that token as the password, or "
                  f"send 'Authorization: Bearer <token>'", file=sys.stderr)
        else:
            print(f"activity-logging serve: requests need the token from {ENV_VIEWER_TOKEN}",
                  file=sys.stderr)
        sys.stderr.flush()
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK  # uvicorn stopped without a signal (a signal ends the process by it)


async def _check_then_close(app: Any) -> None:
    """Fail before listening when every page would fail (no table, unreachable database)."""
    store = app.state.viewer_store
    try:
        await store.check()
    finally:
        await store.close()
