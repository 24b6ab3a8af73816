"""Least privilege on the real PostgreSQL: ``init-db --roles``, the writer, reader and
maintenance roles, the append-only triggers, and what each role may not do.

Roles are cluster-wide: every test makes its own, named from a random prefix
(``--role-prefix``), and drops them (and what they own or were granted) afterwards; the
tables live in the test's own schema. Logins connect with trust authentication.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis

from activity_logging import roles, snapshot, wire
from activity_logging.cli import main
from activity_logging.cli_common import EXIT_PERMISSION_DENIED
from activity_logging.db import connect_pg, quote_identifier
from activity_logging.exceptions import PermissionDeniedError
from activity_logging.partitions import month_bounds, partition_name
from activity_logging.roles import RoleNames, role_names
from activity_logging.rows import activity_from_record
from activity_logging.store_pg import PostgresStore
from activity_logging.worker import ActivityWorker
from tests.cli_run import run
from tests.pg_sql import execute, fetch

pytestmark = pytest.mark.integration


# --- roles made and dropped per test ---------------------------------------------------------


def url_as(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (no password: the test server trusts local logins)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))




@dataclass
class Roles:
    """The test's roles: the group roles of ``prefix`` and the logins made with ``login``."""

    url: str
    schema: str
    prefix: str
    names: RoleNames
    logins: list[str] = field(default_factory=list)

    def login(self, member_of: str | None, suffix: str) -> str:
        """Create a LOGIN role (a member of ``member_of``) and return a URL logging in as it."""
        name = f"{self.prefix}{suffix}"
        self.logins.append(name)
        member = f" IN ROLE {quote_identifier(member_of)}" if member_of else ""
        asyncio.run(execute(self.url, f"CREATE ROLE {quote_identifier(name)} LOGIN{member}"))
        return url_as(self.url, name)

    def init_db(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
        return run(["init-db", "--database-url", self.url, "--schema", self.schema,
                    "--role-prefix", self.prefix, *extra], capsys)


async def _drop_roles(url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for name in names:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                # What the role owns (the maintenance role: the tables) and every grant to it.
                await conn.execute(f"DROP OWNED BY {quote_identifier(name)} CASCADE")
                await conn.execute(f"DROP ROLE {quote_identifier(name)}")
    finally:
        await conn.close()


def _new_roles(url: str, schema: str) -> Roles:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    return Roles(url=url, schema=schema, prefix=prefix, names=role_names(prefix))


@pytest.fixture
def test_roles(pg_url: str, pg_schema: str) -> Iterator[Roles]:
    made = _new_roles(pg_url, pg_schema)
    yield made
    asyncio.run(_drop_roles(pg_url, [*made.logins, *made.names.all()]))


# --- rows and entries -----------------------------------------------------------------------


def _entries(count: int, per_entry: int) -> list[dict[str, Any]]:
    """Stream entries of records created now (inside the worker's timestamp window)."""
    encoder = wire.WireEncoder(f"roles-{uuid.uuid4().hex[:6]}")
    out = []
    for e in range(count):
        items = []
        for j in range(per_entry):
            rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None,
                                    None)
            rec.created = time.time()
            rec.__dict__.update({"actor_id": f"agent-{e}-{j}", "target_type": "call"})
            items.append(snapshot.queued_from_record(rec))
        out.append(encoder.encode_batch(items))
    return out


def _xadd(redis_url: str, stream: str, entries: list[dict[str, Any]]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for fields in entries:
            client.xadd(stream, fields)
    finally:
        client.close()


def _row(i: int = 0, when: datetime | None = None) -> Mapping[str, Any]:
    """The row the pipeline would store for one record created at ``when`` (default now)."""
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    rec.created = (when or datetime.now(UTC)).timestamp()
    rec.__dict__.update({"actor_id": f"a{i}"})
    return activity_from_record(rec, producer_id=f"roles-{uuid.uuid4().hex[:6]}", seq=i + 1)


async def _count(url: str, schema: str) -> int:
    conn = await connect_pg(url, schema=schema)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM activity_logs"))
    finally:
        await conn.close()


# --- the grants ------------------------------------------------------------------------------


def test_roles_have_least_privilege_on_every_table(
        test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = test_roles.init_db(capsys, "--partitioned", "--roles")
    assert code == 0, err
    names = test_roles.names
    assert names.writer in out and "append-only" in out

    async def check() -> dict[str, dict[str, dict[str, bool]]]:
        conn = await connect_pg(test_roles.url, schema=test_roles.schema)
        try:
            return {role: {table: await roles.table_privileges(conn, role, table)
                           for table in roles.ROLE_TABLES}
                    for role in names.all()}
        finally:
            await conn.close()

    held = asyncio.run(check())
    only = {name: {p for p, ok in privileges.items() if ok}
            for name, privileges in held[names.writer].items()}
    assert only == {"activity_logs": {"SELECT", "INSERT"},
                    "activity_log_dead_letters": {"SELECT", "INSERT"},
                    "activity_log_cuts": {"SELECT"},
                    "activity_log_daily": set()}
    assert {name: {p for p, ok in privileges.items() if ok}
            for name, privileges in held[names.reader].items()} == {
        table: {"SELECT"} for table in roles.ROLE_TABLES}
    assert all(all(privileges.values()) for privileges in held[names.maintenance].values())
    owners = asyncio.run(fetch(
        test_roles.url, "SELECT c.relname, c.relowner::regrole::text AS owner FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
        "AND c.relkind IN ('r', 'p', 'S')", test_roles.schema))
    assert owners and {r["owner"] for r in owners} == {names.maintenance}, owners
    temp = asyncio.run(fetch(
        test_roles.url, "SELECT has_database_privilege($1, current_database(), 'TEMPORARY') "
        "AS w, has_schema_privilege($2, $3, 'CREATE') AS m, "
        "has_schema_privilege($1, $3, 'CREATE') AS wc", names.writer, names.maintenance,
        test_roles.schema))[0]
    assert temp["w"] and temp["m"] and not temp["wc"]


def test_writer_cannot_update_delete_or_truncate(
        test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys, "--roles", "--no-reject-updates")[0] == 0
    writer_url = test_roles.login(test_roles.names.writer, "app")

    async def check() -> None:
        store = PostgresStore(writer_url, schema=test_roles.schema)
        try:
            assert await store.insert_activities([_row(1)]) == 1
        finally:
            await store.close()
        conn = await connect_pg(writer_url, schema=test_roles.schema)
        try:
            assert await conn.fetchval("SELECT count(*) FROM activity_logs") == 1
            for sql in ("UPDATE activity_logs SET actor_id = 'x'",
                        "DELETE FROM activity_logs",
                        "TRUNCATE activity_logs",
                        "UPDATE activity_log_dead_letters SET error = 'x'",
                        "DELETE FROM activity_log_dead_letters",
                        "INSERT INTO activity_log_cuts SELECT * FROM activity_log_cuts"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE activity_logs_p209901 (x int)")
        finally:
            await conn.close()

    asyncio.run(check())


def test_reader_cannot_insert(test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys, "--roles")[0] == 0
    reader_url = test_roles.login(test_roles.names.reader, "auditor")
    code, _, err = run(["query", "--database-url", reader_url, "--schema", test_roles.schema],
                       capsys)
    assert code == 0, err

    async def check() -> None:
        conn = await connect_pg(reader_url, schema=test_roles.schema)
        try:
            for sql in ("INSERT INTO activity_logs (id, timestamp, activity_type, severity, level)"
                        " VALUES (gen_random_uuid(), now(), 'x', 'info', 20)",
                        "DELETE FROM activity_logs", "DELETE FROM activity_log_dead_letters"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
        finally:
            await conn.close()
        # As the worker would: the store names what the reader lacks, in one line.
        store = PostgresStore(reader_url, schema=test_roles.schema)
        with pytest.raises(PermissionDeniedError) as caught:
            await store.connect()
        message = str(caught.value)
        assert "INSERT on activity_logs" in message and "\n" not in message
        assert "GRANT activity_log_writer" in message

    asyncio.run(check())


def test_update_is_refused_even_for_the_owner_but_retention_works(
        test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    """The triggers refuse UPDATE and TRUNCATE; the maintenance role's cleanup (DELETE and
    partition drops), its partitions and its VACUUM still work."""
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    ops_url = test_roles.login(test_roles.names.maintenance, "ops")
    old = datetime.now(UTC) - timedelta(days=400)

    async def seed_and_update() -> None:
        conn = await connect_pg(test_roles.url, schema=test_roles.schema)
        try:
            # An expired month, made by the superuser as an old deployment would have.
            start, end = month_bounds(old.year, old.month)
            await conn.execute(
                f"CREATE TABLE {partition_name('activity_logs', old.year, old.month)} "
                f"PARTITION OF activity_logs FOR VALUES FROM ('{start.isoformat()}') "
                f"TO ('{end.isoformat()}')")
        finally:
            await conn.close()
        # init-db --roles again: the new partition goes to the maintenance role too.
        store = PostgresStore(test_roles.url, schema=test_roles.schema)
        try:
            await store.insert_activities([_row(1, old), _row(2)])
        finally:
            await store.close()
        conn = await connect_pg(test_roles.url, schema=test_roles.schema)
        try:
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("UPDATE activity_logs SET actor_id = 'forged'")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(
                    f"UPDATE {partition_name('activity_logs', old.year, old.month)} "
                    "SET actor_id = 'forged'")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("TRUNCATE activity_logs")
        finally:
            await conn.close()

    asyncio.run(seed_and_update())
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    code, out, err = run(["cleanup", "--database-url", ops_url, "--schema", test_roles.schema,
                          "--retention-days", "30", "--json"], capsys)
    assert code == 0, err
    assert partition_name("activity_logs", old.year, old.month) in out
    assert asyncio.run(_count(test_roles.url, test_roles.schema)) == 1
    code, out, err = run(["vacuum", "--database-url", ops_url, "--schema", test_roles.schema],
                         capsys)
    assert code == 0, err
    code, out, err = run(["partitions", "--database-url", ops_url, "--schema", test_roles.schema,
                          "--months-ahead", "5"], capsys)
    assert code == 0, err
    assert "created" in out
    owners = asyncio.run(fetch(
        test_roles.url, "SELECT DISTINCT c.relowner::regrole::text AS owner FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
        f"{quote_identifier(test_roles.schema)}.activity_logs"))
    # Made by the login "ops", owned by the group role: any other member can drop them.
    assert [r["owner"] for r in owners] == [test_roles.names.maintenance]


def test_vacuum_and_cleanup_as_the_writer_are_one_line_exit_4(
        test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    writer_url = test_roles.login(test_roles.names.writer, "app")
    for argv in (["vacuum"], ["cleanup", "--retention-days", "30"],
                 ["partitions", "--months-ahead", "6"]):
        code, _, err = run([*argv, "--database-url", writer_url, "--schema", test_roles.schema],
                           capsys)
        assert code == EXIT_PERMISSION_DENIED, (argv, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert "maintenance" in err


# --- the worker as the writer ----------------------------------------------------------------


def test_worker_as_the_writer_stores_a_batch_on_a_partitioned_table(
        test_roles: Roles, redis_url: str, redis_stream: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    writer_url = test_roles.login(test_roles.names.writer, "app")
    _xadd(redis_url, redis_stream, _entries(5, 40))
    worker = ActivityWorker(redis_url, writer_url, stream=redis_stream, schema=test_roles.schema,
                            max_wait=0.1)
    asyncio.run(worker.run(stop_when_idle=True))
    stats = worker.stats()
    assert (stats["read"], stats["inserted"], stats["dead_lettered"]) == (200, 200, 0)
    assert asyncio.run(_count(test_roles.url, test_roles.schema)) == 200


def test_worker_as_the_writer_writes_dead_letters(
        test_roles: Roles, redis_url: str, redis_stream: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The writer may INSERT dead letters (and draw their ids) but not purge them."""
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    writer_url = test_roles.login(test_roles.names.writer, "app")
    _xadd(redis_url, redis_stream, _entries(2, 10))
    # Records dated before the accepted window: refused before any partition is looked for.
    encoder = wire.WireEncoder("roles-old")
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    rec.created = time.time() - 10 * 86400
    _xadd(redis_url, redis_stream, [encoder.encode_batch([snapshot.queued_from_record(rec)])])
    worker = ActivityWorker(redis_url, writer_url, stream=redis_stream, schema=test_roles.schema,
                            max_wait=0.1, max_age=86400.0)
    asyncio.run(worker.run(stop_when_idle=True))
    stats = worker.stats()
    assert (stats["read"], stats["inserted"], stats["dead_lettered"]) == (21, 20, 1)
    assert stats["refused_out_of_window"] == 1
    letters = asyncio.run(fetch(test_roles.url, f"SELECT reason FROM "
                                 f"{quote_identifier(test_roles.schema)}.activity_log_dead_letters"))
    assert [r["reason"] for r in letters] == ["out_of_window"]
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xpending(redis_stream, "activity_log_workers")["pending"] == 0
    finally:
        client.close()


def test_worker_as_the_writer_waits_for_a_missing_month_in_one_line(
        test_roles: Roles, redis_url: str, redis_stream: str,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    writer_url = test_roles.login(test_roles.names.writer, "app")
    ops_url = test_roles.login(test_roles.names.maintenance, "ops")
    now = datetime.now(UTC)
    month = f"{now.year:04d}-{now.month:02d}"
    current = partition_name("activity_logs", now.year, now.month)
    asyncio.run(execute(test_roles.url, f"DROP TABLE {quote_identifier(test_roles.schema)}."
                                         f"{quote_identifier(current)}"))
    _xadd(redis_url, redis_stream, _entries(2, 10))
    caplog.set_level(logging.DEBUG, logger="activity_logging")

    async def scenario() -> dict[str, Any]:
        worker = ActivityWorker(redis_url, writer_url, stream=redis_stream,
                                schema=test_roles.schema, max_wait=0.1)
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(300):
                if any(r.levelno >= logging.ERROR for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no error line about the missing partition")
            await asyncio.sleep(1.5)  # a few retries: still one line
            client = redis.Redis.from_url(redis_url)
            try:
                pending = client.xpending(redis_stream, "activity_log_workers")["pending"]
            finally:
                client.close()
            assert pending == 2
            assert worker.stats()["inserted"] == 0 and worker.stats()["dead_lettered"] == 0
            # The maintenance side creates the month (a member login, through the CLI).
            code = await asyncio.to_thread(main, ["partitions", "--database-url", ops_url,
                                                  "--schema", test_roles.schema,
                                                  "--month", month])
            assert code == 0
            for _ in range(800):
                if worker.stats()["inserted"] == 20:
                    break
                await asyncio.sleep(0.05)
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 10)
        return worker.stats()

    stats = asyncio.run(scenario())
    assert (stats["inserted"], stats["dead_lettered"]) == (20, 0)
    assert stats["retried"] >= 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert month in line and current in line and "\n" not in line
    assert f"activity-logging partitions --month {month}" in line
    assert test_roles.names.maintenance in line
    assert not any(r.exc_info for r in caplog.records)
    assert any("now exists" in r.getMessage() for r in caplog.records)
    assert asyncio.run(_count(test_roles.url, test_roles.schema)) == 20


def test_insert_only_role_is_one_line_and_exit_4_from_the_worker(
        test_roles: Roles, redis_url: str, redis_stream: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys)[0] == 0
    insert_only = test_roles.login(None, "inserter")
    asyncio.run(execute(
        test_roles.url,
        f"GRANT USAGE ON SCHEMA {quote_identifier(test_roles.schema)} TO "
        f"{quote_identifier(test_roles.prefix + 'inserter')}",
        f"GRANT INSERT ON {quote_identifier(test_roles.schema)}.activity_logs TO "
        f"{quote_identifier(test_roles.prefix + 'inserter')}"))
    _xadd(redis_url, redis_stream, _entries(1, 5))
    code, _, err = run(["--log-level", "WARNING", "worker", "--redis-url", redis_url,
                        "--stream", redis_stream, "--database-url", insert_only, "--schema",
                        test_roles.schema, "--exit-when-idle", "--max-wait", "0.1"], capsys)
    assert code == EXIT_PERMISSION_DENIED
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "lacks SELECT on activity_logs" in lines[0]
    assert "INSERT on" not in lines[0]  # it has INSERT
    assert "GRANT activity_log_writer" in lines[0]
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(redis_stream) == 1  # nothing acknowledged, nothing lost
    finally:
        client.close()


def test_a_refused_login_is_one_line_and_exit_4(
        test_roles: Roles, redis_url: str, redis_stream: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A group role is NOLOGIN: the worker stops at once instead of retrying forever."""
    assert test_roles.init_db(capsys, "--roles")[0] == 0
    code, _, err = run(["--log-level", "WARNING", "worker", "--redis-url", redis_url,
                        "--stream", redis_stream, "--database-url",
                        url_as(test_roles.url, test_roles.names.writer), "--schema",
                        test_roles.schema, "--exit-when-idle"], capsys)
    assert code == EXIT_PERMISSION_DENIED
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "refused the login" in err and "not permitted to log in" in err


# --- idempotence, and the SQL file agrees with the CLI ---------------------------------------


async def _grants(url: str, schema: str, prefix: str) -> dict[str, Any]:
    """Everything the roles SQL sets, with the prefix replaced by ``<p>`` (comparable)."""
    conn = await connect_pg(url, schema=schema)
    try:
        tables = await conn.fetch(
            "SELECT c.relname, c.relkind::text AS kind, c.relowner::regrole::text AS owner, "
            "coalesce(c.relacl::text[], '{}') AS acl FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relkind IN ('r', 'p', 'S') ORDER BY c.relname", schema)
        nsp = await conn.fetchval("SELECT nspacl::text FROM pg_namespace WHERE nspname = $1",
                                  schema)
        defaults = await conn.fetch(
            "SELECT defaclrole::regrole::text AS role, defaclobjtype::text AS kind, "
            "defaclacl::text AS acl FROM pg_default_acl d JOIN pg_namespace n "
            "ON n.oid = d.defaclnamespace WHERE n.nspname = $1", schema)
        database = await conn.fetchval(
            "SELECT array_agg(a ORDER BY a)::text FROM pg_database d, "
            "unnest(d.datacl::text[]) a WHERE d.datname = current_database() AND a LIKE $1",
            prefix + "%")
        triggers = await conn.fetch(
            "SELECT t.tgname, t.tgrelid::regclass::text AS rel FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND NOT t.tgisinternal ORDER BY 1, 2", schema)
        members = await conn.fetch(
            "SELECT r.rolname, r.rolcanlogin FROM pg_roles r WHERE r.rolname LIKE $1 "
            "ORDER BY 1", prefix + "%")
    finally:
        await conn.close()

    def norm(value: Any) -> Any:
        text = repr(value).replace(prefix, "<p>").replace(schema, "<s>")
        return text

    return {"tables": norm([dict(r) for r in tables]), "schema": norm(nsp),
            "defaults": norm([dict(r) for r in defaults]), "database": norm(database),
            "triggers": norm([dict(r) for r in triggers]),
            "roles": norm([dict(r) for r in members])}


def test_init_db_roles_twice_is_idempotent(
        test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
    first = asyncio.run(_grants(test_roles.url, test_roles.schema, test_roles.prefix))
    code, _, err = test_roles.init_db(capsys, "--partitioned", "--roles")
    assert code == 0, err
    assert asyncio.run(_grants(test_roles.url, test_roles.schema, test_roles.prefix)) == first
    assert "activity_logs_reject_update" in first["triggers"]
    assert "True" not in first["roles"]  # every group role is NOLOGIN


def test_sql_file_with_psql_grants_what_the_cli_grants(
        test_roles: Roles, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    other = _new_roles(pg_url, f"{test_roles.schema}_sql")
    asyncio.run(execute(pg_url, f"CREATE SCHEMA {quote_identifier(other.schema)}"))
    try:
        assert test_roles.init_db(capsys, "--partitioned", "--roles")[0] == 0
        # The same tables, then the SQL exactly as a user runs it (--print-sql | psql -f -).
        assert other.init_db(capsys, "--partitioned")[0] == 0
        code, sql, err = other.init_db(capsys, "--roles", "--print-sql")
        assert code == 0 and "\\set" in sql, err
        subprocess.run([psql, pg_url, "-q", "-v", f"schema={other.schema}", "-v",
                        f"role_prefix={other.prefix}", "-f", "-"], input=sql, text=True,
                       check=True, capture_output=True, timeout=60)
        from_cli = asyncio.run(_grants(test_roles.url, test_roles.schema, test_roles.prefix))
        from_file = asyncio.run(_grants(pg_url, other.schema, other.prefix))
        assert from_file == from_cli
    finally:
        asyncio.run(execute(pg_url, f"DROP SCHEMA IF EXISTS {quote_identifier(other.schema)} "
                                     "CASCADE"))
        asyncio.run(_drop_roles(pg_url, list(other.names.all())))


def test_a_non_superuser_schema_owner_with_createrole_sets_the_roles_up(
        test_roles: Roles, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Not the database's owner: CONNECT and TEMPORARY come from PUBLIC, the rest is granted;
    the DDL role becomes a member of the maintenance role and keeps managing the tables."""
    admin = f"{test_roles.prefix}admin"
    test_roles.logins.append(admin)
    schema = f"{test_roles.schema}_own"
    asyncio.run(execute(pg_url, f"CREATE ROLE {quote_identifier(admin)} LOGIN CREATEROLE",
                         f"CREATE SCHEMA {quote_identifier(schema)} AUTHORIZATION "
                         f"{quote_identifier(admin)}"))
    admin_url = url_as(pg_url, admin)
    try:
        for _ in range(2):
            code, _, err = run(["init-db", "--database-url", admin_url, "--schema", schema,
                                  "--partitioned", "--roles", "--role-prefix",
                                  test_roles.prefix], capsys)
            assert code == 0, err
        writer_url = test_roles.login(test_roles.names.writer, "app")
        assert asyncio.run(_member_of(pg_url, admin, test_roles.names.maintenance))

        async def store_as_writer() -> int:
            store = PostgresStore(writer_url, schema=schema)
            try:
                return await store.insert_activities([_row(1)])
            finally:
                await store.close()

        assert asyncio.run(store_as_writer()) == 1
        # The admin still manages the table it handed over (a partition, as its member).
        code, _, err = run(["partitions", "--database-url", admin_url, "--schema", schema,
                            "--months-ahead", "5"], capsys)
        assert code == 0, err
    finally:
        asyncio.run(execute(pg_url, f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE"))


async def _member_of(url: str, role: str, group: str) -> bool:
    rows = await fetch(url, "SELECT pg_has_role($1, $2, 'MEMBER') AS m", role, group)
    return bool(rows[0]["m"])


def test_init_db_roles_refused_to_a_plain_login_is_one_line_exit_4(
        test_roles: Roles, capsys: pytest.CaptureFixture[str]) -> None:
    assert test_roles.init_db(capsys)[0] == 0
    nobody = test_roles.login(None, "nobody")
    asyncio.run(execute(test_roles.url, f"GRANT USAGE ON SCHEMA {quote_identifier(test_roles.schema)}"
                                         f" TO {quote_identifier(test_roles.prefix + 'nobody')}"))
    code, _, err = run(["init-db", "--database-url", nobody, "--schema", test_roles.schema,
                        "--roles", "--role-prefix", test_roles.prefix], capsys)
    assert code == EXIT_PERMISSION_DENIED
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "must be owner" in err or "permission denied" in err
