"""db.py on the real PostgreSQL: ``init_db`` and what a database error means.

Only an undefined table (SQLSTATE 42P01, ``db.is_missing_table``) means "run init-db"; a
missing database, schema or column is reported with the server's message, in one line,
by every verb that reads.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from activity_logging.crud import activity_log_crud
from activity_logging.db import init_db, read_connection
from tests.cli_run import run
from tests.crud_rows import make_rows, seed

pytestmark = pytest.mark.integration

NO_SUCH_DB = "activity_logging_test_no_such_db"


def _missing_db(pg_url: str) -> str:
    return pg_url.rsplit("/", 1)[0] + "/" + NO_SUCH_DB


@pytest.mark.parametrize("verb", ["query", "export", "verify", "cleanup", "status"])
def test_missing_database_is_not_reported_as_a_missing_table(
        verb: str, pg_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, out, err = run([verb, "--database-url", _missing_db(pg_url)], capsys)
    assert code in (1, 3)
    assert "init-db" not in out + err
    assert NO_SUCH_DB in err + out
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", ["query", "status"])
def test_undefined_table_still_says_run_init_db(
        verb: str, pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, out, err = run([verb, "--database-url", pg_url, "--schema", pg_schema], capsys)
    assert code == 1
    assert "init-db" in out + err


def test_other_does_not_exist_errors_are_the_servers_message(
        pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A column missing from an old table says "does not exist" too; it is not "no table"."""
    async def setup() -> None:
        await seed(pg_url, [], schema=pg_schema)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f'ALTER TABLE "{pg_schema}".activity_logs DROP COLUMN description')
        finally:
            await conn.close()

    asyncio.run(setup())
    code, _, err = run(["query", "--database-url", pg_url, "--schema", pg_schema], capsys)
    assert code == 1
    assert "init-db" not in err
    assert "database error" in err and "description" in err


@pytest.mark.parametrize("extra", [[], ["--schema", "activity_logging_test_no_such_schema"]])
def test_init_db_expected_failures_are_one_line_exit_1(
        extra: list[str], pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = _missing_db(pg_url) if not extra else pg_url
    code, _, err = run(["init-db", "--database-url", url, *extra], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "database error" in err


def test_init_db_creates_a_table_that_takes_rows_and_is_idempotent(
        pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["init-db", "--database-url", pg_url, "--schema", pg_schema], capsys)
    assert code == 0

    async def stored_after_a_second_init() -> int:
        await seed(pg_url, make_rows(3), schema=pg_schema)
        await init_db(pg_url, schema=pg_schema)  # idempotent: the table and its rows stay
        async with read_connection(pg_url, schema=pg_schema) as conn:
            return await activity_log_crud.count(conn)

    assert asyncio.run(stored_after_a_second_init()) == 3
