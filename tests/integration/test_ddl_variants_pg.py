"""``init-db --layout citus / timescaledb`` on the real PostgreSQL, the extensions stubbed.

Neither Citus nor TimescaleDB is installable here (not in Debian's archive), so each test
runs in a private database made for it (and dropped after), where look-alike functions with
the extensions' signatures stand in for them and record their arguments. They check what
the extensions check: Citus that the distribution column exists and is in every unique
key, TimescaleDB that the time column is NOT NULL and in every unique key and the table is
empty. Everything else is real: the tables, the keys, the extension calls as statements the
server parses and binds, the worker's COPY and ``ON CONFLICT`` path, and ``cleanup``. The
one statement plain PostgreSQL cannot run is TimescaleDB's ``ALTER TABLE ... SET
(timescaledb.compress ...)``: it is shown to parse (the server refuses only the
``timescaledb`` option namespace), then the stub reports compression as on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from activity_logging.db import init_db, quote_identifier
from activity_logging.exceptions import ConfigurationError
from activity_logging.retention import cleanup
from activity_logging.store_pg import PostgresStore
from tests.crud_rows import make_rows
from tests.pg_sql import execute, fetch

pytestmark = pytest.mark.integration

SCHEMA = "app"

CITUS_STUB = """
CREATE SCHEMA citus_stub;
CREATE FUNCTION citus_stub.qualified(rel regclass) RETURNS text LANGUAGE sql AS
    $$ SELECT relnamespace::regnamespace::text || '.' || relname FROM pg_class WHERE oid = rel $$;
CREATE TABLE citus_stub.pg_dist_partition (logicalrelid regclass PRIMARY KEY, partmethod "char",
    column_name text);
CREATE TABLE citus_stub.calls (fn text, args text[]);
-- Citus: "cannot create constraint ... that does not include the partition column"
CREATE FUNCTION citus_stub.create_distributed_table(table_name regclass,
    distribution_column text, distribution_type text DEFAULT 'hash',
    colocate_with text DEFAULT 'default', shard_count integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM citus_stub.pg_dist_partition WHERE logicalrelid = table_name) THEN
        RAISE EXCEPTION 'table % is already distributed', table_name;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = table_name
                   AND attname = distribution_column AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', distribution_column, table_name;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = table_name AND i.indisunique
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = table_name
                               AND a.attname = distribution_column
                               AND a.attnum = ANY (i.indkey))) THEN
        RAISE EXCEPTION 'cannot create constraint on %: unique constraints must include the '
                        'partition column', table_name;
    END IF;
    INSERT INTO citus_stub.pg_dist_partition VALUES (table_name, 'h', distribution_column);
    INSERT INTO citus_stub.calls VALUES ('create_distributed_table',
        ARRAY[citus_stub.qualified(table_name), distribution_column, distribution_type, colocate_with]);
END $$;
CREATE FUNCTION citus_stub.create_reference_table(table_name regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO citus_stub.pg_dist_partition VALUES (table_name, 'n', NULL);
    INSERT INTO citus_stub.calls VALUES ('create_reference_table', ARRAY[citus_stub.qualified(table_name)]);
END $$;
"""

TIMESCALE_STUB = """
CREATE SCHEMA ts_stub;
CREATE FUNCTION ts_stub.qualified(rel regclass) RETURNS text LANGUAGE sql AS
    $$ SELECT relnamespace::regnamespace::text || '.' || relname FROM pg_class WHERE oid = rel $$;
CREATE SCHEMA timescaledb_information;
CREATE TABLE timescaledb_information.hypertables (hypertable_schema name, hypertable_name name,
    compression_enabled boolean NOT NULL DEFAULT false);
CREATE TABLE ts_stub.calls (fn text, args text[]);
CREATE TYPE ts_stub.dimension_info AS (column_name name, partition_interval text);
CREATE FUNCTION ts_stub.by_range(column_name name, partition_interval anyelement DEFAULT NULL::bigint,
    partition_func regproc DEFAULT NULL) RETURNS ts_stub.dimension_info
LANGUAGE sql AS $$ SELECT ROW(column_name, partition_interval::text)::ts_stub.dimension_info $$;
CREATE FUNCTION ts_stub.create_hypertable(relation regclass, dimension ts_stub.dimension_info,
    create_default_indexes boolean DEFAULT true, if_not_exists boolean DEFAULT false,
    migrate_data boolean DEFAULT false) RETURNS TABLE (hypertable_id integer, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    col name := (dimension).column_name;
    nonempty boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
               WHERE to_regclass(format('%I.%I', h.hypertable_schema, h.hypertable_name))
                     = relation) THEN
        IF if_not_exists THEN
            RETURN QUERY SELECT 1, false;
            RETURN;
        END IF;
        RAISE EXCEPTION 'table % is already a hypertable', relation;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = relation AND attname = col
                   AND attnotnull AND atttypid = 'timestamptz'::regtype) THEN
        RAISE EXCEPTION 'column "%" is not a NOT NULL timestamptz of %', col, relation;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = relation AND i.indisunique
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relation
                               AND a.attname = col AND a.attnum = ANY (i.indkey))) THEN
        RAISE EXCEPTION 'cannot create a unique index without the column "%"', col;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', relation) INTO nonempty;
    IF nonempty AND NOT migrate_data THEN
        RAISE EXCEPTION 'table % is not empty', relation;
    END IF;
    INSERT INTO timescaledb_information.hypertables (hypertable_schema, hypertable_name)
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = relation;
    INSERT INTO ts_stub.calls VALUES ('create_hypertable', ARRAY[ts_stub.qualified(relation), col,
        (dimension).partition_interval, create_default_indexes::text, if_not_exists::text]);
    RETURN QUERY SELECT 1, true;
END $$;
CREATE FUNCTION ts_stub.add_compression_policy(hypertable regclass, compress_after interval,
    if_not_exists boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ts_stub.calls VALUES ('add_compression_policy',
        ARRAY[ts_stub.qualified(hypertable), compress_after::text, if_not_exists::text]);
    RETURN 1000;
END $$;
CREATE FUNCTION ts_stub.drop_chunks(relation regclass, older_than timestamptz,
    newer_than timestamptz DEFAULT NULL, verbose boolean DEFAULT false) RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ts_stub.calls VALUES ('drop_chunks', ARRAY[ts_stub.qualified(relation), older_than::text]);
END $$;
CREATE FUNCTION ts_stub.show_chunks(relation regclass, older_than timestamptz,
    newer_than timestamptz DEFAULT NULL) RETURNS SETOF regclass
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ts_stub.calls VALUES ('show_chunks', ARRAY[ts_stub.qualified(relation), older_than::text]);
END $$;
"""




@pytest.fixture
def private_db(pg_url: str, unique_name: str) -> Iterator[str]:
    """A database of this test's own (stub schemas are global names), with schema ``app``."""
    name = f"ddl_{unique_name}"[:63]
    asyncio.run(execute(pg_url, f"CREATE DATABASE {quote_identifier(name)}"))
    url = pg_url.rsplit("/", 1)[0] + "/" + name
    try:
        asyncio.run(execute(url, f"CREATE SCHEMA {SCHEMA}"))
        yield url
    finally:
        asyncio.run(execute(pg_url, f"DROP DATABASE IF EXISTS {quote_identifier(name)} "
                                     "WITH (FORCE)"))


def _store_twice(url: str, rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Write ``rows`` through the worker's writer, then again (a redelivery)."""
    async def go() -> tuple[int, int]:
        store = PostgresStore(url, schema=SCHEMA)
        try:
            first = await store.insert_activities(rows)
            second = await store.insert_activities(rows)  # COPY conflicts: the stage path
            return first, second
        finally:
            await store.close()
    return asyncio.run(go())


def _count(url: str) -> int:
    return int(asyncio.run(fetch(url, f"SELECT count(*) FROM {SCHEMA}.activity_logs"))[0][0])


def test_citus_layout_is_refused_without_the_extension(private_db: str) -> None:
    with pytest.raises(ConfigurationError, match="needs the citus extension"):
        asyncio.run(init_db(private_db, schema=SCHEMA, layout="citus"))
    rows = asyncio.run(fetch(private_db, "SELECT to_regclass('app.activity_logs') IS NULL"))
    assert rows[0][0]  # nothing was created


@pytest.mark.parametrize("layout", ["citus", "citus-partitioned"])
def test_citus_layout_distributes_on_id_and_the_writer_stays_idempotent(
        private_db: str, layout: str) -> None:
    asyncio.run(execute(private_db, CITUS_STUB))
    notice = asyncio.run(init_db(private_db, schema=SCHEMA, layout=layout))
    assert notice is not None and "no daily rollup on a citus table" in notice
    calls = [(r["fn"], list(r["args"])) for r in asyncio.run(
        fetch(private_db, "SELECT fn, args FROM citus_stub.calls"))]
    assert calls == [
        ("create_distributed_table", ["app.activity_logs", "id", "hash", "default"]),
        ("create_reference_table", ["app.activity_log_cuts"]),
    ]
    # a second init-db finds both done (the stub refuses a second distribution)
    asyncio.run(init_db(private_db, schema=SCHEMA, layout=layout))
    assert len(asyncio.run(fetch(private_db, "SELECT * FROM citus_stub.calls"))) == 2
    # a plain init-db on the distributed table adds no rollup triggers either
    assert "no daily rollup" in (asyncio.run(init_db(private_db, schema=SCHEMA)) or "")
    assert asyncio.run(fetch(
        private_db, "SELECT to_regclass('app.activity_log_daily') IS NULL"))[0][0]
    rows = make_rows(30, start=datetime.now(UTC) - timedelta(hours=3))
    assert _store_twice(private_db, rows) == (30, 0)
    assert _count(private_db) == 30


def test_the_citus_stub_refuses_a_key_without_the_distribution_column(private_db: str) -> None:
    """The stub can fail: distributing on actor_id breaks the id-only primary key."""
    asyncio.run(execute(private_db, CITUS_STUB))
    asyncio.run(init_db(private_db, schema=SCHEMA))
    with pytest.raises(asyncpg.PostgresError, match="must include the partition column"):
        asyncio.run(execute(private_db, "SELECT citus_stub.create_distributed_table("
                                         "'app.activity_logs', 'actor_id')"))


def test_timescaledb_layout_makes_a_compressed_hypertable_and_cleanup_drops_chunks(
        private_db: str) -> None:
    asyncio.run(execute(private_db, TIMESCALE_STUB))
    # Plain PostgreSQL parses the compression statement and refuses only its namespace:
    # init-db got that far (create_hypertable ran), and rolled its calls back.
    with pytest.raises(asyncpg.PostgresError, match='unrecognized parameter namespace "timescaledb"'):
        asyncio.run(init_db(private_db, schema=SCHEMA, layout="timescaledb"))
    assert asyncio.run(fetch(private_db, "SELECT * FROM ts_stub.calls")) == []
    # From here the stub says compression is on, as TimescaleDB would after that statement.
    asyncio.run(execute(private_db, "ALTER TABLE timescaledb_information.hypertables "
                                     "ALTER compression_enabled SET DEFAULT true"))
    notice = asyncio.run(init_db(private_db, schema=SCHEMA, layout="timescaledb"))
    assert notice is not None and "no daily rollup on a timescaledb table" in notice
    asyncio.run(init_db(private_db, schema=SCHEMA, layout="timescaledb"))  # idempotent
    calls = [(r["fn"], list(r["args"])) for r in asyncio.run(
        fetch(private_db, "SELECT fn, args FROM ts_stub.calls"))]
    assert calls == [
        ("create_hypertable", ["app.activity_logs", "timestamp", "1 day", "false", "true"]),
        ("add_compression_policy", ["app.activity_logs", "7 days", "true"]),
        ("add_compression_policy", ["app.activity_logs", "7 days", "true"]),
    ]
    now = datetime.now(UTC)
    old = make_rows(20, start=now - timedelta(days=40), step=timedelta(minutes=5))
    new = make_rows(10, start=now - timedelta(days=1), step=timedelta(minutes=5),
                    producer_id=f"p-{uuid.uuid4().hex[:6]}")
    assert _store_twice(private_db, old + new) == (30, 0)
    with pytest.raises(ConfigurationError, match="hypertable"):
        asyncio.run(cleanup(private_db, schema=SCHEMA, retention_days=30, detach=True))
    dry = asyncio.run(cleanup(private_db, schema=SCHEMA, retention_days=30, dry_run=True,
                              now=now))
    assert dry.deleted_rows == 20 and _count(private_db) == 30
    done = asyncio.run(cleanup(private_db, schema=SCHEMA, retention_days=30, now=now))
    assert done.deleted_rows == 20 and _count(private_db) == 10
    cutoff = now - timedelta(days=30)
    chunk_calls = asyncio.run(fetch(
        private_db, "SELECT fn, args[1] AS rel, args[2]::timestamptz AS older_than "
                    "FROM ts_stub.calls WHERE fn IN ('show_chunks', 'drop_chunks')"))
    assert [(r["fn"], r["rel"], r["older_than"]) for r in chunk_calls] == [
        ("show_chunks", "app.activity_logs", cutoff),
        ("drop_chunks", "app.activity_logs", cutoff),
    ]


def test_timescaledb_stub_refuses_the_plain_tables_id_only_key(private_db: str) -> None:
    """The stub can fail: a plain table (primary key (id)) cannot become a hypertable."""
    asyncio.run(execute(private_db, TIMESCALE_STUB))
    asyncio.run(init_db(private_db, schema=SCHEMA))
    with pytest.raises(asyncpg.PostgresError, match='without the column "timestamp"'):
        asyncio.run(init_db(private_db, schema=SCHEMA, layout="timescaledb"))
