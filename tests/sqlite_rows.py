"""Rows as the embedded SQLite store holds them, read with the stdlib ``sqlite3`` module.

Read raw, not through SQLAlchemy: its JSON type reads a JSON ``null`` and an SQL ``NULL``
alike, and the difference is what some tests check (``changes_sql_type``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import orjson

_JSON_COLUMNS = ("changes", "metadata")


def stored_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of ``activity_logs`` in the SQLite file ``path``, oldest first.

    JSON columns are decoded; ``changes_sql_type`` is SQLite's ``typeof(changes)`` (``"null"``
    for an SQL NULL, ``"text"`` for any JSON text, ``null`` included).
    """
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT *, typeof(changes) AS changes_sql_type FROM activity_logs ORDER BY timestamp, seq"
        ).fetchall()
    result = []
    for row in rows:
        item = dict(row)
        for column in _JSON_COLUMNS:
            if item[column] is not None:
                item[column] = orjson.loads(item[column])
        result.append(item)
    return result


class Store:
    """A direct-mode ``ActivityHandler`` on the SQLite file ``path``, and its rows."""

    def __init__(self, path: Path) -> None:
        from activity_logging import ActivityHandler

        self.path = path
        self.handler = ActivityHandler(database_url=f"sqlite:///{path}", direct=True)

    def rows(self) -> list[dict[str, Any]]:
        """Every row, after the handler has flushed (asserted)."""
        assert self.handler.flush(30), self.handler.stats()
        return stored_rows(self.path)
