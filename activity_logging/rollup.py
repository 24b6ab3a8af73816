"""The daily rollup of ``activity_logs`` (PostgreSQL): counts per day, type, severity, actor type.

``activity_log_daily`` (``<table>_daily`` for another table name, in the table's own
schema) holds one row per ``(day, activity_type, severity, actor_type)`` with the number of
activities of that UTC day, so a summary (``crud.get_activity_summary``, ``query
--summary``, the viewer's summary page) reads a few hundred rollup rows a month instead of
every activity of the window.

Kept up to date by statement-level ``AFTER`` triggers on the table, with transition tables:

* ``INSERT`` (``REFERENCING NEW TABLE``): the rows the statement really inserted, grouped
  and added in one upsert per statement, the worker's ``COPY`` of a batch and its
  ``INSERT ... ON CONFLICT (id) DO NOTHING`` after a redelivery alike; a skipped duplicate
  is not in the transition table, so it is never counted twice, and a failed batch rolls
  its counts back with it. A record dated last week adds to last week's day.
* ``DELETE`` (``REFERENCING OLD TABLE``): retention's batched deletes (plain tables, and
  the expired rows left in the partition the cutoff falls in) subtract what they remove;
  a count that reaches zero is deleted.
* ``UPDATE`` (old and new rows) and ``TRUNCATE``: the table is append-only, but a rollup
  must not drift if someone does it anyway.

On a partitioned table the triggers are on the parent, which sees every row written
through the parent (as every writer of this library does), and on each monthly partition
(``ensure_partition_triggers``, called by ``partitions.create_partitions``), for statements
naming a partition: a statement fires the statement triggers of the table it names only,
so no row is counted twice, and ``TRUNCATE`` of a partition clears its month only.
``DROP``/``DETACH`` of a partition fires no trigger: ``cleanup`` calls ``forget_partitions``
for the months it removed (and drops the triggers of a detached one). A rollup edited by
hand is made right again by ``rebuild_rollup``.

The trigger function is ``SECURITY DEFINER`` (owned by whoever ran ``init-db``, with a
fixed ``search_path`` and every name schema-qualified), so the writer role needs no
privilege on the rollup; the reader needs ``SELECT`` on it, the maintenance role (which
rebuilds and forgets) ``SELECT, INSERT, UPDATE, DELETE`` or ownership (docs/roles.md).

Needs PostgreSQL 15 (``UNIQUE NULLS NOT DISTINCT``: ``actor_type`` may be NULL). On an older
server ``ensure_rollup`` creates nothing and says so, and summaries read the rows as before.
The embedded SQLite store has no rollup: its summaries read the rows (it holds small trails).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final

from sqlalchemy import BigInteger, Column, Date, MetaData, Table, Text

from .config import DEFAULT_TABLE
from .db import quote_identifier
from .exceptions import ConfigurationError
from .partitions import month_bounds, partition_month
from .urls import is_sqlite

if TYPE_CHECKING:
    import asyncpg

logger: Final = logging.getLogger("activity_logging.rollup")

#: The oldest server with ``UNIQUE NULLS NOT DISTINCT`` (``server_version_num``).
MIN_SERVER_VERSION: Final = 150000

_q: Final = quote_identifier

#: The rollup's key columns, in key order (the order rows are locked in: no deadlocks).
KEY_COLUMNS: Final = ("day", "activity_type", "severity", "actor_type")

# The UTC day of an activity; the same expression everywhere (triggers, rebuild, tests).
DAY_EXPR: Final = "(\"timestamp\" AT TIME ZONE 'UTC')::date"


def rollup_table_name(table: str = DEFAULT_TABLE) -> str:
    """The daily rollup of ``table``: ``activity_log_daily`` for the default table."""
    return "activity_log_daily" if table == DEFAULT_TABLE else f"{table}_daily"


def rollup_function_name(table: str = DEFAULT_TABLE) -> str:
    """The trigger function keeping the rollup of ``table``: ``activity_log_daily_apply``."""
    return f"{rollup_table_name(table)}_apply"


def rollup_trigger_names(table: str = DEFAULT_TABLE) -> dict[str, str]:
    """The triggers on ``table`` by event: ``{"INSERT": "activity_log_daily_on_insert", ...}``."""
    daily = rollup_table_name(table)
    return {event: f"{daily}_on_{event.lower()}"
            for event in ("INSERT", "DELETE", "UPDATE", "TRUNCATE")}


def make_rollup_table(metadata: MetaData, table: str = DEFAULT_TABLE,
                      schema: str | None = None) -> Table:
    """The rollup as an SQLAlchemy model, for queries (its DDL is ``ensure_rollup``'s)."""
    return Table(
        rollup_table_name(table),
        metadata,
        Column("day", Date, nullable=False),
        Column("activity_type", Text, nullable=False),
        Column("severity", Text, nullable=False),
        Column("actor_type", Text),
        Column("count", BigInteger, nullable=False),
        schema=schema,
    )


#: The rollup of the default table, for ``crud``.
activity_log_daily: Final = make_rollup_table(MetaData())


# --- SQL ------------------------------------------------------------------------------------


def _names(schema: str, table: str) -> dict[str, str]:
    daily = rollup_table_name(table)
    return {
        "table": f"{_q(schema)}.{_q(table)}",
        "daily": f"{_q(schema)}.{_q(daily)}",
        "key": _q(f"{daily}_key"),
        "function": f"{_q(schema)}.{_q(rollup_function_name(table))}",
    }


def _upsert(names: dict[str, str], source: str, sign: str) -> str:
    """Add (``sign`` '') or subtract ('-') the counts of ``source``'s rows, in key order."""
    return (
        f"INSERT INTO {names['daily']} AS d (day, activity_type, severity, actor_type, count) "
        f"SELECT {DAY_EXPR}, activity_type, severity, actor_type, {sign}count(*) "
        f"FROM {source} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
        f"ON CONFLICT ON CONSTRAINT {names['key']} DO UPDATE SET count = d.count + excluded.count"
    )


def function_body(schema: str, table: str = DEFAULT_TABLE) -> str:
    """The PL/pgSQL body of the trigger function (compared on each ``init-db``: replaced
    only when it changed, so a re-run needs no privilege on it)."""
    n = _names(schema, table)
    return f"""
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF TG_NARGS = 2 THEN  -- a partition's trigger: its month's days only
            DELETE FROM {n['daily']} WHERE day >= TG_ARGV[0]::date AND day < TG_ARGV[1]::date;
        ELSE
            DELETE FROM {n['daily']};
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        {_upsert(n, 'removed', '-')};
        DELETE FROM {n['daily']} d WHERE d.count <= 0
            AND d.day IN (SELECT DISTINCT {DAY_EXPR} FROM removed);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_upsert(n, 'added', '')};
    END IF;
    RETURN NULL;
END
"""


def _trigger_ddl(schema: str, table: str, event: str, name: str, *, on: str | None = None,
                 args: tuple[str, ...] = ()) -> str:
    """``CREATE TRIGGER`` of the rollup for ``event`` on ``table`` (or on ``on``, one of its
    partitions, with the month's bounds as ``args``)."""
    n = _names(schema, table)
    target = n["table"] if on is None else f"{_q(schema)}.{_q(on)}"
    arguments = ", ".join(_sql_text(a) for a in args)
    referencing = {"INSERT": "REFERENCING NEW TABLE AS added FOR EACH STATEMENT",
                   "DELETE": "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT",
                   "UPDATE": "REFERENCING OLD TABLE AS removed NEW TABLE AS added "
                             "FOR EACH STATEMENT",
                   "TRUNCATE": "FOR EACH STATEMENT"}[event]
    return (f"CREATE TRIGGER {_q(name)} AFTER {event} ON {target} {referencing} "
            f"EXECUTE FUNCTION {n['function']}({arguments})")


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _partition_args(table: str, partition: str) -> tuple[str, ...] | None:
    month = partition_month(table, partition)
    if month is None:
        return None
    start, end = month_bounds(*month)
    return start.date().isoformat(), end.date().isoformat()


async def _partitions_of(conn: asyncpg.Connection, table: str) -> list[str]:
    return [str(r["relname"]) for r in await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1) ORDER BY 1", _q(table))]


async def _add_partition_triggers(conn: asyncpg.Connection, schema: str, table: str,
                                  partition: str) -> bool:
    """Give ``partition`` the rollup's triggers it lacks; True when it lacked any."""
    args = _partition_args(table, partition)
    if args is None:  # not a monthly partition made by this library: left alone
        return False
    present = {str(r["tgname"]) for r in await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1)",
        f"{_q(schema)}.{_q(partition)}")}
    missing = {e: nm for e, nm in rollup_trigger_names(table).items() if nm not in present}
    for event, name in missing.items():
        await conn.execute(_trigger_ddl(schema, table, event, name, on=partition, args=args))
    return bool(missing)


# --- on the server (asyncpg) ----------------------------------------------------------------


async def _schema_of(conn: asyncpg.Connection, table: str) -> str | None:
    value = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass($1)", _q(table))
    return None if value is None else str(value)


async def rollup_present(conn: asyncpg.Connection, *, table: str = DEFAULT_TABLE) -> bool:
    """True when the rollup of ``table`` exists (resolved through ``search_path``)."""
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                    _q(rollup_table_name(table))))


async def ensure_rollup(conn: asyncpg.Connection, *, table: str = DEFAULT_TABLE) -> str | None:
    """Create the rollup of ``table``, its trigger function and triggers when missing; idempotent.

    When the rollup is new, or a trigger was missing (rows may have arrived uncounted), the
    whole rollup is rebuilt from the table in the same transaction, under ``SHARE`` lock
    (writers wait for it; none is lost or counted twice). Each monthly partition of a
    partitioned table gets the triggers too, where this role may create them; one that
    lacked them has its month recounted. A re-run with everything in place only reads the
    catalogs. Returns ``None``, or a one-line notice when the server is older
    than PostgreSQL 15 (nothing is created; summaries read the rows). Raises
    ``LookupError`` when ``table`` does not exist, and asyncpg's errors as they come.
    """
    version = int(await conn.fetchval("SHOW server_version_num"))
    if version < MIN_SERVER_VERSION:
        return (f"the daily rollup {rollup_table_name(table)} needs PostgreSQL 15 or later "
                f"(server_version_num {version}): summaries read every row of their window")
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('activity_logging:rollup:' || $1))", table)
        schema = await _schema_of(conn, table)
        if schema is None:
            raise LookupError(f"table {table!r} does not exist: run `activity-logging init-db`")
        n = _names(schema, table)
        rebuild = False
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", n["daily"]):
            await conn.execute(
                f"CREATE TABLE {n['daily']} (day date NOT NULL, activity_type text NOT NULL, "
                f"severity text NOT NULL, actor_type text, count bigint NOT NULL, "
                f"CONSTRAINT {n['key']} UNIQUE NULLS NOT DISTINCT "
                f"(day, activity_type, severity, actor_type))")
            rebuild = True
        body = function_body(schema, table)
        current = await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)", n["function"] + "()")
        if current != body:
            await conn.execute(
                f"CREATE OR REPLACE FUNCTION {n['function']}() RETURNS trigger LANGUAGE plpgsql "
                f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "
                f"{_literal(body)}")
            # Trigger functions cannot be called directly; no one needs EXECUTE on it.
            await conn.execute(f"REVOKE ALL ON FUNCTION {n['function']}() FROM PUBLIC")
        present = {str(r["tgname"]) for r in await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1)", n["table"])}
        missing = {event: name for event, name in rollup_trigger_names(table).items()
                   if name not in present}
        if missing:
            rebuild = True
            await conn.execute(f"LOCK TABLE {n['table']} IN SHARE MODE")
            for event, name in missing.items():
                await conn.execute(_trigger_ddl(schema, table, event, name))
        # Each monthly partition carries the triggers too, for statements naming it (the
        # parent's fire only for statements naming the parent). A partition that lacked
        # them may hold rows written into it uncounted: recount its month.
        recount = []
        for partition in await _partitions_of(conn, table):
            if not await _may_add_triggers(conn, schema, table, partition):
                logger.debug("partition %s left without the rollup's triggers (no privilege)",
                             partition)
                continue
            if await _add_partition_triggers(conn, schema, table, partition) and not rebuild:
                recount.append(partition)
        if rebuild:
            rows = await _rebuild(conn, n, None, None)
            logger.debug("rollup %s built from %d rows", n["daily"], rows)
        for first, last in partition_days(table, recount):
            await _rebuild(conn, n, first, last)
    return None


def _literal(text: str) -> str:
    """``text`` as a dollar-quoted literal (the body never contains the tag)."""
    tag = "$activity_logging_rollup$"
    assert tag not in text
    return f"{tag}{text}{tag}"


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


async def _rebuild(conn: asyncpg.Connection, n: dict[str, str], first: date | None,
                   last: date | None) -> int:
    """Inside a transaction: lock the table against writers, recount ``[first, last]``."""
    await conn.execute(f"LOCK TABLE {n['table']} IN SHARE MODE")
    cols = "day, activity_type, severity, actor_type, count"
    select = (f"SELECT {DAY_EXPR}, activity_type, severity, actor_type, count(*) "
              f"FROM {n['table']}")
    if first is None or last is None:
        await conn.execute(f"DELETE FROM {n['daily']}")
        status = await conn.execute(f"INSERT INTO {n['daily']} ({cols}) {select} "
                                    "GROUP BY 1, 2, 3, 4")
    else:
        await conn.execute(f"DELETE FROM {n['daily']} WHERE day BETWEEN $1 AND $2", first, last)
        status = await conn.execute(
            f"INSERT INTO {n['daily']} ({cols}) {select} "
            "WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 GROUP BY 1, 2, 3, 4",
            _day_start(first), _day_start(last + timedelta(days=1)))
    return int(status.rsplit(" ", 1)[-1])


async def rebuild_rollup(
    conn: asyncpg.Connection,
    *,
    table: str = DEFAULT_TABLE,
    first_day: date | None = None,
    last_day: date | None = None,
) -> int:
    """Recount the rollup of ``table`` from its rows, for the UTC days ``[first_day,
    last_day]`` (both given) or entirely (neither); returns the rollup rows written.

    One transaction under ``SHARE`` lock on the table: writers wait until it commits (a
    full rebuild of 10,000,000 rows takes seconds; a day's, milliseconds), then their own
    counts add on top, so the result is exact. Raises ``LookupError`` when the rollup does
    not exist (``ensure_rollup`` makes it).
    """
    if (first_day is None) != (last_day is None):
        raise ValueError("give both first_day and last_day, or neither")
    if first_day is not None and last_day is not None and last_day < first_day:
        raise ValueError(f"last_day {last_day} is before first_day {first_day}")
    async with conn.transaction():
        schema = await _schema_of(conn, table)
        if schema is None or not await rollup_present(conn, table=table):
            raise LookupError(f"no rollup {rollup_table_name(table)!r}: run `activity-logging "
                              "init-db`")
        return await _rebuild(conn, _names(schema, table), first_day, last_day)


async def rebuild_rollup_at(
    url: str,
    *,
    schema: str | None = None,
    table: str = DEFAULT_TABLE,
    first_day: date | None = None,
    last_day: date | None = None,
) -> int:
    """``rebuild_rollup`` on a connection of its own to ``url`` (``init-db
    --rebuild-rollup``). Raises ``ConfigurationError`` for a SQLite URL (no rollup there),
    ``StoreUnavailableError`` when the server cannot be reached, and ``ConfigurationError``
    too when the rollup does not exist (PostgreSQL before 15; ``init-db`` never ran)."""
    from .db import connect_pg  # a connection only for this call

    if is_sqlite(url):
        raise ConfigurationError("the daily rollup is PostgreSQL's: SQLite summaries count "
                                 "the rows, there is nothing to rebuild")
    conn = await connect_pg(url, schema=schema)
    try:
        return await rebuild_rollup(conn, table=table, first_day=first_day, last_day=last_day)
    except LookupError as exc:  # PostgreSQL before 15, or init-db never ran
        raise ConfigurationError(str(exc)) from exc
    finally:
        await conn.close()


async def _may_add_triggers(conn: asyncpg.Connection, schema: str, table: str,
                            partition: str) -> bool:
    """Whether this role may put the rollup's triggers on ``partition``: EXECUTE on the
    function (revoked from PUBLIC) and TRIGGER on the partition."""
    return bool(await conn.fetchval(
        "SELECT coalesce(has_function_privilege(to_regprocedure($1), 'EXECUTE') "
        "AND has_table_privilege(to_regclass($2), 'TRIGGER'), false)",
        _names(schema, table)["function"] + "()", f"{_q(schema)}.{_q(partition)}"))


async def ensure_partition_triggers(conn: asyncpg.Connection, partition: str, *,
                                    table: str = DEFAULT_TABLE) -> None:
    """Give a new monthly ``partition`` of ``table`` the rollup's triggers (when ``table``
    has a rollup); ``partitions.create_partitions`` calls it as it creates one. A new
    partition holds no row yet, so nothing is recounted."""
    if not await rollup_present(conn, table=table):
        return
    schema = await _schema_of(conn, table)
    if schema is None:
        return
    # CREATE TRIGGER needs EXECUTE on the function (revoked from PUBLIC: anyone could
    # otherwise feed the rollup from a table of their own) and TRIGGER on the partition.
    # Without them the partition is left without: rows written through the parent (as every
    # writer of this library writes) are counted all the same; ``init-db`` adds them later.
    if not await _may_add_triggers(conn, schema, table, partition):
        logger.debug("partition %s left without the rollup's triggers (no privilege)", partition)
        return
    await _add_partition_triggers(conn, schema, table, partition)


def partition_days(table: str, partitions: Iterable[str]) -> list[tuple[date, date]]:
    """The ``(first day, last day)`` of each monthly partition of ``table`` named in
    ``partitions`` (names ``partitions.partition_name`` did not make are skipped)."""
    spans = []
    for name in partitions:
        month = partition_month(table, name)
        if month is not None:
            start, end = month_bounds(*month)
            spans.append((start.date(), (end - timedelta(days=1)).date()))
    return sorted(spans)


async def forget_partitions(conn: asyncpg.Connection, partitions: Iterable[str], *,
                            table: str = DEFAULT_TABLE) -> int:
    """After ``partitions`` of ``table`` were dropped or detached (no trigger fires for
    that), recount their months from what the table still holds (nothing, unless a late
    record re-created one). Returns the rollup rows left for them. Does nothing when the
    table has no rollup (an older ``init-db``, PostgreSQL before 15).
    """
    names = list(partitions)
    spans = partition_days(table, names)
    if not spans or not await rollup_present(conn, table=table):
        return 0
    for name in names:  # a detached partition keeps its triggers: its rows are no longer ours
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _q(name)):
            for trigger in rollup_trigger_names(table).values():
                await conn.execute(f"DROP TRIGGER IF EXISTS {_q(trigger)} ON {_q(name)}")
    left = 0
    for first, last in spans:
        left += await rebuild_rollup(conn, table=table, first_day=first, last_day=last)
    return left


__all__ = [
    "DAY_EXPR",
    "KEY_COLUMNS",
    "MIN_SERVER_VERSION",
    "activity_log_daily",
    "ensure_partition_triggers",
    "ensure_rollup",
    "forget_partitions",
    "function_body",
    "make_rollup_table",
    "partition_days",
    "rebuild_rollup",
    "rebuild_rollup_at",
    "rollup_function_name",
    "rollup_present",
    "rollup_table_name",
    "rollup_trigger_names",
]
