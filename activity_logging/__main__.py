"""``python -m activity_logging`` (and the ``activity-logging`` script) run the command line."""

import sys

from ._startup import hold_stop_signals_for_worker


def run() -> int:
    """The console entry point: hold a worker's stop signals first, then run the CLI."""
    hold_stop_signals_for_worker(sys.argv)
    from .cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
