"""Table layouts of ``activity_logs`` on PostgreSQL and the SQL each one needs (``init-db
--layout``): plain, monthly-partitioned, distributed with Citus, a TimescaleDB hypertable.

A layout is the table model (``layout_table``: which primary key) plus the extension calls
run after the tables exist (``extension_steps``), each a ``Step``: the statement, and a
query telling whether it was done already, so ``init-db`` stays idempotent while
``--print-sql`` prints the plain statements for a DBA to review and run once.

* ``citus``: hash-distributed on ``id`` (``CITUS_DISTRIBUTION_COLUMN``). The primary key
  ``(id)`` contains the distribution column, as Citus requires of every unique index, so
  each shard enforces it and the worker's ``ON CONFLICT DO NOTHING`` keeps working; ``COPY``
  routes each row to the shard of ``hash(id)``. The retention cut markers are a reference
  table (one copy per node: small, read with the rows). ``citus-partitioned`` is the same,
  on the monthly-partitioned table (primary key ``(id, timestamp)``, holding both the
  distribution and the partition column): retention drops whole months as on one server.
* ``timescaledb``: a hypertable of 1-day chunks on ``timestamp`` (TimescaleDB 2.13 or later:
  ``by_range``), primary key ``(id, timestamp)`` (every unique index of a hypertable holds
  the time column), compressed after ``TIMESCALE_COMPRESS_AFTER`` by a policy. No retention
  policy: ``cleanup`` drops the chunks (``drop_chunks``) after writing the signed cut
  markers ``verify`` needs; a background job deleting rows without them would look, on a
  signed trail, like tampering.

Neither distributed layout gets the daily rollup (``rollup``): its statement triggers with
transition tables are refused on Citus distributed tables and on TimescaleDB hypertables
(before 2.18; still refused for DELETE on compressed chunks). Summaries then read the rows,
as on a server without the rollup. See docs/scaling.md. Pure, except ``detect_layout``,
``extension_schema`` and ``apply_steps``, which take an asyncpg connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from sqlalchemy import MetaData, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from .config import DEFAULT_TABLE
from .db import quote_identifier
from .exceptions import ConfigurationError
from .partitions import make_partitioned_table, make_time_keyed_table
from .schema import cuts_table_name, make_table

if TYPE_CHECKING:
    import asyncpg

PLAIN: Final = "plain"
PARTITIONED: Final = "partitioned"
CITUS: Final = "citus"
CITUS_PARTITIONED: Final = "citus-partitioned"
TIMESCALEDB: Final = "timescaledb"
#: Every layout ``init-db --layout`` takes, the default first.
LAYOUTS: Final = (PLAIN, PARTITIONED, CITUS, CITUS_PARTITIONED, TIMESCALEDB)
#: The layouts built on monthly declarative partitions (``partitions``).
MONTHLY: Final = frozenset({PARTITIONED, CITUS_PARTITIONED})
#: The layouts without the daily rollup's triggers.
WITHOUT_ROLLUP: Final = frozenset({CITUS, CITUS_PARTITIONED, TIMESCALEDB})

#: Citus: the hash distribution column. ``id`` spreads rows evenly (a hash of a uuid), is
#: never NULL, and keeps the primary key ``(id)``; ``actor_id`` or ``producer_id`` would put
#: an actor's or a producer's rows on one shard but may be NULL and would make the key
#: ``(id, actor_id)``, an id unique only per actor (docs/scaling.md).
CITUS_DISTRIBUTION_COLUMN: Final = "id"
#: The function whose schema says where an extension's functions live (``extension_schema``).
MARKER_FUNCTIONS: Final = {CITUS: "create_distributed_table", TIMESCALEDB: "create_hypertable"}
#: TimescaleDB: the chunk interval, how old a chunk is compressed, and the compression layout:
#: segments by ``activity_type`` (few values, filtered on), ordered by time, newest first,
#: then ``id``: every column of the unique key ``(id, timestamp)`` is in the segment-by or
#: the order-by list, as TimescaleDB asks of a unique index on compressed chunks (it warns
#: otherwise, and checks a late insert against more of the compressed rows).
TIMESCALE_CHUNK_INTERVAL: Final = "1 day"
TIMESCALE_COMPRESS_AFTER: Final = "7 days"
TIMESCALE_SEGMENTBY: Final = "activity_type"
TIMESCALE_ORDERBY: Final = '"timestamp" DESC, id'
#: The schema a DBA's extension is usually in, used by ``--print-sql`` (the server's own
#: is looked up when ``init-db`` runs): Citus installs in ``pg_catalog``, TimescaleDB in
#: the schema it was created in, ``public`` by default.
DEFAULT_EXTENSION_SCHEMA: Final = {CITUS: "pg_catalog", TIMESCALEDB: "public"}

_q: Final = quote_identifier


class Step(NamedTuple):
    """One extension statement: ``sql``, and ``done``, a query returning true when it was
    already done (``None``: the statement is idempotent itself)."""

    sql: str
    done: str | None = None


def check_layout(layout: str) -> str:
    """``layout`` when it is one of ``LAYOUTS``; else ``ConfigurationError``."""
    if layout not in LAYOUTS:
        raise ConfigurationError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def extension_of(layout: str) -> str | None:
    """The extension ``layout`` needs: ``citus``, ``timescaledb`` or ``None``."""
    if layout in (CITUS, CITUS_PARTITIONED):
        return CITUS
    return TIMESCALEDB if layout == TIMESCALEDB else None


def layout_table(metadata: MetaData, layout: str, table: str = DEFAULT_TABLE) -> Table:
    """The ``activity_logs`` model of ``layout`` on ``metadata``: primary key ``(id)`` for
    plain and citus, ``(id, timestamp)`` for the others (partitioned by month for the two
    monthly layouts)."""
    check_layout(layout)
    if layout in MONTHLY:
        return make_partitioned_table(metadata, table)
    if layout == TIMESCALEDB:
        return make_time_keyed_table(metadata, table)
    return make_table(metadata, table)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _regclass(name: str) -> str:
    """``name`` (resolved through ``search_path``) as a ``regclass`` literal."""
    return f"{_literal(_q(name))}::regclass"


def _distributed(ext: str, rel: str) -> str:
    """True when Citus already manages ``rel`` (distributed or reference)."""
    return f"SELECT EXISTS (SELECT 1 FROM {ext}.pg_dist_partition WHERE logicalrelid = {rel})"


def extension_steps(layout: str, table: str = DEFAULT_TABLE, *,
                    ext_schema: str | None = None) -> list[Step]:
    """The extension calls of ``layout`` after the tables exist, in order (none for plain
    and partitioned). ``ext_schema`` qualifies the extension's functions and catalogs
    (default ``DEFAULT_EXTENSION_SCHEMA``): ``init-db`` sets ``search_path`` to the
    application schema only, where they are not."""
    extension = extension_of(check_layout(layout))
    if extension is None:
        return []
    ext = _q(ext_schema or DEFAULT_EXTENSION_SCHEMA[extension])
    rel = _regclass(table)
    if extension == CITUS:
        cuts = _regclass(cuts_table_name(table))
        return [
            Step(f"SELECT {ext}.create_distributed_table({rel}, "
                 f"{_literal(CITUS_DISTRIBUTION_COLUMN)})", _distributed(ext, rel)),
            Step(f"SELECT {ext}.create_reference_table({cuts})", _distributed(ext, cuts)),
        ]
    compressed = ("SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h "
                  "WHERE h.compression_enabled AND to_regclass(format('%I.%I', "
                  f"h.hypertable_schema, h.hypertable_name)) = {rel})")
    return [
        Step(f"SELECT {ext}.create_hypertable({rel}, {ext}.by_range('timestamp', "
             f"INTERVAL {_literal(TIMESCALE_CHUNK_INTERVAL)}), "
             "create_default_indexes => FALSE, if_not_exists => TRUE)"),
        Step(f"ALTER TABLE {_q(table)} SET (timescaledb.compress, "
             f"timescaledb.compress_segmentby = {_literal(TIMESCALE_SEGMENTBY)}, "
             f"timescaledb.compress_orderby = {_literal(TIMESCALE_ORDERBY)})", compressed),
        Step(f"SELECT {ext}.add_compression_policy({rel}, "
             f"compress_after => INTERVAL {_literal(TIMESCALE_COMPRESS_AFTER)}, "
             "if_not_exists => TRUE)"),
    ]


def table_statements(layout: str, table: str = DEFAULT_TABLE) -> list[str]:
    """``CREATE TABLE`` and ``CREATE INDEX`` of ``layout``'s ``activity_logs`` and of the cut
    markers, as SQLAlchemy renders them for PostgreSQL (``IF NOT EXISTS``)."""
    from .schema import make_cuts_table

    metadata = MetaData()
    model = layout_table(metadata, layout, table)
    cuts = make_cuts_table(metadata, table)
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's own
    out: list[str] = []
    for each in (model, cuts):
        out.append(str(CreateTable(each, if_not_exists=True).compile(dialect=dialect)).strip())
        out += [str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip()
                for index in sorted(each.indexes, key=lambda i: str(i.name))]
    return out


def print_sql(layout: str, table: str = DEFAULT_TABLE) -> str:
    """The whole DDL of ``layout`` as a script for ``psql -f`` (``init-db --layout L
    --print-sql``): the tables and indexes, then the extension calls. ``init-db`` itself
    does more that this script leaves out: the monthly partitions (``activity-logging
    partitions``), the dead-letter table, the trigram index, the daily rollup."""
    extension = extension_of(check_layout(layout))
    lines = [f"-- activity_logging: activity_logs, layout {layout} (docs/scaling.md)",
             "-- run once, on a fresh database, with search_path set to the target schema",
             "\\set ON_ERROR_STOP on"]
    if extension is not None:
        lines.append(f"-- needs: CREATE EXTENSION {extension}; (by a superuser, "
                     f"{extension} in shared_preload_libraries)")
    lines += [f"{sql};" for sql in table_statements(layout, table)]
    lines += [f"{step.sql};" for step in extension_steps(layout, table)]
    if layout in MONTHLY:
        lines.append("-- then: activity-logging partitions (creates the monthly partitions)")
    lines.append("-- not in this script: the dead-letter table, the trigram index on description"
                 + ("" if layout in WITHOUT_ROLLUP else " and the daily rollup")
                 + " (init-db makes them)")
    return "\n".join(lines) + "\n"


# --- on the server (asyncpg) ---------------------------------------------------------------


async def extension_schema(conn: asyncpg.Connection, extension: str) -> str | None:
    """The schema holding ``extension``'s functions (``MARKER_FUNCTIONS``), or ``None`` when
    the database has none: found by the function, not by ``pg_extension``, so a schema of
    look-alike functions with the same signatures stands in for it in tests."""
    found: str | None = await conn.fetchval(
        "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = $1 ORDER BY n.nspname = 'pg_catalog' DESC, n.nspname LIMIT 1",
        MARKER_FUNCTIONS[extension])
    return found


async def require_extension(conn: asyncpg.Connection, layout: str) -> str | None:
    """The schema of ``layout``'s extension (``None`` for a layout without one); raises
    ``ConfigurationError`` naming what a superuser must run when the extension is missing."""
    extension = extension_of(layout)
    if extension is None:
        return None
    schema = await extension_schema(conn, extension)
    if schema is None:
        database = await conn.fetchval("SELECT current_database()")
        raise ConfigurationError(
            f"--layout {layout} needs the {extension} extension in database {database}: a "
            f"superuser adds {extension} to shared_preload_libraries, restarts, and runs "
            f"'CREATE EXTENSION {extension};' there, then init-db again (docs/scaling.md)")
    return schema


async def apply_steps(conn: asyncpg.Connection, steps: Sequence[Step]) -> list[str]:
    """Run each of ``steps`` not done yet (its ``done`` query false), in one transaction.
    Returns the statements run."""
    ran: list[str] = []
    async with conn.transaction():
        for step in steps:
            if step.done is not None and await conn.fetchval(step.done):
                continue
            await conn.execute(step.sql)
            ran.append(step.sql)
    return ran


async def detect_layout(conn: asyncpg.Connection, table: str = DEFAULT_TABLE) -> str | None:
    """The extension that manages ``table`` (resolved through ``search_path``): ``citus``
    for a Citus distributed table, ``timescaledb`` for a hypertable, else ``None``. Reads
    the catalogs only where they exist (never a failing statement)."""
    rel = _q(table)
    citus = await extension_schema(conn, CITUS)
    if citus is not None and await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL",
            f"{_q(citus)}.pg_dist_partition") and await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {_q(citus)}.pg_dist_partition "
            "WHERE logicalrelid = to_regclass($1))", rel):
        return CITUS
    if await conn.fetchval("SELECT to_regclass('timescaledb_information.hypertables') "
                           "IS NOT NULL") and await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h "
            "WHERE to_regclass(format('%I.%I', h.hypertable_schema, h.hypertable_name)) "
            "= to_regclass($1))", rel):
        return TIMESCALEDB
    return None


__all__ = [
    "CITUS",
    "CITUS_DISTRIBUTION_COLUMN",
    "CITUS_PARTITIONED",
    "LAYOUTS",
    "PARTITIONED",
    "PLAIN",
    "TIMESCALEDB",
    "Step",
    "apply_steps",
    "check_layout",
    "detect_layout",
    "extension_of",
    "extension_schema",
    "extension_steps",
    "layout_table",
    "print_sql",
    "require_extension",
    "table_statements",
]
