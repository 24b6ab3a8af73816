"""db.py without a server: SQLite table creation and engines, read connections, error
classification; and store_pg's pure parts (row tuples, codecs, data errors)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from activity_logging import db, rows, schema, store_pg, store_sqlite
from activity_logging.cli import main
from activity_logging.exceptions import ConfigurationError, StoreUnavailableError


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
    row = rows.activity_from_record(rec)
    assert store_pg.row_tuple(row) == tuple(row[c] for c in schema.COLUMNS)


def test_binary_codecs_round_trip() -> None:
    assert store_pg._inet_decode(store_pg._inet_encode("192.0.2.1")) == "192.0.2.1"
    assert store_pg._inet_decode(store_pg._inet_encode("2001:db8::1")) == "2001:db8::1"
    assert store_pg._jsonb_decode(store_pg._jsonb_encode({"a": [1, None]})) == {"a": [1, None]}


def test_postgres_store_refuses_a_sqlite_url_at_construction() -> None:
    with pytest.raises(ConfigurationError):
        store_pg.PostgresStore("sqlite:///x.db")


@pytest.mark.anyio
async def test_init_db_on_sqlite_is_idempotent(tmp_path: Path) -> None:
    path = f"{tmp_path}/a.db"
    await db.init_db(f"sqlite:///{path}")
    await db.init_db(f"sqlite:///{path}")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert len(tables) == len(set(tables))
    assert {"activity_logs", "activity_log_dead_letters"} <= set(tables)
    assert {"ix_activity_logs_timestamp", "ix_activity_logs_request_id"} <= indexes


@pytest.mark.anyio
async def test_partitioned_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        await db.init_db(f"sqlite:///{tmp_path}/b.db", partitioned=True)


def test_cli_init_db_on_sqlite(tmp_path: Path) -> None:
    path = f"{tmp_path}/c.db"
    assert main(["init-db", "--database-url", f"sqlite:///{path}"]) == 0
    assert main(["init-db", "--database-url", f"sqlite:///{path}"]) == 0
    assert main(["init-db", "--database-url", "mysql://x/y"]) == 2


@pytest.mark.anyio
async def test_init_db_on_sqlite_makes_the_table_the_sqlite_writer_defines(tmp_path: Path) -> None:
    """One SQLite DDL: init_db's table is SQLiteStore's, in WAL mode, as the writers want it."""
    made, written = tmp_path / "init.db", tmp_path / "store.db"
    await db.init_db(f"sqlite:///{made}")
    store = store_sqlite.SQLiteStore(f"sqlite:///{written}", create=True)
    store.connect_now()
    store.abort()

    def ddl(path: Path) -> list[tuple[str, str]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            # init_db adds the dead-letter table (dead_letters.py), which the writer never makes
            return sorted(conn.execute("SELECT name, sql FROM sqlite_master "
                                       "WHERE tbl_name != 'activity_log_dead_letters'"))

    assert ddl(made) == ddl(written)
    with contextlib.closing(sqlite3.connect(made)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.anyio
async def test_init_db_on_an_unopenable_sqlite_file_raises_oserror_with_sqlites_reason() -> None:
    with pytest.raises(OSError, match="unable to open database file") as caught:
        await db.init_db("sqlite:////nonexistent/dir/x.db")
    assert not isinstance(caught.value, StoreUnavailableError)


@pytest.mark.anyio
async def test_sqlite_engines_apply_the_writers_pragmas(tmp_path: Path) -> None:
    names = [p.split()[1].split("=")[0] for p in store_sqlite.SQLITE_PRAGMAS]
    with contextlib.closing(sqlite3.connect(tmp_path / "writer.db")) as raw:
        store_sqlite.apply_pragmas(raw)
        want = [raw.execute(f"PRAGMA {name}").fetchone()[0] for name in names]
    async with db.read_connection(f"sqlite:///{tmp_path / 'reader.db'}") as conn:
        got = [(await conn.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in names]
    assert got == want
    assert "wal" in got  # what makes readers and the writer not block each other


@pytest.mark.anyio
async def test_read_only_sqlite_engine_opens_a_file_in_rollback_journal_mode(
        tmp_path: Path) -> None:
    """A mode=ro connection cannot switch the journal to WAL: it reads the file as it is."""
    path = tmp_path / "journal.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    engine = db.create_async_engine_for(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "delete"
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_read_connection_to_a_closed_port_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match="cannot reach the database") as caught:
        async with db.read_connection("postgresql://u:secret@127.0.0.1:1/none"):
            pass
    assert "secret" not in str(caught.value)


@pytest.mark.anyio
async def test_read_connection_lets_the_callers_own_oserror_through(tmp_path: Path) -> None:
    """A failed write while exporting is the caller's error, never "unreachable"."""
    async def export_to_a_closed_pipe() -> None:
        async with db.read_connection(f"sqlite:///{tmp_path / 'r.db'}") as conn:
            await conn.execute(text("SELECT 1"))
            raise BrokenPipeError("reader went away")

    with pytest.raises(BrokenPipeError):
        await export_to_a_closed_pipe()


def test_missing_table_is_told_from_other_missing_things() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert db.is_missing_table(PgError(db.UNDEFINED_TABLE))
    assert db.is_missing_table(sqlite3.OperationalError("no such table: activity_logs"))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = PgError("42P01")
    assert db.is_missing_table(wrapped)
    assert not db.is_missing_table(PgError("3D000"))  # no such database
    assert not db.is_missing_table(PgError("3F000"))  # no such schema
    assert not db.is_missing_table(sqlite3.OperationalError("no such column: description"))
