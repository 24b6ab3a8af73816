"""Internal plumbing: the guard against feedback loops, a rate-limited reporter, retry backoff.

The pipeline must never log into itself: records from our own loggers and from the
libraries we drive (redis, sqlalchemy, asyncpg, urllib3) are refused by the handler.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Final

REFUSED_LOGGER_PREFIXES: Final = (
    "activity_logging", "redis", "sqlalchemy", "asyncpg", "urllib3", "aiosqlite",
)


def is_refused_logger(name: str) -> bool:
    """True when records from logger ``name`` must not enter the pipeline."""
    for prefix in REFUSED_LOGGER_PREFIXES:
        if name.startswith(prefix) and (len(name) == len(prefix) or name[len(prefix)] == "."):
            return True
    return False


class RateLimitedReporter:
    """Writes internal errors to stderr at most once per ``interval`` seconds per key.

    Thread-safe; never raises. Suppressed reports are counted and announced with the next one.
    """

    def __init__(self, interval: float = 30.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # a fork while another thread held it: start unlocked
            os.register_at_fork(after_in_child=self._reinit_lock)
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _reinit_lock(self) -> None:
        self._lock = threading.Lock()

    def report(self, key: str, message: str, exc: BaseException | None = None) -> bool:
        """Report ``message`` unless ``key`` was reported within the interval. Returns True if written."""
        try:
            now = time.monotonic()
            with self._lock:
                last = self._last.get(key)
                if last is not None and now - last < self._interval:
                    self._suppressed[key] = self._suppressed.get(key, 0) + 1
                    return False
                self._last[key] = now
                suppressed = self._suppressed.pop(key, 0)
            detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
            more = f" ({suppressed} similar suppressed)" if suppressed else ""
            sys.stderr.write(f"activity_logging: {message}{detail}{more}\n")
            return True
        except Exception:  # never raise from the error path itself
            return False


reporter: Final = RateLimitedReporter()


def as_text(value: Any) -> str:
    """``value`` as text: bytes decoded as UTF-8 (bad bytes replaced), anything else ``str()``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


class Backoff:
    """Exponential retry delays: ``initial``, doubled after each failure, capped at ``maximum``.

    The one retry policy of the library (the handler's reconnects, the worker's reads, inserts
    and acknowledgements), after ``logging.handlers.SocketHandler``: 1 s to 30 s, doubling, by default.
    Not thread-safe: each retrying loop owns one.
    """

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.delay = initial

    def next(self) -> float:
        """The delay to wait now; the following one grows by ``factor`` up to ``maximum``."""
        delay = self.delay
        self.delay = min(self.delay * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self.delay = self.initial


def database_error_line(exc: BaseException) -> str:
    """The first line of the driver's (the server's) own message for a database error."""
    orig = getattr(exc, "orig", None)
    message = str(orig) if orig is not None else str(exc)
    return message.splitlines()[0] if message.strip() else type(exc).__name__
