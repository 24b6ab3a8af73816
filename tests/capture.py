"""A list-capturing handler for tests that look at records, not at a store."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from starlette.exceptions import StarletteDeprecationWarning

from activity_logging.context import ContextFilter
from activity_logging.rows import activity_from_record

with warnings.catch_warnings():
    # Starlette 1.x wants httpx2 for its TestClient; httpx is what this project ships with.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

__all__ = ["Capture", "TestClient"]


class Capture(logging.Handler):
    """Keeps records; the ContextFilter runs in the caller's thread, as on ActivityHandler."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def rows(self) -> list[dict[str, Any]]:
        return [activity_from_record(r) for r in self.records]
