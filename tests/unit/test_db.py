"""db.py without a server: partition arithmetic, error classification, SQLite table creation."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activity_logging import db, record, store_pg
from activity_logging.cli import main
from activity_logging.exceptions import ConfigurationError


def test_partition_name_is_table_year_month() -> None:
    assert db.partition_name("activity_logs", 2026, 3) == "activity_logs_p202603"


def test_month_bounds_wrap_the_year_in_utc() -> None:
    assert db.month_bounds(2026, 12) == (datetime(2026, 12, 1, tzinfo=UTC),
                                         datetime(2027, 1, 1, tzinfo=UTC))


def test_months_from_counts_ahead_from_the_utc_month() -> None:
    # 23:30 on 31 Oct at UTC-2 is already November in UTC.
    now = datetime(2026, 10, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert db.months_from(now, 3) == [(2026, 11), (2026, 12), (2027, 1), (2027, 2)]


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 11, 1),
                    timezones=st.just(UTC)), st.integers(min_value=0, max_value=24))
def test_months_ahead_are_contiguous_and_cover_now(now: datetime, ahead: int) -> None:
    months = db.months_from(now, ahead)
    assert len(months) == ahead + 1
    start, _ = db.month_bounds(*months[0])
    assert start <= now
    for first, second in pairwise(months):
        assert db.month_bounds(*first)[1] == db.month_bounds(*second)[0]


def test_data_errors_are_told_from_database_errors() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert store_pg.is_data_error(PgError("22P02"))  # invalid text representation
    assert store_pg.is_data_error(PgError("23502"))  # not null violation
    assert store_pg.is_data_error(OverflowError("value out of int64 range"))  # asyncpg, client side
    assert not store_pg.is_data_error(PgError("57P01"))  # admin shutdown: retry later
    assert not store_pg.is_data_error(PgError("42P01"))  # missing table: not the record's fault
    assert not store_pg.is_data_error(ConnectionResetError())


def test_row_tuple_follows_activity_columns() -> None:
    rec = logging.LogRecord("a", logging.INFO, "p", 1, "m", None, None)
    row = record.activity_from_record(rec)
    assert store_pg.row_tuple(row) == tuple(row[c] for c in record.ACTIVITY_COLUMNS)


def test_binary_codecs_round_trip() -> None:
    assert store_pg._inet_decode(store_pg._inet_encode("192.0.2.1")) == "192.0.2.1"
    assert store_pg._inet_decode(store_pg._inet_encode("2001:db8::1")) == "2001:db8::1"
    assert store_pg._jsonb_decode(store_pg._jsonb_encode({"a": [1, None]})) == {"a": [1, None]}


def test_postgres_store_refuses_a_sqlite_url_at_construction() -> None:
    with pytest.raises(ConfigurationError):
        store_pg.PostgresStore("sqlite:///x.db")


@pytest.mark.anyio
async def test_init_db_on_sqlite_is_idempotent(tmp_path: object) -> None:
    path = f"{tmp_path}/a.db"
    await db.init_db(f"sqlite:///{path}")
    await db.init_db(f"sqlite:///{path}")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert tables == ["activity_logs"]
    assert {"ix_activity_logs_timestamp", "ix_activity_logs_request_id"} <= indexes


@pytest.mark.anyio
async def test_partitioned_sqlite_is_refused(tmp_path: object) -> None:
    with pytest.raises(ConfigurationError):
        await db.init_db(f"sqlite:///{tmp_path}/b.db", partitioned=True)


def test_cli_init_db_on_sqlite(tmp_path: object) -> None:
    path = f"{tmp_path}/c.db"
    assert main(["init-db", "--database-url", f"sqlite:///{path}"]) == 0
    assert main(["init-db", "--database-url", f"sqlite:///{path}"]) == 0
    assert main(["init-db", "--database-url", "mysql://x/y"]) == 2


def test_partitioned_model_keys_on_id_and_timestamp() -> None:
    from sqlalchemy import MetaData
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    table = db.make_partitioned_table(MetaData())
    assert [c.name for c in table.primary_key.columns] == ["id", "timestamp"]
    ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
    assert 'PARTITION BY RANGE ("timestamp")' in ddl
    assert len(table.indexes) == 5
