"""The daily rollup on the real PostgreSQL: it agrees with a full count of the rows.

After inserts, late records, re-delivery (idempotent), failed batches, retention on plain
and partitioned tables (batched deletes, dropped and detached partitions), a rebuild, a
writer role without any privilege on the rollup, concurrent writers, UPDATE and TRUNCATE.
Each test runs in a private schema (``pg_schema``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from activity_logging.crud import activity_log_crud
from activity_logging.db import create_async_engine_for, init_db
from activity_logging.retention import cleanup
from activity_logging.rollup import (
    DAY_EXPR,
    rebuild_rollup,
    rollup_present,
    rollup_table_name,
    rollup_trigger_names,
)
from activity_logging.schema import COLUMNS
from activity_logging.store_pg import PostgresStore
from tests.cli_run import run
from tests.crud_rows import make_rows, seed

pytestmark = pytest.mark.integration

Key = tuple[date, str, str, str | None]

NOW = datetime(2026, 4, 15, 12, tzinfo=UTC)


@asynccontextmanager
async def connect(pg_url: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


async def full_count(conn: asyncpg.Connection, table: str = "activity_logs") -> dict[Key, int]:
    """The reference: a GROUP BY over every row of the table."""
    rows = await conn.fetch(
        f"SELECT {DAY_EXPR} AS day, activity_type, severity, actor_type, count(*) AS n "
        f'FROM "{table}" GROUP BY 1, 2, 3, 4')
    return {(r["day"], r["activity_type"], r["severity"], r["actor_type"]): r["n"] for r in rows}


async def rollup(conn: asyncpg.Connection, table: str = "activity_logs") -> dict[Key, int]:
    rows = await conn.fetch(f'SELECT * FROM "{rollup_table_name(table)}"')
    found = {(r["day"], r["activity_type"], r["severity"], r["actor_type"]): r["count"]
             for r in rows}
    assert len(found) == len(rows), "one rollup row per key"
    return found


async def assert_agrees(pg_url: str, schema: str, table: str = "activity_logs") -> dict[Key, int]:
    async with connect(pg_url, schema) as conn:
        want = await full_count(conn, table)
        assert await rollup(conn, table) == want
    return want


async def insert(pg_url: str, schema: str, rows: list[dict[str, Any]], *,
                 table: str = "activity_logs") -> int:
    store = PostgresStore(pg_url, schema=schema, table=table)
    try:
        return await store.insert_activities(rows)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_inserts_are_counted_per_day_type_severity_and_actor_type(
    pg_url: str, pg_schema: str
) -> None:
    rows = make_rows(2_000, start=NOW - timedelta(days=20), step=timedelta(minutes=14))
    await seed(pg_url, rows, schema=pg_schema)
    want = await assert_agrees(pg_url, pg_schema)
    assert sum(want.values()) == 2_000
    assert any(key[3] is None for key in want), "rows without actor_type are counted too"
    assert len({key[0] for key in want}) == 20


@pytest.mark.anyio
async def test_a_late_record_adds_to_its_own_day(pg_url: str, pg_schema: str) -> None:
    await seed(pg_url, make_rows(300, start=NOW - timedelta(hours=10), step=timedelta(minutes=2)),
               schema=pg_schema)
    before = await assert_agrees(pg_url, pg_schema)
    last_week = (NOW - timedelta(days=7)).date()
    assert not any(key[0] == last_week for key in before)
    late = make_rows(40, start=NOW - timedelta(days=7), step=timedelta(seconds=30))
    assert await insert(pg_url, pg_schema, late) == 40
    after = await assert_agrees(pg_url, pg_schema)
    assert sum(n for key, n in after.items() if key[0] == last_week) == 40


@pytest.mark.anyio
async def test_redelivered_rows_are_counted_once(pg_url: str, pg_schema: str) -> None:
    rows = make_rows(600, start=NOW - timedelta(days=3), step=timedelta(minutes=7))
    await seed(pg_url, rows[:400], schema=pg_schema)
    first = await assert_agrees(pg_url, pg_schema)
    assert await insert(pg_url, pg_schema, rows[:400]) == 0  # the same batch again
    assert await assert_agrees(pg_url, pg_schema) == first
    assert await insert(pg_url, pg_schema, rows[200:]) == 200  # half old, half new
    assert await insert(pg_url, pg_schema, rows) == 0
    want = await assert_agrees(pg_url, pg_schema)
    assert sum(want.values()) == 600


@pytest.mark.anyio
async def test_a_refused_batch_counts_nothing(pg_url: str, pg_schema: str) -> None:
    await seed(pg_url, make_rows(50, start=NOW), schema=pg_schema)
    before = await assert_agrees(pg_url, pg_schema)
    bad = make_rows(30, start=NOW - timedelta(days=2))
    bad[17]["severity"] = None  # NOT NULL: the whole COPY is rolled back
    with pytest.raises(asyncpg.NotNullViolationError):
        await insert(pg_url, pg_schema, bad)
    assert await assert_agrees(pg_url, pg_schema) == before


@pytest.mark.anyio
async def test_plain_table_retention_keeps_the_rollup_exact(pg_url: str, pg_schema: str) -> None:
    start = NOW - timedelta(days=120)
    rows = make_rows(900, start=start, step=timedelta(hours=3, minutes=10))
    await seed(pg_url, rows, schema=pg_schema)
    result = await cleanup(pg_url, schema=pg_schema, retention_days=90, batch_size=40, now=NOW)
    cutoff = NOW - timedelta(days=90)
    assert result.deleted_rows == sum(1 for r in rows if r["timestamp"] < cutoff) > 0
    assert result.batches > 2
    want = await assert_agrees(pg_url, pg_schema)
    assert min(key[0] for key in want) == cutoff.date()  # the cutoff day is partly kept
    assert sum(want.values()) == sum(1 for r in rows if r["timestamp"] >= cutoff)


@pytest.mark.anyio
@pytest.mark.parametrize("detach", [False, True], ids=["drop", "detach"])
async def test_partitioned_retention_forgets_removed_months(
    pg_url: str, pg_schema: str, detach: bool
) -> None:
    start = datetime(2025, 11, 20, tzinfo=UTC)
    rows = make_rows(370, start=start, step=timedelta(hours=9))
    await seed(pg_url, rows, schema=pg_schema, partitioned=True)
    await assert_agrees(pg_url, pg_schema)
    result = await cleanup(pg_url, schema=pg_schema, retention_days=90, batch_size=25,
                           now=NOW, detach=detach)
    removed = result.detached_partitions if detach else result.dropped_partitions
    assert removed == ["activity_logs_p202511", "activity_logs_p202512"]
    assert result.deleted_rows > 0  # the rows of January before the cutoff, row by row
    want = await assert_agrees(pg_url, pg_schema)
    cutoff = NOW - timedelta(days=90)
    assert min(key[0] for key in want) == cutoff.date()
    assert sum(want.values()) == sum(1 for r in rows if r["timestamp"] >= cutoff)


async def _triggers_on(conn: asyncpg.Connection, relation: str) -> set[str]:
    return {r["tgname"] for r in await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal",
        relation)} & set(rollup_trigger_names().values())


@pytest.mark.anyio
async def test_partitioned_batches_and_statements_naming_a_partition_are_counted_once(
    pg_url: str, pg_schema: str
) -> None:
    # one batch over three months through the parent (the parent's statement trigger), then
    # statements naming a partition (that partition's own triggers: the parent's do not fire)
    rows = make_rows(900, start=NOW - timedelta(days=70), step=timedelta(hours=1, minutes=50))
    await seed(pg_url, [], schema=pg_schema, partitioned=True)
    assert await insert(pg_url, pg_schema, rows) == 900
    assert await insert(pg_url, pg_schema, rows) == 0  # re-delivery through the stage
    assert sum((await assert_agrees(pg_url, pg_schema)).values()) == 900
    async with connect(pg_url, pg_schema) as conn:
        for name in ("activity_logs_p202602", "activity_logs_p202603", "activity_logs_p202604"):
            assert await _triggers_on(conn, name) == set(rollup_trigger_names().values())
            assert await conn.fetchval(f"SELECT count(*) FROM {name}") > 0
        # a statement naming a partition is counted by the partition's trigger
        more = make_rows(10, start=datetime(2026, 3, 3, tzinfo=UTC))
        await conn.copy_records_to_table(
            "activity_logs_p202603", columns=COLUMNS,
            records=[tuple(_plain(r[c]) for c in COLUMNS) for r in more])
        await conn.execute("DELETE FROM activity_logs_p202603 WHERE seq % 5 = 0")
        assert await rollup(conn) == await full_count(conn)
        await conn.execute("TRUNCATE activity_logs_p202602")  # its month's days only
        assert await rollup(conn) == await full_count(conn)
    assert await insert(pg_url, pg_schema, rows) > 0  # the truncated and deleted rows again
    assert await insert(pg_url, pg_schema, make_rows(5, start=NOW)) == 5
    await assert_agrees(pg_url, pg_schema)


@pytest.mark.anyio
async def test_a_partition_without_the_triggers_gets_them_back_and_its_month_recounted(
    pg_url: str, pg_schema: str
) -> None:
    await seed(pg_url, make_rows(100, start=datetime(2026, 3, 5, tzinfo=UTC)),
               schema=pg_schema, partitioned=True)
    async with connect(pg_url, pg_schema) as conn:
        for name in rollup_trigger_names().values():
            await conn.execute(f'DROP TRIGGER "{name}" ON activity_logs_p202603')
    # the writer COPYs through the parent: counted all the same
    assert await insert(pg_url, pg_schema, make_rows(60, start=datetime(2026, 3, 9,
                                                                           tzinfo=UTC))) == 60
    await assert_agrees(pg_url, pg_schema)
    async with connect(pg_url, pg_schema) as conn:  # a write behind the rollup's back
        stray = make_rows(7, start=datetime(2026, 3, 20, tzinfo=UTC))
        await conn.copy_records_to_table(
            "activity_logs_p202603", columns=COLUMNS,
            records=[tuple(_plain(r[c]) for c in COLUMNS) for r in stray])
        assert await rollup(conn) != await full_count(conn)
    await init_db(pg_url, schema=pg_schema)  # restores the triggers, recounts that month
    assert sum((await assert_agrees(pg_url, pg_schema)).values()) == 167
    async with connect(pg_url, pg_schema) as conn:
        assert await _triggers_on(conn, "activity_logs_p202603") == set(
            rollup_trigger_names().values())


@pytest.mark.anyio
async def test_init_db_backfills_a_table_made_before_the_rollup(
    pg_url: str, pg_schema: str
) -> None:
    rows = make_rows(1_500, start=NOW - timedelta(days=40), step=timedelta(minutes=40))
    await seed(pg_url, rows, schema=pg_schema)
    async with connect(pg_url, pg_schema) as conn:
        for name in rollup_trigger_names().values():
            await conn.execute(f'DROP TRIGGER "{name}" ON activity_logs')
        await conn.execute(f'DROP TABLE "{rollup_table_name()}"')
        assert not await rollup_present(conn)
    async with session(pg_url, pg_schema) as db:  # no rollup: the rows are counted
        by_rows = await activity_log_crud.get_activity_summary(db, days=30, now=NOW)
    assert await init_db(pg_url, schema=pg_schema) is None
    await assert_agrees(pg_url, pg_schema)
    async with session(pg_url, pg_schema) as db:
        assert await activity_log_crud.get_activity_summary(db, days=30, now=NOW) == by_rows
    assert await init_db(pg_url, schema=pg_schema) is None  # idempotent: nothing changes
    assert await assert_agrees(pg_url, pg_schema)


@pytest.mark.anyio
async def test_a_missing_trigger_is_restored_and_the_rollup_recounted(
    pg_url: str, pg_schema: str
) -> None:
    await seed(pg_url, make_rows(100, start=NOW), schema=pg_schema)
    async with connect(pg_url, pg_schema) as conn:
        await conn.execute(f'DROP TRIGGER "{rollup_trigger_names()["INSERT"]}" ON activity_logs')
    await insert(pg_url, pg_schema, make_rows(70, start=NOW - timedelta(days=1)))  # uncounted
    async with connect(pg_url, pg_schema) as conn:
        assert sum((await rollup(conn)).values()) == 100
    await init_db(pg_url, schema=pg_schema)
    assert sum((await assert_agrees(pg_url, pg_schema)).values()) == 170


@pytest.mark.anyio
async def test_rebuild_repairs_a_range_or_everything(pg_url: str, pg_schema: str) -> None:
    rows = make_rows(1_000, start=NOW - timedelta(days=10), step=timedelta(minutes=14))
    await seed(pg_url, rows, schema=pg_schema)
    async with connect(pg_url, pg_schema) as conn:
        want = await full_count(conn)
        days = sorted({key[0] for key in want})
        await conn.execute(f'UPDATE "{rollup_table_name()}" SET count = count + 5')
        await conn.execute(f'DELETE FROM "{rollup_table_name()}" WHERE day = $1', days[3])
        await rebuild_rollup(conn, first_day=days[2], last_day=days[4])
        got = await rollup(conn)
        for key, n in want.items():
            assert got[key] == (n if days[2] <= key[0] <= days[4] else n + 5)
        assert await rebuild_rollup(conn) == len(want)
        assert await rollup(conn) == want
        with pytest.raises(ValueError, match="both"):
            await rebuild_rollup(conn, first_day=days[0])


@pytest.mark.anyio
async def test_a_writer_without_privileges_on_the_rollup_still_counts(
    pg_url: str, pg_schema: str
) -> None:
    await init_db(pg_url, schema=pg_schema)
    role = f"{pg_schema}_writer"
    async with connect(pg_url, pg_schema) as conn:
        await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        try:
            await conn.execute(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO "{role}"')
            await conn.execute(f'GRANT INSERT, SELECT ON activity_logs TO "{role}"')
            await conn.execute(f'SET ROLE "{role}"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f'SELECT * FROM "{rollup_table_name()}"')
            rows = make_rows(120, start=NOW - timedelta(days=2), step=timedelta(minutes=30))
            await conn.copy_records_to_table(
                "activity_logs", columns=COLUMNS,
                records=[tuple(_plain(r[c]) for c in COLUMNS) for r in rows])
            await conn.execute("RESET ROLE")
            assert sum((await rollup(conn)).values()) == 120
            assert await rollup(conn) == await full_count(conn)
        finally:
            await conn.execute("RESET ROLE")
            await conn.execute(f'DROP OWNED BY "{role}"')
            await conn.execute(f'DROP ROLE "{role}"')


def _plain(value: Any) -> Any:
    """A row value as asyncpg's default codecs take it (jsonb as JSON text)."""
    import orjson

    return orjson.dumps(value).decode() if isinstance(value, dict | list) else value


@pytest.mark.anyio
async def test_concurrent_writers_on_the_same_days_neither_deadlock_nor_miscount(
    pg_url: str, pg_schema: str
) -> None:
    await init_db(pg_url, schema=pg_schema)
    rows = make_rows(8_000, start=NOW - timedelta(days=4), step=timedelta(seconds=40))
    stores = [PostgresStore(pg_url, schema=pg_schema) for _ in range(4)]

    async def write(i: int) -> int:
        mine = rows[i::4]
        done = 0
        for j in range(0, len(mine), 250):
            done += await stores[i].insert_activities(mine[j:j + 250])
        return done

    try:
        assert sum(await asyncio.gather(*(write(i) for i in range(4)))) == 8_000
    finally:
        for store in stores:
            await store.close()
    assert sum((await assert_agrees(pg_url, pg_schema)).values()) == 8_000


@pytest.mark.anyio
async def test_update_and_truncate_keep_the_rollup_right(pg_url: str, pg_schema: str) -> None:
    await seed(pg_url, make_rows(300, start=NOW - timedelta(days=2)), schema=pg_schema)
    async with connect(pg_url, pg_schema) as conn:
        await conn.execute("UPDATE activity_logs SET activity_type = 'renamed', "
                           "\"timestamp\" = \"timestamp\" - interval '30 days' WHERE seq % 4 = 0")
        assert await rollup(conn) == await full_count(conn)
        await conn.execute("TRUNCATE activity_logs")
        assert await rollup(conn) == {}


@pytest.mark.anyio
async def test_a_custom_table_has_its_own_rollup(pg_url: str, pg_schema: str) -> None:
    await init_db(pg_url, schema=pg_schema, table="audit_trail")
    await insert(pg_url, pg_schema, make_rows(200, start=NOW - timedelta(days=1)),
                 table="audit_trail")
    assert rollup_table_name("audit_trail") == "audit_trail_daily"
    want = await assert_agrees(pg_url, pg_schema, table="audit_trail")
    assert sum(want.values()) == 200


@pytest.mark.anyio
async def test_summary_from_the_rollup_equals_the_summary_from_the_rows(
    pg_url: str, pg_schema: str
) -> None:
    rows = make_rows(3_000, start=NOW - timedelta(days=45), step=timedelta(minutes=23))
    await seed(pg_url, rows, schema=pg_schema)
    await insert(pg_url, pg_schema, make_rows(50, start=NOW - timedelta(days=12)))  # late
    first, last = (NOW - timedelta(days=29)).date(), NOW.date()
    async with session(pg_url, pg_schema) as db:
        fast = await activity_log_crud.summary_from_rollup(db, first, last)
        slow = await activity_log_crud.summary_from_rows(db, first, last)
        chosen = await activity_log_crud.get_activity_summary(db, days=30, now=NOW)
    assert fast == slow == chosen
    assert fast.total > 1_000
    assert list(fast.by_type.values()) == sorted(fast.by_type.values(), reverse=True)
    async with connect(pg_url, pg_schema) as conn:  # the rollup is what the summary reads
        await conn.execute(f'UPDATE "{rollup_table_name()}" SET count = count * 2')
    async with session(pg_url, pg_schema) as db:
        doubled = await activity_log_crud.get_activity_summary(db, days=30, now=NOW)
    assert doubled.total == 2 * fast.total


@pytest.mark.anyio
async def test_init_db_rebuild_rollup_recounts_from_the_rows(
    pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(pg_url, make_rows(400, start=NOW - timedelta(days=5), step=timedelta(minutes=20)),
               schema=pg_schema)
    async with connect(pg_url, pg_schema) as conn:
        await conn.execute(f'UPDATE "{rollup_table_name()}" SET count = 1')
        assert await rollup(conn) != await full_count(conn)
    argv = ["init-db", "--database-url", pg_url, "--schema", pg_schema, "--rebuild-rollup"]
    code, out, err = await asyncio.to_thread(run, argv, capsys)
    assert code == 0, err
    want = await assert_agrees(pg_url, pg_schema)
    assert f"daily rollup rebuilt: {len(want)} rows" in out


def test_rebuild_rollup_refuses_sqlite(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    code, _, err = run(["init-db", "--database-url", url, "--rebuild-rollup"], capsys)
    assert code == 2
    assert "SQLite summaries count the rows" in err


@asynccontextmanager
async def session(pg_url: str, schema: str) -> AsyncIterator[AsyncSession]:
    engine = create_async_engine_for(pg_url, schema=schema)
    try:
        async with AsyncSession(engine) as db:
            yield db
    finally:
        await engine.dispose()


def test_rollup_names_derive_from_the_table() -> None:
    assert rollup_table_name() == "activity_log_daily"
    assert set(rollup_trigger_names("x").values()) == {
        "x_daily_on_insert", "x_daily_on_delete", "x_daily_on_update", "x_daily_on_truncate"}


def test_with_the_roles_maintenance_owns_the_function_and_the_writer_is_counted(
    pg_url: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from activity_logging.roles import role_names

    def url_as(url: str, role: str) -> str:  # the test server trusts local logins
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))

    prefix = f"t{uuid4().hex[:10]}_"
    names = role_names(prefix)
    logins = [f"{prefix}ops", f"{prefix}app"]

    async def as_admin(*sql: str) -> list[Any]:
        async with connect(pg_url, pg_schema) as conn:
            return [await conn.fetchval(s) for s in sql]

    try:
        code, _, err = run(["init-db", "--database-url", pg_url, "--schema", pg_schema,
                            "--partitioned", "--roles", "--role-prefix", prefix], capsys)
        assert code == 0, err
        owner, = asyncio.run(as_admin(
            f"SELECT proowner::regrole::text FROM pg_proc "
            f"WHERE oid = to_regprocedure('\"{pg_schema}\".activity_log_daily_apply()')"))
        assert owner == names.maintenance
        asyncio.run(as_admin(f'CREATE ROLE "{logins[0]}" LOGIN IN ROLE "{names.maintenance}"',
                             f'CREATE ROLE "{logins[1]}" LOGIN IN ROLE "{names.writer}"'))
        # a partition made by a member of the maintenance role gets the rollup's triggers
        code, _, err = run(["partitions", "--database-url", url_as(pg_url, logins[0]),
                            "--schema", pg_schema, "--month", "2031-01"], capsys)
        assert code == 0, err

        async def write_and_check() -> None:
            async with connect(pg_url, pg_schema) as conn:
                assert await _triggers_on(conn, "activity_logs_p203101") == set(
                    rollup_trigger_names().values())
            rows = (make_rows(50, start=datetime(2031, 1, 2, tzinfo=UTC))
                    + make_rows(50, start=datetime.now(UTC) - timedelta(minutes=30),
                                step=timedelta(seconds=20)))
            store = PostgresStore(url_as(pg_url, logins[1]), schema=pg_schema)
            try:
                assert await store.insert_activities(rows) == 100
            finally:
                await store.close()
            assert sum((await assert_agrees(pg_url, pg_schema)).values()) == 100

        asyncio.run(write_and_check())
    finally:
        async def drop() -> None:
            async with connect(pg_url, pg_schema) as conn:
                for name in [*logins, *names.all()]:
                    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                        await conn.execute(f'DROP OWNED BY "{name}" CASCADE')
                        await conn.execute(f'DROP ROLE "{name}"')

        asyncio.run(drop())
