"""``ActivityJsonFormatter``: the same activity as one JSON line, for people who want it on stdout.

Built on python-json-logger so it takes that library's options and works from dictConfig::

    "formatters": {"activity_json": {"()": "activity_logging.ActivityJsonFormatter"}}
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .rows import activity_from_record


class ActivityJsonFormatter(JsonFormatter):
    """Formats a record as the activity row ``ActivityHandler`` would store (one JSON object).

    Never raises for odd ``extra`` values: they are encoded as the handler encodes them.
    """

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        row = activity_from_record(record)
        row["id"] = str(row["id"])
        row["timestamp"] = row["timestamp"].isoformat()
        for key in ("producer_id", "seq"):
            row.pop(key, None)
        log_data.update(row)
        if message_dict:
            log_data.update(message_dict)
