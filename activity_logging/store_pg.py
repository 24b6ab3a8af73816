"""``PostgresStore``: the PostgreSQL writer of the ``Store`` protocol (asyncpg, ``COPY``).

``COPY`` straight into the table is the fastest idempotent insert measured when no row is
there yet; after a redelivery (a row already present), ``COPY`` into a per-connection
temporary stage then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, each in one
transaction (figures in docs/performance.md, from benchmarks/bench_worker.py). Errors are
classified by SQLSTATE (``is_data_error``).

The store runs as the least-privileged writer role (docs/roles.md): ``connect`` checks the
privileges it needs (INSERT and SELECT on the table, TEMPORARY on the database for the
stage) and raises ``PermissionDeniedError`` naming what is missing; a permission error later
(SQLSTATE 42501) is the same error, never taken for the rows' fault. On a partitioned table
it creates a missing month's partition only when its role may; otherwise the batch raises
``PartitionMissingError`` (transient: the maintenance side creates partitions ahead).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import orjson

from .config import DEFAULT_TABLE
from .db import as_permission_error, connect_pg, is_permission_error, quote_identifier
from .exceptions import (
    ActivityLoggingError,
    ConfigurationError,
    PartitionMissingError,
    PermissionDeniedError,
)
from .partitions import (
    absent_months,
    create_partitions,
    ensure_partitions,
    is_partitioned,
    missing_partitions,
    partition_month,
    partition_name,
)
from .schema import COLUMNS
from .store import is_bad_value
from .urls import asyncpg_dsn, redact_url

if TYPE_CHECKING:
    import asyncpg

STAGE_TABLE: Final = "_activity_stage"
_UNIQUE_VIOLATION: Final = "23505"
#: After a conflict, this many batches go through the stage before ``COPY`` is tried again.
_STAGE_AFTER_CONFLICT: Final = 20
_quote: Final = quote_identifier

# SQLSTATE classes: what a failed insert means for the records in it.
# 22 data exception, 23 integrity violation (bar unique, which ON CONFLICT absorbs),
# 54 program limit exceeded (e.g. a jsonb value too large): the *records* are at fault,
# so the batch is split to isolate them. Everything else (connection loss, 57 operator
# intervention/restart, 53 resources, 40 serialization, 42 a missing table) is about the
# *database*: retry the whole batch later, dead-letter nothing. A permission error (42501,
# in class 42) is the role's, never the rows': ``PermissionDeniedError``.
_DATA_ERROR_CLASSES: Final = ("22", "23", "54")
#: The fix named in every permission error of the writer.
WRITER_FIX: Final = ("grant it the writer role: GRANT activity_log_writer TO <role> "
                     "(roles made by `activity-logging init-db --roles`, docs/roles.md)")


def is_data_error(exc: BaseException) -> bool:
    """True when PostgreSQL rejected the rows themselves (bad value), not the connection.

    Such an error repeats every time the same rows are inserted, so the caller must isolate
    the offending record instead of retrying the batch.
    """
    if is_bad_value(exc):  # asyncpg's encoders refused it before it reached the server
        return True
    if isinstance(exc, ActivityLoggingError) or is_permission_error(exc):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _DATA_ERROR_CLASSES


#: One ``build_activity`` row as the tuple ``COPY`` expects, built in C (``operator.itemgetter``).
row_tuple: Final[Callable[[Mapping[str, Any]], tuple[Any, ...]]] = itemgetter(*COLUMNS)


def _jsonb_encode(value: Any) -> bytes:
    # jsonb binary wire format: a version byte (1) followed by the JSON text.
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


def _inet_encode(value: Any) -> bytes:
    # inet binary wire format: family (2 = IPv4, 3 = IPv6), mask bits, is_cidr, length, address.
    # socket.inet_pton parses in C; the value was already validated by build_activity.
    text = str(value)
    if ":" in text:
        packed = socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0])
        return bytes((3, 128, 0, 16)) + packed
    return bytes((2, 32, 0, 4)) + socket.inet_pton(socket.AF_INET, text)


def _inet_decode(data: bytes) -> str:
    family = socket.AF_INET6 if data[0] == 3 else socket.AF_INET
    return socket.inet_ntop(family, data[4:])


async def set_fast_codecs(conn: asyncpg.Connection) -> None:
    """Make ``conn`` take rows as ``build_activity`` produces them, with the least work.

    jsonb: decoded JSON in, encoded by orjson (binary format); inet: the already validated
    string packed by ``socket.inet_pton`` rather than parsed again by ``ipaddress``.
    """
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode, format="binary"
    )
    await conn.set_type_codec(
        "inet", schema="pg_catalog", encoder=_inet_encode, decoder=_inet_decode, format="binary"
    )


class PostgresStore:
    """Idempotent bulk writer of activity rows into PostgreSQL over one asyncpg connection.

    Not shared between event loops or tasks: each worker writer (or the handler's direct mode,
    through ``sinks.StoreSink``) owns one. Holds no global state. ``insert_activities`` is the hot
    path: ``COPY`` straight into the table, and when a row is already there (a redelivery),
    ``COPY`` into a temporary stage then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, each
    in one transaction, so a record delivered twice is stored once.
    """

    def __init__(self, url: str, *, schema: str | None = None, table: str = DEFAULT_TABLE) -> None:
        asyncpg_dsn(url)  # validate now: ConfigurationError at construction, not at first use
        self.url = url
        self.schema = schema
        self.table = table
        self.conn: asyncpg.Connection | None = None
        self.partitioned = False
        #: The role the connection runs as (``current_user``), once connected.
        self.role: str | None = None
        self._known_months: set[tuple[int, int]] = set()
        self._stage_batches_left = 0
        cols = ", ".join(_quote(c) for c in COLUMNS)
        self._insert_sql = (
            f"INSERT INTO {_quote(table)} ({cols}) SELECT {cols} FROM {STAGE_TABLE} "
            "ON CONFLICT DO NOTHING"
        )

    async def connect(self) -> None:
        """(Re)connect and prepare the stage table.

        Raises ``StoreUnavailableError`` (unreachable), ``ConfigurationError`` when the
        table does not exist (run ``init-db``), and ``PermissionDeniedError`` when the login
        is refused or the role lacks INSERT or SELECT on the table or TEMPORARY on the
        database (the message names each missing privilege and the fix).
        """
        await self.close()
        conn = await connect_pg(self.url, schema=self.schema)
        try:
            found = await conn.fetchrow(
                "SELECT t.oid IS NOT NULL AS present, current_user AS role, "
                "current_database() AS database, "
                "t.oid IS NULL OR has_table_privilege(t.oid, 'INSERT') AS can_insert, "
                "t.oid IS NULL OR has_table_privilege(t.oid, 'SELECT') AS can_select, "
                "has_database_privilege(current_database(), 'TEMPORARY') AS can_temp "
                "FROM (SELECT to_regclass($1) AS oid) t", _quote(self.table))
            assert found is not None  # one row, always
            if not found["present"]:
                raise ConfigurationError(
                    f"table {self.table!r} does not exist in {redact_url(self.url)}"
                    + (f" schema {self.schema!r}" if self.schema else "")
                    + ": run `activity-logging init-db` first"
                )
            self.role = str(found["role"])
            self._require_privileges(found)
            try:
                # ON COMMIT DELETE ROWS empties the stage at every commit; no TRUNCATE round trip.
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} "
                    f"(LIKE {_quote(self.table)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
            except Exception as exc:
                if is_permission_error(exc):
                    raise as_permission_error(exc, role=self.role, doing="create the COPY stage",
                                              fix=WRITER_FIX) from exc
                raise
            self.partitioned = await is_partitioned(conn, self.table)
            await set_fast_codecs(conn)
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        self._known_months.clear()

    def _require_privileges(self, found: Mapping[str, Any]) -> None:
        """Raise ``PermissionDeniedError`` naming every privilege the writer lacks."""
        missing = [what for what, held in (
            (f"INSERT on {self.table} (to store rows)", found["can_insert"]),
            (f"SELECT on {self.table} (the COPY stage copies its columns)", found["can_select"]),
            (f"TEMPORARY on database {found['database']} (the COPY stage, which makes a "
             "redelivered record a no-op, is a temporary table)", found["can_temp"]),
        ) if not held]
        if missing:
            raise PermissionDeniedError(
                f"role {self.role!r} lacks {', '.join(missing)}: {WRITER_FIX}")

    def is_data_error(self, exc: BaseException) -> bool:
        """See ``is_data_error``: the rows were refused, not the connection."""
        return is_data_error(exc)

    async def ensure_partitions(self, months_ahead: int = 3) -> list[str]:
        """Create the current month's partition and ``months_ahead`` after it when missing
        (a partitioned table only; see ``partitions.ensure_partitions``). Returns the names
        created.

        Reads first: when all exist (the maintenance side made them ahead) nothing is
        attempted, so the writer role never fails here. When some are missing and this role
        may not create them, raises ``PartitionMissingError`` naming them.
        """
        conn = await self._conn()
        if not self.partitioned:
            return []
        names = await missing_partitions(conn, table=self.table, months_ahead=months_ahead)
        if not names:
            return []
        try:
            return await ensure_partitions(conn, table=self.table, months_ahead=months_ahead)
        except Exception as exc:
            if not is_permission_error(exc):
                raise
            months = [m for m in (partition_month(self.table, n) for n in names) if m is not None]
            raise await self._missing_error(conn, months, exc, upcoming=True) from exc

    async def _missing_error(self, conn: asyncpg.Connection, months: list[tuple[int, int]],
                             exc: BaseException, *, upcoming: bool) -> PartitionMissingError:
        """The one-line ``PartitionMissingError`` for ``months``, naming the fix."""
        owner = await conn.fetchval("SELECT relowner::regrole::text FROM pg_class "
                                    "WHERE oid = to_regclass($1)", _quote(self.table))
        names = [partition_name(self.table, *m) for m in months]
        listed = ", ".join(f"{y:04d}-{m:02d} ({n})" for (y, m), n in zip(months, names,
                                                                          strict=True))
        flags = " ".join(f"--month {y:04d}-{m:02d}" for y, m in months)
        reason = " ".join(str(getattr(exc, "message", None) or exc).split())
        if upcoming:
            what = "upcoming months have no partition of"
            how, after = " (or `cleanup`, which the scheduler runs daily)", " before they begin"
        else:
            what, how = "records wait for a missing partition of", ""
            after = "; the entries stay pending and are stored once it exists"
        return PartitionMissingError(
            f"{what} {self.table}: {listed}, and role {self.role!r} may not create partitions "
            f"({reason}); the maintenance side makes them ahead: run `activity-logging "
            f"partitions {flags}`{how} as a member of {owner} (the table's owner){after}",
            months=months, partitions=names)

    async def _conn(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            await self.connect()
        assert self.conn is not None
        return self.conn

    async def _ensure_months(
        self, conn: asyncpg.Connection, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        # A backlog can hold records from months before the current one, or clocks can be
        # off: make sure every month in the batch has its partition before inserting.
        months = {(r["timestamp"].year, r["timestamp"].month) for r in rows} - self._known_months
        if not months:
            return
        absent = await absent_months(conn, months, table=self.table)
        if absent:
            try:
                await create_partitions(conn, absent, table=self.table)
            except Exception as exc:
                if not is_permission_error(exc):
                    raise
                raise await self._missing_error(conn, absent, exc, upcoming=False) from exc
        self._known_months |= months

    async def insert_activities(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows`` (``rows.build_activity`` dicts) in one transaction.

        Returns how many rows were newly inserted; the rest were already stored (same id)
        and were skipped. All or nothing: on any error nothing is committed. Raises the
        asyncpg error as is (``is_data_error`` tells a bad record from a database problem),
        ``StoreUnavailableError`` when it cannot connect, ``PermissionDeniedError`` when the
        role is refused (see ``connect``), and ``PartitionMissingError`` when a month of the
        batch has no partition and this role may not create it.
        """
        if not rows:
            return 0
        try:
            return await self._insert(rows)
        except Exception as exc:
            if isinstance(exc, ActivityLoggingError) or not is_permission_error(exc):
                raise
            raise as_permission_error(exc, role=self.role, doing=f"insert into {self.table}",
                                      fix=WRITER_FIX) from exc

    async def _insert(self, rows: Sequence[Mapping[str, Any]]) -> int:
        conn = await self._conn()
        if self.partitioned:
            await self._ensure_months(conn, rows)
        records = [row_tuple(r) for r in rows]
        if self._stage_batches_left <= 0:
            # Optimistic: duplicates only appear after a redelivery, so COPY straight into the
            # table (~1.3x faster than the stage, see benchmarks/bench_worker.py) and fall back
            # to the stage when a row turns out to be there already.
            try:
                async with conn.transaction():
                    status = await conn.copy_records_to_table(
                        self.table, records=records, columns=COLUMNS
                    )
                return int(status.rsplit(" ", 1)[-1])
            except Exception as exc:
                if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
                    raise
                # Redeliveries come in runs (a dead worker's whole backlog): stay on the
                # conflict-tolerant path for a while before trying the fast one again.
                self._stage_batches_left = _STAGE_AFTER_CONFLICT
        self._stage_batches_left -= 1
        async with conn.transaction():
            await conn.copy_records_to_table(STAGE_TABLE, records=records, columns=COLUMNS)
            status = await conn.execute(self._insert_sql)
        return int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        """Close the connection; idempotent, never raises."""
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()

    def abort(self) -> None:
        """Drop the connection at once (``terminate``); never raises."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.terminate()
            except Exception:  # aborting must never raise
                return
