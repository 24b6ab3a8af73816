"""Monthly partitions of a partitioned ``activity_logs`` (PostgreSQL): names, bounds, DDL.

A partitioned table (``init-db --partitioned``) is ``PARTITION BY RANGE ("timestamp")`` with
one partition per UTC month, named ``<table>_pYYYYMM`` (``partition_name``) and covering
``[first instant of the month, first instant of the next month)`` (``month_bounds``). There
is no DEFAULT partition: the worker creates the months it needs (``ensure_partitions``,
``create_partitions``) and retention drops the months wholly past its cutoff
(``expired_partitions``).

Everything that talks to the server here takes a raw asyncpg connection (``db.connect_pg``):
partition DDL under an advisory lock is driver work that SQLAlchemy adds nothing to, and
the writer (``store_pg``) holds such a connection already. Only partitions named as
``partition_name`` makes them are ever listed or touched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from sqlalchemy import Column, Index, MetaData, PrimaryKeyConstraint, Table

from .config import DEFAULT_TABLE
from .db import quote_identifier
from .schema import make_table

if TYPE_CHECKING:
    import asyncpg

logger: Final = logging.getLogger("activity_logging.partitions")


# --- names and bounds (pure) ---------------------------------------------------------------


def partition_name(table: str, year: int, month: int) -> str:
    """Name of the monthly partition of ``table``: ``activity_logs_p202611``."""
    return f"{table}_p{year:04d}{month:02d}"


def partition_month(table: str, name: str) -> tuple[int, int] | None:
    """The ``(year, month)`` a partition of ``table`` named by ``partition_name`` holds, or
    ``None`` for any other name."""
    match = re.fullmatch(re.escape(table) + r"_p(\d{4})(\d{2})", name)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        return None
    return int(match.group(1)), int(match.group(2))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """``[first instant of the month, first instant of the next month)`` in UTC."""
    ny, nm = _next_month(year, month)
    return datetime(year, month, 1, tzinfo=UTC), datetime(ny, nm, 1, tzinfo=UTC)


def months_from(now: datetime, months_ahead: int) -> list[tuple[int, int]]:
    """The month of ``now`` (UTC; naive is taken as UTC) and the ``months_ahead`` after it."""
    current = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    months = [(current.year, current.month)]
    for _ in range(months_ahead):
        months.append(_next_month(*months[-1]))
    return months


def make_partitioned_table(metadata: MetaData, name: str = DEFAULT_TABLE) -> Table:
    """The ``activity_logs`` model, range-partitioned by month on ``timestamp``.

    Same columns and indexes as ``schema.make_table``; the primary key becomes
    ``(id, timestamp)`` because a partitioned table's unique keys must include the
    partition key.
    """
    return make_time_keyed_table(metadata, name, partition_by='RANGE ("timestamp")')


def make_time_keyed_table(metadata: MetaData, name: str = DEFAULT_TABLE, *,
                          partition_by: str | None = None) -> Table:
    """``schema.make_table``'s columns and indexes with the primary key ``(id, timestamp)``,
    declaratively partitioned by ``partition_by`` when given: the partitioned table, and
    the table a TimescaleDB hypertable is made from (``ddl_variants``), whose unique keys
    must include the time column too."""
    base = make_table(MetaData(), name)
    table = Table(
        name,
        metadata,
        *[Column(c.name, c.type, nullable=c.nullable) for c in base.columns],
        PrimaryKeyConstraint("id", "timestamp", name=f"{name}_pkey"),
        postgresql_partition_by=partition_by,
    )
    for index in base.indexes:
        Index(index.name, *[table.c[col.name] for col in index.columns])
    return table


# --- on the server (asyncpg) ---------------------------------------------------------------


async def is_partitioned(conn: asyncpg.Connection, table: str = DEFAULT_TABLE) -> bool:
    """True when ``table`` (resolved through ``search_path``) is a partitioned table."""
    kind = await conn.fetchval(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)",
        quote_identifier(table),
    )
    return bool(kind == "p")


async def _exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", quote_identifier(name)))


async def _like_parent(conn: asyncpg.Connection, table: str, name: str) -> None:
    """Give partition ``name`` the owner and the grants of its parent ``table``.

    A new table belongs to the role that created it: a login member of the maintenance role
    (docs/roles.md) would own the partition itself, and no other member could drop it or
    VACUUM it. The creator may create a partition only as the parent's owner (a member of
    the owning role), so it may hand the partition to that role. The parent's grants are
    copied too, so the reader can read a partition directly (a detached archive among
    them), as ``roles.sql`` grants on the partitions that exist.
    """
    rows = await conn.fetch(
        "SELECT p.relowner::regrole::text AS owner, c.relowner <> p.relowner AS differs, "
        "a.grantee, a.privilege_type "
        "FROM pg_class p CROSS JOIN pg_class c "
        "LEFT JOIN LATERAL aclexplode(p.relacl) a ON a.grantee <> p.relowner "
        "WHERE p.oid = to_regclass($1) AND c.oid = to_regclass($2)",
        quote_identifier(table), quote_identifier(name))
    if not rows:
        return
    if rows[0]["differs"]:
        # regrole::text is already quoted as an identifier where needed.
        await conn.execute(f"ALTER TABLE {quote_identifier(name)} OWNER TO {rows[0]['owner']}")
    for row in rows:
        if row["grantee"] is None:
            continue
        grantee = "PUBLIC" if row["grantee"] == 0 else await conn.fetchval(
            "SELECT $1::oid::regrole::text", row["grantee"])
        await conn.execute(
            f"GRANT {row['privilege_type']} ON TABLE {quote_identifier(name)} TO {grantee}")


async def create_partitions(
    conn: asyncpg.Connection, months: Iterable[tuple[int, int]], *, table: str = DEFAULT_TABLE
) -> list[str]:
    """Create the monthly partitions of ``table`` for ``months`` that do not exist yet.

    Safe against concurrent workers: creation runs under a transaction-scoped advisory lock
    keyed on the table. A new partition gets the parent's owner and grants (``roles``: the
    maintenance role owns them all, whichever member login created one). Returns the names
    created (empty when all existed). A role that may not create partitions (the writer)
    gets asyncpg's ``InsufficientPrivilegeError`` (SQLSTATE 42501) and creates nothing.
    """
    created: list[str] = []
    wanted = sorted(set(months))
    if not wanted:
        return created
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('activity_logging:' || $1))", table
        )
        for year, month in wanted:
            name = partition_name(table, year, month)
            if await _exists(conn, name):
                continue
            start, end = month_bounds(year, month)
            # Bounds are our own datetimes rendered as ISO literals: no user input in this DDL.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quote_identifier(name)} PARTITION OF "
                f"{quote_identifier(table)} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
            await _like_parent(conn, table, name)
            from .rollup import ensure_partition_triggers  # helper E's: the daily rollup

            await ensure_partition_triggers(conn, name, table=table)
            created.append(name)
    if created:
        logger.debug("created partitions %s", ", ".join(created))
    return created


async def ensure_partitions(
    conn: asyncpg.Connection,
    *,
    table: str = DEFAULT_TABLE,
    months_ahead: int = 3,
    now: datetime | None = None,
) -> list[str]:
    """Create the partitions of ``table`` for the current month and ``months_ahead`` after it.

    The worker calls this at start and periodically, so inserts never fail for want of a
    partition. Returns the names created. Does nothing (returns ``[]``) for a plain table.
    """
    if not await is_partitioned(conn, table):
        return []
    return await create_partitions(
        conn, months_from(now or datetime.now(UTC), months_ahead), table=table
    )


async def absent_months(
    conn: asyncpg.Connection, months: Iterable[tuple[int, int]], *, table: str = DEFAULT_TABLE
) -> list[tuple[int, int]]:
    """The ``(year, month)`` pairs among ``months`` whose partition of ``table`` does not
    exist, sorted. Reads only (no privilege on the table needed)."""
    return [month for month in sorted(set(months))
            if not await _exists(conn, partition_name(table, *month))]


async def missing_partitions(
    conn: asyncpg.Connection,
    *,
    table: str = DEFAULT_TABLE,
    months_ahead: int = 3,
    now: datetime | None = None,
) -> list[str]:
    """The partitions ``ensure_partitions`` would create now (none for a plain table). Reads only."""
    if not await is_partitioned(conn, table):
        return []
    names = [partition_name(table, year, month)
             for year, month in months_from(now or datetime.now(UTC), months_ahead)]
    return [name for name in names if not await _exists(conn, name)]


async def expired_partitions(
    conn: asyncpg.Connection, cutoff: datetime, *, table: str = DEFAULT_TABLE
) -> list[str]:
    """The monthly partitions of ``table`` that lie wholly before ``cutoff``, oldest first.

    Reads only; partitions with other names than ``partition_name`` gives are never listed.
    """
    records = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1)",
        quote_identifier(table),
    )
    dated = []
    for record in records:
        name = str(record["relname"])
        month = partition_month(table, name)
        if month is not None and month_bounds(*month)[1] <= cutoff:
            dated.append((month, name))
    return [name for _, name in sorted(dated)]


__all__ = [
    "absent_months",
    "create_partitions",
    "ensure_partitions",
    "expired_partitions",
    "is_partitioned",
    "make_partitioned_table",
    "make_time_keyed_table",
    "missing_partitions",
    "month_bounds",
    "months_from",
    "partition_month",
    "partition_name",
]
