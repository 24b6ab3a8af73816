"""store.store_rows: the one write path's isolation of refused rows, by bisection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activity_logging.store import Store, store_rows
from tests.fake_store import FakeStore


def _rows(n: int, bad: set[int]) -> list[dict[str, Any]]:
    return [{"id": i, "bad": i in bad} for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=300).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(0, n - 1)), max_size=min(n, 8)))))
def test_every_good_row_is_stored_and_every_bad_one_reported(case: tuple[int, set[int]]) -> None:
    n, bad = case
    bad = {i for i in bad if i < n}
    store = FakeStore(refuse=lambda row: row["bad"])
    result = asyncio.run(store_rows(store, _rows(n, bad), attempts=2, pause=0))
    assert sorted(store.rows) == [i for i in range(n) if i not in bad]
    assert sorted(r.index for r in result.rejected) == sorted(bad)
    assert all(r.attempts == 2 and isinstance(r.error, OverflowError) for r in result.rejected)
    # ledger: offered = inserted + duplicates + rejected
    assert result.inserted + result.duplicates + len(result.rejected) == n
    # bisection, not row by row: about 2·k·log2(n) inserts for k bad rows
    if bad:
        assert store.calls <= 2 * len(bad) * (max(n, 2).bit_length() + 1) + len(bad) + 1


def test_rows_already_stored_count_as_duplicates() -> None:
    store = FakeStore()
    asyncio.run(store_rows(store, _rows(10, set())))
    again = asyncio.run(store_rows(store, _rows(15, set())))
    assert (again.inserted, again.duplicates, again.rejected) == (5, 10, [])


def test_a_database_error_is_not_mistaken_for_a_bad_row() -> None:
    store = FakeStore(down=ConnectionResetError("server closed the connection"))
    with pytest.raises(ConnectionResetError):
        asyncio.run(store_rows(store, _rows(8, {3})))
    assert store.calls == 1  # not split: the whole batch is retried later by the caller


def test_the_fake_is_a_store() -> None:
    store: Store = FakeStore()  # the protocol, checked by mypy
    assert store.is_data_error(OverflowError())


def test_this_librarys_own_errors_are_not_taken_for_bad_rows() -> None:
    """A missing table raises ConfigurationError, a ValueError: it must not get every row
    split off and refused one by one."""
    from activity_logging.exceptions import ConfigurationError
    from activity_logging.store_pg import is_data_error as pg_data_error
    from activity_logging.store_sqlite import is_data_error as sqlite_data_error

    missing = ConfigurationError("table 'activity_logs' does not exist: run init-db")
    assert not pg_data_error(missing)
    assert not sqlite_data_error(missing)
    assert pg_data_error(OverflowError()) and sqlite_data_error(ValueError())
