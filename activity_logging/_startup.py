"""Stop signals that arrive while the ``worker`` command is still starting up.

From the first moment of ``python -m activity_logging worker`` (or ``activity-logging
worker``) a SIGTERM/SIGINT is a warm stop, never the default kill: a supervisor that stops a
worker it has just started gets exit 0, not -15. The signals are held here, before the CLI
imports its modules, and handed to the worker once it exists. Other commands keep the
default behaviour. Standard library only: nothing may be slow to import here.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

#: Stop signals received before the worker could obey them, in order.
held: list[int] = []


def _hold(signum: int, _frame: FrameType | None) -> None:
    held.append(signum)


def hold_stop_signals_for_worker(argv: Sequence[str]) -> None:
    """Hold SIGTERM/SIGINT when ``argv`` runs the ``worker`` command; never raises."""
    if "worker" not in argv[1:]:
        return
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _hold)
    except ValueError:  # not the main thread: the command installs its own handlers later
        pass
