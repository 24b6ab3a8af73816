"""partitions.py without a server: names, month arithmetic, the partitioned table model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import MetaData
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from activity_logging import partitions
from activity_logging.schema import COLUMNS, activity_logs


def test_partition_name_is_table_year_month() -> None:
    assert partitions.partition_name("activity_logs", 2026, 3) == "activity_logs_p202603"


@given(st.integers(min_value=1, max_value=9999), st.integers(min_value=1, max_value=12))
def test_partition_month_reads_back_what_partition_name_writes(year: int, month: int) -> None:
    name = partitions.partition_name("activity_logs", year, month)
    assert partitions.partition_month("activity_logs", name) == (year, month)


def test_partition_month_ignores_names_it_did_not_make() -> None:
    for name in ("activity_logs_p2026", "activity_logs_p202613", "activity_logs_old_p202601",
                 "other_p202601", "activity_logs_p202601_archive"):
        assert partitions.partition_month("activity_logs", name) is None


def test_month_bounds_wrap_the_year_in_utc() -> None:
    assert partitions.month_bounds(2026, 12) == (datetime(2026, 12, 1, tzinfo=UTC),
                                                 datetime(2027, 1, 1, tzinfo=UTC))


def test_months_from_counts_ahead_from_the_utc_month() -> None:
    # 23:30 on 31 Oct at UTC-2 is already November in UTC.
    now = datetime(2026, 10, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert partitions.months_from(now, 3) == [(2026, 11), (2026, 12), (2027, 1), (2027, 2)]


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 11, 1),
                    timezones=st.just(UTC)), st.integers(min_value=0, max_value=24))
def test_months_ahead_are_contiguous_and_cover_now(now: datetime, ahead: int) -> None:
    months = partitions.months_from(now, ahead)
    assert len(months) == ahead + 1
    start, _ = partitions.month_bounds(*months[0])
    assert start <= now
    for first, second in pairwise(months):
        assert partitions.month_bounds(*first)[1] == partitions.month_bounds(*second)[0]


def test_partitioned_model_keys_on_id_and_timestamp_with_the_plain_tables_columns() -> None:
    table = partitions.make_partitioned_table(MetaData())
    assert [c.name for c in table.primary_key.columns] == ["id", "timestamp"]
    assert tuple(c.name for c in table.columns) == COLUMNS
    ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
    assert 'PARTITION BY RANGE ("timestamp")' in ddl
    assert {i.name for i in table.indexes} == {i.name for i in activity_logs.indexes}
