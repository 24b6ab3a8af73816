"""Text search with a trigram index on the real PostgreSQL (``db.ensure_text_index``).

``init-db`` creates the ``pg_trgm`` extension (once per database, in ``public``: it is
never dropped here) and a GIN trigram index on ``description``; the text filter's
``ILIKE '%word%'`` uses it and returns what it returns without it, escaping included.
Without the privilege to create the extension, ``init-db`` still succeeds and says so in
one line: that case runs as a real role without ``CREATE`` on a throwaway database of its
own (created and dropped by the test).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql

from activity_logging.crud import ActivityFilter, activity_log_crud, build_select
from activity_logging.db import init_db, read_connection, text_index_name
from tests.cli_run import run
from tests.crud_rows import BASE, ids, make_rows, reference, seed, seed_sql

pytestmark = pytest.mark.integration

INDEX = text_index_name()

#: Descriptions whose matches tell a literal ``%`` or ``_`` from a wildcard.
LITERAL_ROWS = ("price 50% off", "price 50 off today", "price 500 off", "key a_b set",
                "key axb set", "key ab set", "path C:\\temp\\x", "path C:tempx", "it's a/b",
                "its a/b")
SEARCHES = ("needle", "NEEDLE", "50%", "a_b", "100%_done", "hay 100", "%", "_", "ab",
            "C:\\temp", "\\", "it's", "'", "a/b", "/", "no such word")


def _with_descriptions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row, text in zip(rows, LITERAL_ROWS, strict=False):
        row["description"] = text
    return rows


async def _index_def(conn: asyncpg.Connection, schema: str, name: str = INDEX) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2", schema, name)
    return found


async def _plan(conn: asyncpg.Connection, flt: ActivityFilter, *, limit: int = 101) -> str:
    """The plan of the query the text filter builds (``crud.build_select``), as asyncpg runs it."""
    compiled = build_select(flt, limit=limit).compile(
        dialect=postgresql.asyncpg.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args = [params[name] for name in compiled.positiontup or ()]
    rows = await conn.fetch("EXPLAIN " + str(compiled), *args)
    return "\n".join(r[0] for r in rows)


async def _search(url: str, schema: str, text: str) -> list[uuid.UUID]:
    async with read_connection(url, schema=schema) as conn:
        return ids((await activity_log_crud.get_page(
            conn, ActivityFilter.build(text=text), limit=500)).items)


def test_init_db_creates_the_trigram_index_on_description(pg_url: str, pg_schema: str) -> None:
    async def check() -> str | None:
        assert await init_db(pg_url, schema=pg_schema) is None
        conn = await asyncpg.connect(pg_url)
        try:
            return await _index_def(conn, pg_schema)
        finally:
            await conn.close()

    indexdef = asyncio.run(check())
    assert indexdef is not None
    assert "USING gin" in indexdef and "gin_trgm_ops" in indexdef and "description" in indexdef


def test_init_db_adds_the_index_to_an_existing_table_and_keeps_its_rows(
        pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The migration path: a table made before the index existed gets it from init-db."""
    async def make_old_table() -> None:
        await seed(pg_url, make_rows(30), schema=pg_schema)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f'DROP INDEX "{pg_schema}"."{INDEX}"')
            assert await _index_def(conn, pg_schema) is None
        finally:
            await conn.close()

    async def after() -> tuple[str | None, int]:
        conn = await asyncpg.connect(pg_url)
        try:
            indexdef = await _index_def(conn, pg_schema)
        finally:
            await conn.close()
        async with read_connection(pg_url, schema=pg_schema) as rc:
            return indexdef, await activity_log_crud.count(rc)

    asyncio.run(make_old_table())
    for _ in range(2):  # idempotent
        code, _, err = run(["init-db", "--database-url", pg_url, "--schema", pg_schema], capsys)
        assert code == 0
        assert err == ""
    indexdef, count = asyncio.run(after())
    assert indexdef is not None and "gin_trgm_ops" in indexdef
    assert count == 30


def test_partitioned_table_has_the_index_on_the_parent_and_every_partition(
        pg_url: str, pg_schema: str) -> None:
    async def check() -> tuple[str | None, list[str], list[str]]:
        assert await init_db(pg_url, schema=pg_schema, partitioned=True, months_ahead=2) is None
        conn = await asyncpg.connect(pg_url)
        try:
            parent = await _index_def(conn, pg_schema)
            partitions = [r["relname"] for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = $1::regclass", f'"{pg_schema}".activity_logs')]
            with_index = [r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_indexes WHERE schemaname = $1 "
                "AND indexdef LIKE '%gin_trgm_ops%' AND tablename <> 'activity_logs'", pg_schema)]
            return parent, sorted(partitions), sorted(with_index)
        finally:
            await conn.close()

    parent, partitions, with_index = asyncio.run(check())
    assert parent is not None
    assert len(partitions) == 3
    assert with_index == partitions


def test_the_text_filter_query_uses_the_trigram_index(pg_url: str, pg_schema: str) -> None:
    """A rare word over the whole table, no time window: the planner picks the GIN index."""
    async def plans() -> tuple[str, str]:
        await init_db(pg_url, schema=pg_schema)
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
        try:
            await seed_sql(conn, 20_000, step=timedelta(seconds=30))
            await conn.execute("UPDATE activity_logs SET description = description || "
                               "' chargeback 50% a_b' WHERE seq % 5000 = 7")
            await conn.execute("ANALYZE activity_logs")
            natural = await _plan(conn, ActivityFilter.build(text="chargeback"))
            await conn.execute("SET enable_seqscan = off")
            escaped = await _plan(conn, ActivityFilter.build(text="back 50%"))
            return natural, escaped
        finally:
            await conn.close()

    natural, escaped = asyncio.run(plans())
    assert f"Bitmap Index Scan on {INDEX}" in natural, natural
    assert f"Bitmap Index Scan on {INDEX}" in escaped, escaped


def test_results_are_the_same_with_and_without_the_index_escaping_included(
        pg_url: str, pg_schema: str) -> None:
    rows = _with_descriptions(make_rows(120, step=timedelta(minutes=3)))

    async def searches() -> tuple[dict[str, list[uuid.UUID]], dict[str, list[uuid.UUID]]]:
        await seed(pg_url, rows, schema=pg_schema)
        with_index: dict[str, list[uuid.UUID]] = {}
        for text in SEARCHES:
            with_index[text] = await _search_forcing_index(pg_url, pg_schema, text)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f'DROP INDEX "{pg_schema}"."{INDEX}"')
        finally:
            await conn.close()
        without = {text: await _search(pg_url, pg_schema, text) for text in SEARCHES}
        return with_index, without

    with_index, without = asyncio.run(searches())
    for text in SEARCHES:
        assert with_index[text] == without[text], text
        assert without[text] == ids(reference(rows, text=text)), text
    assert len(with_index["50%"]) == 1  # "price 50% off" only: % is literal
    assert len(with_index["a_b"]) == 1  # "key a_b set", not "key axb set": _ is literal
    assert len(with_index["C:\\temp"]) == 1 and len(with_index["it's"]) == 1
    assert len(with_index["a/b"]) == 2  # the escape character itself is literal too
    assert with_index["needle"] and with_index["needle"] == with_index["NEEDLE"]


async def _search_forcing_index(url: str, schema: str, text: str) -> list[uuid.UUID]:
    """The text filter's rows, read with sequential scans off (so the index is used)."""
    from sqlalchemy import text as sql_text

    async with read_connection(url, schema=schema) as conn:
        await conn.execute(sql_text("SET LOCAL enable_seqscan = off"))
        await conn.execute(sql_text("SET LOCAL enable_indexscan = off"))
        return ids((await activity_log_crud.get_page(
            conn, ActivityFilter.build(text=text), limit=500)).items)


# --- without the privilege to create the extension ----------------------------------------------


@pytest.fixture
def unprivileged(pg_url: str) -> Iterator[tuple[str, str]]:
    """A throwaway database without pg_trgm and a login role that owns a schema in it but has no
    ``CREATE`` on the database (so cannot create a trusted extension): (its URL, the schema).
    Both are dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    database, role, schema = f"al_test_trgm_{suffix}", f"al_test_role_{suffix}", "app"
    base = pg_url.rsplit("/", 1)[0]

    async def setup() -> None:
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'CREATE ROLE "{role}" LOGIN')
            await admin.execute(f'CREATE DATABASE "{database}"')
            await admin.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC')
        finally:
            await admin.close()
        conn = await asyncpg.connect(f"{base}/{database}")
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
        finally:
            await conn.close()

    async def teardown() -> None:
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()

    asyncio.run(setup())
    try:
        user_url = base.replace("://postgres@", f"://{role}@", 1) + f"/{database}"
        assert role in user_url
        yield user_url, schema
    finally:
        asyncio.run(teardown())


def test_init_db_without_the_privilege_succeeds_and_says_text_search_has_no_index(
        unprivileged: tuple[str, str], pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url, schema = unprivileged
    code, out, err = run(["init-db", "--database-url", url, "--schema", schema], capsys)
    assert code == 0
    assert "activity_logs ready" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "text search has no index" in lines[0]
    assert "CREATE EXTENSION pg_trgm" in lines[0] and "init-db again" in lines[0]

    async def after_first() -> tuple[str | None, list[uuid.UUID]]:
        await seed(url, _with_descriptions(make_rows(10)), schema=schema)
        conn = await asyncpg.connect(url)
        try:
            indexdef = await _index_def(conn, schema)
        finally:
            await conn.close()
        return indexdef, await _search(url, schema, "50%")

    indexdef, found = asyncio.run(after_first())
    assert indexdef is None
    assert len(found) == 1  # text search works, without an index

    async def superuser_creates_the_extension() -> None:
        conn = await asyncpg.connect(pg_url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1])
        try:
            await conn.execute("CREATE EXTENSION pg_trgm")
        finally:
            await conn.close()

    asyncio.run(superuser_creates_the_extension())
    code, _, err = run(["init-db", "--database-url", url, "--schema", schema], capsys)
    assert code == 0 and err == ""

    async def index_now() -> str | None:
        conn = await asyncpg.connect(url)
        try:
            return await _index_def(conn, schema)
        finally:
            await conn.close()

    assert asyncio.run(index_now()) is not None


def test_a_time_window_and_the_text_filter_still_agree_with_the_reference(
        pg_url: str, pg_schema: str) -> None:
    rows = make_rows(90, step=timedelta(minutes=5))
    start, end = BASE + timedelta(hours=1), BASE + timedelta(hours=5)

    async def found() -> list[uuid.UUID]:
        await seed(pg_url, rows, schema=pg_schema)
        async with read_connection(pg_url, schema=pg_schema) as conn:
            return ids((await activity_log_crud.get_page(
                conn, ActivityFilter.build(start=start, end=end, text="needle"), limit=500)).items)

    assert asyncio.run(found()) == ids(reference(rows, start=start, end=end, text="needle"))
