"""Times as people write them in filters: ISO 8601, or an age before now.

Shared by the CLI (``--since``, ``--until``) and the viewer's filter form. Pure; standard
library only, so ``activity-logging --help`` stays light.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from .exceptions import ConfigurationError

_RELATIVE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """A time as a filter takes it: ISO 8601 (``2026-03-01``, ``2026-03-01T12:00+01:00``; naive = UTC) or an
    age before now (``90s``, ``15m``, ``24h``, ``7d``, ``2w``). Raises ``ConfigurationError``,
    also for a time outside what ``datetime`` holds (``99999999999w``)."""
    match = _RELATIVE.match(text)
    try:
        if match:
            base = now or datetime.now(UTC)
            return base - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ConfigurationError(
                f"invalid time {text!r}: use ISO 8601 (2026-03-01, 2026-03-01T12:00Z) "
                "or an age (24h, 7d)"
            ) from None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ConfigurationError(
            f"time {text!r} is out of range (years 1 to 9999)") from None
