"""store.store_rows: the one write path's isolation of refused rows, by bisection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activity_logging.store import Store, store_rows


class CountingStore:
    """Keeps rows by id; refuses a batch holding any row marked bad (as a data error)."""

    def __init__(self, transient: BaseException | None = None) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.calls = 0
        self.transient = transient

    async def connect(self) -> None:
        pass

    async def insert_activities(self, rows: Sequence[dict[str, Any]]) -> int:
        self.calls += 1
        if self.transient is not None:
            raise self.transient
        if any(r["bad"] for r in rows):
            raise ValueError("refused")
        new = [r for r in rows if r["id"] not in self.rows]
        self.rows.update((r["id"], r) for r in new)
        return len(new)

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, ValueError)

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]:
        return []

    async def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _rows(n: int, bad: set[int]) -> list[dict[str, Any]]:
    return [{"id": i, "bad": i in bad} for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=300).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(0, n - 1)), max_size=min(n, 8)))))
def test_every_good_row_is_stored_and_every_bad_one_reported(case: tuple[int, set[int]]) -> None:
    n, bad = case
    bad = {i for i in bad if i < n}
    store = CountingStore()
    result = asyncio.run(store_rows(store, _rows(n, bad), attempts=2, pause=0))
    assert sorted(store.rows) == [i for i in range(n) if i not in bad]
    assert sorted(r.index for r in result.rejected) == sorted(bad)
    assert all(r.attempts == 2 and isinstance(r.error, ValueError) for r in result.rejected)
    # ledger: offered = inserted + duplicates + rejected
    assert result.inserted + result.duplicates + len(result.rejected) == n
    # bisection, not row by row: about 2·k·log2(n) inserts for k bad rows
    if bad:
        assert store.calls <= 2 * len(bad) * (max(n, 2).bit_length() + 1) + len(bad) + 1


def test_rows_already_stored_count_as_duplicates() -> None:
    store = CountingStore()
    asyncio.run(store_rows(store, _rows(10, set())))
    again = asyncio.run(store_rows(store, _rows(15, set())))
    assert (again.inserted, again.duplicates, again.rejected) == (5, 10, [])


def test_a_database_error_is_not_mistaken_for_a_bad_row() -> None:
    store = CountingStore(transient=ConnectionResetError("server closed the connection"))
    with pytest.raises(ConnectionResetError):
        asyncio.run(store_rows(store, _rows(8, {3})))
    assert store.calls == 1  # not split: the whole batch is retried later by the caller


def test_the_fake_is_a_store() -> None:
    store: Store = CountingStore()  # the protocol, checked by mypy
    assert store.is_data_error(ValueError())
