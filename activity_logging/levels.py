"""Severity names and ``logging`` levels, both ways (``"warning"`` ↔ ``logging.WARNING``).

Pure; imports only ``logging``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

SEVERITIES: Final = ("debug", "info", "warning", "error", "critical")
SEVERITY_TO_LEVEL: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def severity_to_level(severity: str | int | None, default: int = logging.INFO) -> int:
    """Map a severity name (``"warning"``) or a level number onto a ``logging`` level.

    Unknown names give ``default``; never raises.
    """
    if severity is None:
        return default
    if isinstance(severity, int) and not isinstance(severity, bool):
        return severity
    return SEVERITY_TO_LEVEL.get(str(severity).strip().lower(), default)


def level_to_severity(levelno: int) -> str:
    """Map a ``logging`` level onto the stored severity: the named level at or below it."""
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"
