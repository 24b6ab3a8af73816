"""A ``store.Store`` in memory for unit tests: keeps rows by id, refuses the rows it is told to."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class FakeStore:
    """Stores rows by ``row["id"]``. A batch holding a row for which ``refuse(row)`` is true
    fails as a bad value would (``OverflowError``, a data error); with ``down`` set, every
    insert raises it instead (the database is away). ``calls`` counts inserts."""

    def __init__(self, refuse: Callable[[Mapping[str, Any]], bool] = lambda row: False,
                 down: BaseException | None = None) -> None:
        self.rows: dict[Any, Mapping[str, Any]] = {}
        self.calls = 0
        self.refuse = refuse
        self.down = down

    async def connect(self) -> None:
        pass

    async def insert_activities(self, rows: Sequence[Mapping[str, Any]]) -> int:
        self.calls += 1
        if self.down is not None:
            raise self.down
        if any(self.refuse(r) for r in rows):
            raise OverflowError("value out of int64 range")
        new = [r for r in rows if r["id"] not in self.rows]
        self.rows.update((r["id"], r) for r in new)
        return len(new)

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, OverflowError)

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]:
        return []

    async def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
