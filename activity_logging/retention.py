"""Retention and maintenance: expire old activities, vacuum the table.

``cleanup`` removes activities older than ``ACTIVITY_LOG_RETENTION_DAYS`` (default 90):

* on a plain table (and the SQLite store) it deletes in bounded batches, one short
  transaction each, so it never holds locks for long nor writes one huge WAL transaction;
* on a monthly-partitioned PostgreSQL table it drops (or detaches, to archive) every
  partition whose whole month is past the cutoff, deletes the few expired rows left in
  the partition the cutoff falls in, and creates the partitions ahead (on Citus too:
  dropping a partition of a distributed table drops its shards);
* on a TimescaleDB hypertable (``init-db --layout timescaledb``) it drops the chunks wholly
  past the cutoff (``drop_chunks``), then deletes the expired rows left in the chunk the
  cutoff falls in; ``detach`` is refused (``ConfigurationError``), chunks are not detached.

The retention period is capped at ``MAX_RETENTION_DAYS`` (36500, a hundred years): a
larger one would put the cutoff before year 1 and is surely a typo.

``cleanup(dry_run=True)`` counts what a run would remove and changes nothing; ``on_progress``
follows a long run batch by batch.

``vacuum`` runs ``VACUUM (ANALYZE)`` outside any transaction, as PostgreSQL requires
(``VACUUM`` then ``ANALYZE`` on SQLite). Both are coroutines; ``run_cleanup`` and
``run_vacuum`` are the blocking equivalents for scripts and the scheduler.

Rows are counted and deleted through SQLAlchemy on both stores (``db.read_connection``);
partition DDL (``partitions``, ``expire_partitions``) and PostgreSQL's ``VACUUM`` take a raw
asyncpg connection (``db.connect_pg``), driver work: ``VACUUM`` must be sent outside any
transaction block, as asyncpg sends a statement without arguments.

Both return what they did and log it only at DEBUG: the caller reports the result (the CLI
prints it once, the scheduler records it as an activity), so it is never said twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import MetaData, Table, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from .chain_store import record_cuts
from .config import DEFAULT_TABLE, require_positive, resolve_retention_days
from .db import connect_pg, quote_identifier, read_connection
from .ddl_variants import TIMESCALEDB, detect_layout, extension_schema
from .exceptions import ConfigurationError
from .partitions import ensure_partitions, expired_partitions, is_partitioned, missing_partitions
from .rollup import forget_partitions
from .schema import activity_logs, make_table
from .signing import KeyRing, resolve_keyring
from .urls import is_sqlite

if TYPE_CHECKING:
    import asyncpg

logger: Final = logging.getLogger("activity_logging.retention")

DEFAULT_BATCH_SIZE: Final = 10_000
#: Longest retention period accepted, in days (a hundred years).
MAX_RETENTION_DAYS: Final = 36_500

#: ``on_progress(rows deleted so far, rows to delete)``; the total is None when not counted.
ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What one ``cleanup`` did. ``deleted_rows`` counts rows deleted row by row (not the
    rows of dropped partitions, which PostgreSQL does not count).

    In a dry run (``dry_run`` True) nothing was changed: ``deleted_rows`` is every row
    older than the cutoff (those of partitions that would be dropped included), the
    partition lists name what would be dropped, detached or created, and ``batches`` is 0.
    On a TimescaleDB hypertable ``dropped_partitions`` names the chunks dropped.
    """

    cutoff: datetime
    retention_days: int
    deleted_rows: int = 0
    batches: int = 0
    dropped_partitions: list[str] = field(default_factory=list)
    detached_partitions: list[str] = field(default_factory=list)
    created_partitions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class VacuumResult:
    """What one ``vacuum`` did."""

    table: str
    statement: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def resolve_cleanup_days(value: int | None = None) -> int:
    """``config.resolve_retention_days`` bounded by ``MAX_RETENTION_DAYS``; raises
    ``ConfigurationError`` outside ``1..MAX_RETENTION_DAYS``."""
    days = resolve_retention_days(value)
    if days > MAX_RETENTION_DAYS:
        raise ConfigurationError(
            f"retention days must be <= {MAX_RETENTION_DAYS} (100 years), got {days}")
    return days


def _table(name: str) -> Table:
    return activity_logs if name == DEFAULT_TABLE else make_table(MetaData(), name)


async def count_before(conn: AsyncConnection, cutoff: datetime, *,
                       table: str = DEFAULT_TABLE) -> int:
    """How many rows have ``timestamp < cutoff`` (one ``COUNT`` on the timestamp index).

    Runs in a transaction of its own: ``conn`` must not be inside one.
    """
    t = _table(table)
    async with conn.begin():
        return int((await conn.execute(
            select(func.count()).select_from(t).where(t.c.timestamp < cutoff))).scalar_one())


async def delete_before(
    conn: AsyncConnection,
    cutoff: datetime,
    *,
    table: str = DEFAULT_TABLE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    composite_key: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Delete rows with ``timestamp < cutoff``, ``batch_size`` rows per transaction.

    Each batch commits on its own: ``conn`` must not be inside a transaction. Returns
    ``(rows deleted, batches)``. ``composite_key`` selects rows by ``(id, timestamp)``, the
    key of a partitioned table, so each lookup prunes to one partition.
    ``on_batch(rows deleted so far, batches)`` is called after each committed batch; what
    it raises is raised here (the batches before it stay deleted).
    """
    t = _table(table)
    if composite_key:
        victims = select(t.c.id, t.c.timestamp).where(t.c.timestamp < cutoff).limit(batch_size)
        stmt = delete(t).where(tuple_(t.c.id, t.c.timestamp).in_(victims))
    else:
        victims = select(t.c.id).where(t.c.timestamp < cutoff).limit(batch_size)
        stmt = delete(t).where(t.c.id.in_(victims))
    total = batches = 0
    while True:
        async with conn.begin():
            deleted = (await conn.execute(stmt)).rowcount
        batches += 1
        total += max(deleted, 0)
        if on_batch is not None:
            on_batch(total, batches)
        if deleted < batch_size:
            return total, batches
        # Let other sessions (the worker's inserts) in between batches.
        await asyncio.sleep(0)


async def expire_partitions(
    conn: asyncpg.Connection, cutoff: datetime, *, table: str = DEFAULT_TABLE,
    detach: bool = False,
) -> list[str]:
    """Drop (or detach) the monthly partitions of ``table`` that lie wholly before ``cutoff``.

    ``conn`` is an asyncpg connection (partition DDL). Only partitions named as
    ``partitions.partition_name`` makes them are touched. Returns their names, oldest first.
    """
    expired = await expired_partitions(conn, cutoff, table=table)
    for name in expired:
        # One short statement per partition: each takes its lock only for a moment.
        if detach:
            await conn.execute(f"ALTER TABLE {quote_identifier(table)} "
                               f"DETACH PARTITION {quote_identifier(name)}")
        else:
            await conn.execute(f"DROP TABLE {quote_identifier(name)}")
        logger.debug("%s partition %s (before %s)", "detached" if detach else "dropped",
                     name, cutoff.isoformat())
    return expired


async def hypertable_extension(conn: asyncpg.Connection, table: str = DEFAULT_TABLE
                               ) -> str | None:
    """The schema of TimescaleDB's functions when ``table`` is a hypertable, else ``None``."""
    if await detect_layout(conn, table) != TIMESCALEDB:
        return None
    return await extension_schema(conn, TIMESCALEDB)


async def drop_chunks(conn: asyncpg.Connection, cutoff: datetime, ext_schema: str, *,
                      table: str = DEFAULT_TABLE, dry_run: bool = False) -> list[str]:
    """Drop the chunks of hypertable ``table`` wholly before ``cutoff`` (TimescaleDB's
    ``drop_chunks``), or with ``dry_run`` list them (``show_chunks``). Returns their names."""
    function = "show_chunks" if dry_run else "drop_chunks"
    rows = await conn.fetch(
        f"SELECT c::text AS name FROM {quote_identifier(ext_schema)}.{function}("
        "to_regclass($1), older_than => $2::timestamptz) AS c", quote_identifier(table), cutoff)
    return [str(row["name"]) for row in rows]


async def _hypertable_of(url: str, schema: str | None, table: str, *, detach: bool
                         ) -> str | None:
    """``hypertable_extension`` on a connection of its own; ``detach`` on a hypertable is
    ``ConfigurationError``, before anything is changed."""
    pg = await connect_pg(url, schema=schema)
    try:
        found = await hypertable_extension(pg, table)
    finally:
        await pg.close()
    if found is not None and detach:
        raise ConfigurationError(
            f"{table} is a TimescaleDB hypertable: its chunks are dropped, not detached "
            "(drop --detach, or copy old chunks elsewhere first; docs/scaling.md)")
    return found


async def cleanup(
    url: str,
    *,
    schema: str | None = None,
    retention_days: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    detach: bool = False,
    months_ahead: int = 3,
    now: datetime | None = None,
    table: str = DEFAULT_TABLE,
    dry_run: bool = False,
    on_progress: ProgressCallback | None = None,
    keyring: KeyRing | None = None,
) -> CleanupResult:
    """Remove activities older than the retention period; see the module docstring.

    ``retention_days`` defaults to ``ACTIVITY_LOG_RETENTION_DAYS``, else 90, and may not
    exceed ``MAX_RETENTION_DAYS``. The cutoff is
    ``now - retention_days`` (UTC); rows with ``timestamp < cutoff`` go, others stay.
    ``dry_run`` counts and lists what would go (see ``CleanupResult``) and changes nothing.
    ``on_progress(deleted, total)`` is called before the first batch and after each one,
    ``total`` being the rows left to delete once expired partitions are gone (one extra
    ``COUNT``, made only when ``on_progress`` is given). Raises ``ConfigurationError`` for
    bad arguments and ``StoreUnavailableError`` when the database cannot be reached.

    On a signed trail it first writes each producer's retention cut marker (``chain_store.
    record_cuts``: the last ``seq`` it deletes and that row's link, signed with ``keyring``,
    default the one ``ACTIVITY_LOG_SIGNING_KEY``/``_FILE`` name), so ``verify`` can tell
    this deletion from tampering; without a key it refuses (``ConfigurationError``) rather
    than delete rows of a signed trail.
    """
    days = resolve_cleanup_days(retention_days)
    require_positive("batch_size", batch_size, integer=True)
    started = time.monotonic()
    current = now.astimezone(UTC) if now is not None and now.tzinfo else (
        now.replace(tzinfo=UTC) if now is not None else datetime.now(UTC)
    )
    cutoff = current - timedelta(days=days)
    hypertable = None if is_sqlite(url) else await _hypertable_of(url, schema, table,
                                                                   detach=detach)
    if dry_run:
        return await _dry_run(url, schema=schema, table=table, days=days, cutoff=cutoff,
                              now=current, months_ahead=months_ahead, detach=detach,
                              started=started, hypertable=hypertable)
    if keyring is None:
        keyring = resolve_keyring()
    async with read_connection(url, schema=schema) as conn:
        await record_cuts(conn, cutoff, keyring, table=table, now=current)
    dropped: list[str] = []
    created: list[str] = []
    partitioned = False
    if not is_sqlite(url):
        pg = await connect_pg(url, schema=schema)
        try:
            partitioned = await is_partitioned(pg, table)
            if hypertable is not None:
                # its primary key is (id, timestamp), as a partitioned table's
                dropped = await drop_chunks(pg, cutoff, hypertable, table=table)
                partitioned = True
            elif partitioned:
                dropped = await expire_partitions(pg, cutoff, table=table, detach=detach)
                # DROP/DETACH fire no trigger: recount those months in the daily rollup
                await forget_partitions(pg, dropped, table=table)
                created = await ensure_partitions(
                    pg, table=table, months_ahead=months_ahead, now=current
                )
        finally:
            await pg.close()
    async with read_connection(url, schema=schema) as conn:
        on_batch: Callable[[int, int], None] | None = None
        if on_progress is not None:
            report, total = on_progress, await count_before(conn, cutoff, table=table)
            report(0, total)

            def on_batch(done: int, _batches: int) -> None:
                report(done, total)

        deleted, batches = await delete_before(
            conn, cutoff, table=table, batch_size=batch_size, composite_key=partitioned,
            on_batch=on_batch,
        )
    result = CleanupResult(
        cutoff=cutoff, retention_days=days, deleted_rows=deleted, batches=batches,
        dropped_partitions=[] if detach else dropped, detached_partitions=dropped if detach else [],
        created_partitions=created, seconds=round(time.monotonic() - started, 3),
    )
    logger.debug("cleanup before %s: %d rows deleted in %d batches, partitions removed: %s",
                 cutoff.isoformat(), deleted, batches, ", ".join(dropped) or "none")
    return result


async def _dry_run(
    url: str, *, schema: str | None, table: str, days: int, cutoff: datetime, now: datetime,
    months_ahead: int, detach: bool, started: float, hypertable: str | None,
) -> CleanupResult:
    """What ``cleanup`` would do, found with reads only."""
    expired: list[str] = []
    ahead: list[str] = []
    if not is_sqlite(url):
        pg = await connect_pg(url, schema=schema)
        try:
            expired = (await drop_chunks(pg, cutoff, hypertable, table=table, dry_run=True)
                       if hypertable is not None
                       else await expired_partitions(pg, cutoff, table=table))
            ahead = await missing_partitions(pg, table=table, months_ahead=months_ahead, now=now)
        finally:
            await pg.close()
    async with read_connection(url, schema=schema) as conn:
        rows = await count_before(conn, cutoff, table=table)
    return CleanupResult(
        cutoff=cutoff, retention_days=days, deleted_rows=rows, batches=0,
        dropped_partitions=[] if detach else expired, detached_partitions=expired if detach else [],
        created_partitions=ahead, seconds=round(time.monotonic() - started, 3), dry_run=True,
    )


async def vacuum(
    url: str, *, schema: str | None = None, analyze: bool = True, table: str = DEFAULT_TABLE
) -> VacuumResult:
    """``VACUUM (ANALYZE)`` the table (PostgreSQL; a partitioned table vacuums every partition).

    On SQLite: ``VACUUM`` (the whole file) then ``ANALYZE``. Runs outside any transaction.
    Raises ``StoreUnavailableError`` when the database cannot be reached.
    """
    started = time.monotonic()
    if is_sqlite(url):
        statement = "VACUUM" + ("; ANALYZE" if analyze else "")
        async with read_connection(url) as conn:
            # VACUUM cannot run inside a transaction: autocommit, one statement at a time.
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql("VACUUM")
            if analyze:
                await auto.exec_driver_sql("ANALYZE")
    else:
        statement = f"VACUUM{' (ANALYZE)' if analyze else ''} {quote_identifier(table)}"
        pg = await connect_pg(url, schema=schema)
        try:
            # asyncpg runs a statement without arguments as a simple query, outside any
            # transaction block: what VACUUM needs, and why this is a raw driver connection.
            await pg.execute(statement)
        finally:
            await pg.close()
    seconds = round(time.monotonic() - started, 3)
    logger.debug("%s done in %.1f s", statement, seconds)
    return VacuumResult(table=table, statement=statement, seconds=seconds)


def run_cleanup(url: str, **kwargs: Any) -> CleanupResult:
    """Blocking ``cleanup`` (runs its own event loop); same arguments and errors."""
    return asyncio.run(cleanup(url, **kwargs))


def run_vacuum(url: str, **kwargs: Any) -> VacuumResult:
    """Blocking ``vacuum`` (runs its own event loop); same arguments and errors."""
    return asyncio.run(vacuum(url, **kwargs))


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_RETENTION_DAYS",
    "CleanupResult",
    "ProgressCallback",
    "VacuumResult",
    "cleanup",
    "count_before",
    "delete_before",
    "drop_chunks",
    "expire_partitions",
    "hypertable_extension",
    "resolve_cleanup_days",
    "run_cleanup",
    "run_vacuum",
    "vacuum",
]
