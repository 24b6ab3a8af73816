"""The ``activity-logging`` command (also ``python -m activity_logging``).

This module only assembles the parser and maps errors to exit codes: each group of verbs
lives in its own module, which registers its subcommands and imports its heavy dependencies
lazily so ``--help`` stays fast (``cli_worker``: init-db, worker; ``cli_status``: status;
``cli_query``: query, export; ``cli_maintenance``: cleanup, vacuum, scheduler;
``cli_verify``: verify; ``cli_dead_letters``: dead-letters; ``cli_demo``: demo;
``cli_serve``: serve). What they share
(argument helpers, one-line errors, exit codes) is ``cli_common``, their text ``cli_render``;
verb modules import those two and never each other.

Exit codes: 0 success, 1 unhealthy / operation failed, 2 bad arguments, 3 a service
(Redis, the database) could not be reached, 4 the database refused this role (a missing
privilege, a refused login: ``PermissionDeniedError``), 141 (128 + SIGPIPE, what the shell reports for
a command killed by a closed pipe) when stdout's reader went away, as in
``activity-logging query --format jsonl | head -1``: that ends the command quietly, with
no traceback, stdout pointed at ``/dev/null`` so the interpreter's final flush cannot fail.
``worker`` exits 0 on a warm stop (the first SIGTERM/SIGINT) and 128 + the signal (143,
130) on a cold stop (a second signal), as a shell reports a command ended by that signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final

from . import (
    __version__,
    cli_dead_letters,
    cli_demo,
    cli_maintenance,
    cli_query,
    cli_serve,
    cli_status,
    cli_verify,
    cli_worker,
)
from .cli_common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_PERMISSION_DENIED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .exceptions import ConfigurationError, PermissionDeniedError, StoreUnavailableError

#: The verb modules, in the order their verbs are listed in ``--help``.
VERB_MODULES: Final = (cli_worker, cli_status, cli_query, cli_maintenance, cli_verify,
                       cli_dead_letters, cli_demo, cli_serve)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every verb registered."""
    parser = argparse.ArgumentParser(
        prog="activity-logging",
        description="Audit trail on standard logging: handler -> Redis Stream -> worker -> PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of this command's own log output on stderr (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in VERB_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except ConfigurationError as exc:
        print(f"activity-logging {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailableError as exc:
        print(f"activity-logging {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except PermissionDeniedError as exc:
        print(f"activity-logging {args.command}: {exc}", file=sys.stderr)
        return EXIT_PERMISSION_DENIED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null: what is left in its buffer goes nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
