"""The query API over ``activity_logs``: ``ActivityLogCRUD`` and its shared instance.

Works on a SQLAlchemy ``AsyncSession`` (or ``AsyncConnection``) bound to PostgreSQL (asyncpg)
or to the embedded SQLite store (aiosqlite)::

    activities = await activity_log_crud.get_recent_activities(db, limit=100)
    activities = await activity_log_crud.get_activities_by_date_range(
        db, start_date, end_date, activity_type="call_created")
    summary = await activity_log_crud.get_activity_summary(db, days=30)

Every list query orders on ``(timestamp, id)`` and pages with a keyset cursor (never OFFSET),
so page 10,000 costs what page 1 costs. On PostgreSQL each query is served by one of the
table's indexes (time; actor+time; target+time; type+time; request_id); see docs/queries.md.

Three modules, one job each: ``crud_results`` (what comes back: ``ActivityRecord``,
``ActivityCursor``, ``ActivityPage``, ``ActivitySummary``, ``ProducerSequence``),
``crud_select`` (which rows: ``ActivityFilter``, ``build_select``, ``as_utc``) and this one
(running the queries). The names of all three stay importable from here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Date, and_, cast, func, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from .crud_results import (
    ActivityCursor,
    ActivityPage,
    ActivityRecord,
    ActivitySummary,
    ProducerSequence,
)
from .crud_select import MAX_LIMIT, ActivityFilter, Order, as_utc, build_select, check_limit
from .db import quote_identifier
from .exceptions import ConfigurationError
from .levels import SEVERITIES
from .rollup import activity_log_daily
from .schema import activity_logs

Database = AsyncSession | AsyncConnection

_t = activity_logs


def _dialect_name(db: Database) -> str:
    if isinstance(db, AsyncSession):
        return db.get_bind().dialect.name
    return db.dialect.name


def _summary(first_day: date, last_day: date, by_type: dict[str, int],
             by_severity: dict[str, int], counted: dict[str, int]) -> ActivitySummary:
    """The ``ActivitySummary`` of ``[first_day, last_day]``: days zero-filled, severities in
    level order (unknown ones after), ``by_type`` as given (by count, then name)."""
    days = (last_day - first_day).days + 1
    by_day = {(first_day + timedelta(days=i)).isoformat(): 0 for i in range(days)}
    for key, n in counted.items():
        if key in by_day:
            by_day[key] = n
    ordered_sev: dict[str, int] = {s: by_severity[s] for s in SEVERITIES if s in by_severity}
    ordered_sev.update({k: v for k, v in by_severity.items() if k not in ordered_sev})
    return ActivitySummary(
        days=days, since=as_utc(first_day), until=as_utc(last_day, end=True),
        total=sum(by_type.values()), by_type=by_type, by_severity=ordered_sev, by_day=by_day,
    )


class ActivityLogCRUD:
    """Read-side queries over ``activity_logs``. Stateless; one shared instance is enough.

    Methods never commit and never write. Bad arguments raise ``ConfigurationError``;
    database errors propagate as SQLAlchemy exceptions.
    """

    async def get_page(
        self,
        db: Database,
        filters: ActivityFilter | None = None,
        *,
        limit: int = 100,
        cursor: ActivityCursor | str | None = None,
        order: Order = "desc",
    ) -> ActivityPage:
        """One page of activities matching ``filters``, and the cursor of the next page."""
        check_limit(limit)
        # One extra row tells whether another page exists without a COUNT.
        stmt = build_select(filters, order=order, cursor=cursor, limit=limit + 1)
        result = await db.execute(stmt)
        items = [ActivityRecord.from_row(row) for row in result]
        more = len(items) > limit
        del items[limit:]
        return ActivityPage(items, items[-1].cursor if more and items else None)

    async def get_recent_activities(
        self,
        db: Database,
        limit: int = 100,
        *,
        cursor: ActivityCursor | str | None = None,
        activity_type: str | Sequence[str] | None = None,
        actor_type: str | None = None,
        actor_id: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        request_id: str | None = None,
        severity: str | Sequence[str] | None = None,
        text: str | None = None,
    ) -> list[ActivityRecord]:
        """The newest ``limit`` activities matching the filters, newest first.

        Pass ``cursor=activities[-1].cursor`` to get the page after a previous result.
        """
        filters = ActivityFilter.build(
            activity_type=activity_type, actor_type=actor_type, actor_id=actor_id,
            target_type=target_type, target_id=target_id, request_id=request_id,
            severity=severity, text=text,
        )
        return (await self.get_page(db, filters, limit=limit, cursor=cursor)).items

    async def get_activities_by_date_range(
        self,
        db: Database,
        start_date: datetime | date,
        end_date: datetime | date,
        activity_type: str | Sequence[str] | None = None,
        *,
        limit: int = 1000,
        cursor: ActivityCursor | str | None = None,
        order: Order = "desc",
        actor_type: str | None = None,
        actor_id: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        request_id: str | None = None,
        severity: str | Sequence[str] | None = None,
        text: str | None = None,
    ) -> list[ActivityRecord]:
        """Activities with ``start_date <= timestamp < end_date`` (a ``date`` end: that whole day).

        At most ``limit`` rows, newest first unless ``order="asc"``; page on with ``cursor``.
        """
        filters = ActivityFilter.build(
            start=start_date, end=end_date, activity_type=activity_type, actor_type=actor_type,
            actor_id=actor_id, target_type=target_type, target_id=target_id,
            request_id=request_id, severity=severity, text=text,
        )
        return (await self.get_page(db, filters, limit=limit, cursor=cursor, order=order)).items

    async def get_activity_summary(
        self, db: Database, days: int = 30, *, now: datetime | None = None
    ) -> ActivitySummary:
        """Counts over the last ``days`` whole UTC days (today included): by type, severity, day.

        On PostgreSQL it reads the daily rollup (``rollup.activity_log_daily``, made by
        ``init-db``): one query over a few hundred rows a month, whatever the number of
        activities. Without the rollup (a table made before it, PostgreSQL before 15, a role
        that may not read it) and on SQLite it counts the rows of the window; the answer is
        the same.
        """
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            raise ConfigurationError(f"days must be an integer from 1 to 3660, got {days!r}")
        current = as_utc(now) if now is not None else datetime.now(UTC)
        first_day = current.date() - timedelta(days=days - 1)
        if _dialect_name(db) == "postgresql" and await self._rollup_readable(db):
            return await self.summary_from_rollup(db, first_day, current.date())
        return await self.summary_from_rows(db, first_day, current.date())

    @staticmethod
    async def _rollup_readable(db: Database) -> bool:
        name = quote_identifier(activity_log_daily.name)
        readable = (await db.execute(
            select(func.coalesce(func.has_table_privilege(func.to_regclass(name), "SELECT"),
                                 False)))).scalar_one()
        return bool(readable)

    async def summary_from_rollup(
        self, db: Database, first_day: date, last_day: date
    ) -> ActivitySummary:
        """The summary of the UTC days ``[first_day, last_day]`` from the daily rollup
        (PostgreSQL; one query with ``GROUPING SETS``). ``get_activity_summary`` chooses."""
        d = activity_log_daily
        n = d.c["count"]
        stmt = (
            select(func.grouping(d.c.day), func.grouping(d.c.activity_type), d.c.day,
                   d.c.activity_type, d.c.severity, func.sum(n))
            .where(d.c.day >= first_day, d.c.day <= last_day)
            .group_by(func.grouping_sets(d.c.day, d.c.activity_type, d.c.severity))
        )
        by_type: dict[str, int] = {}
        by_severity: dict[str, int] = {}
        counted: dict[str, int] = {}
        for no_day, no_type, day, activity_type, severity, total in await db.execute(stmt):
            if not no_day:
                counted[day.isoformat()] = int(total)
            elif not no_type:
                by_type[str(activity_type)] = int(total)
            else:
                by_severity[str(severity)] = int(total)
        ranked = dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
        return _summary(first_day, last_day, ranked, by_severity, counted)

    async def summary_from_rows(
        self, db: Database, first_day: date, last_day: date
    ) -> ActivitySummary:
        """The summary of the UTC days ``[first_day, last_day]`` counted from the rows of the
        window (both stores; what ``get_activity_summary`` does without a rollup)."""
        window = and_(_t.c.timestamp >= as_utc(first_day),
                      _t.c.timestamp < as_utc(last_day, end=True))
        by_type = {
            str(k): int(n) for k, n in await db.execute(
                select(_t.c.activity_type, func.count()).where(window)
                .group_by(_t.c.activity_type).order_by(func.count().desc(), _t.c.activity_type)
            )
        }
        by_severity = {
            str(k): int(n) for k, n in await db.execute(
                select(_t.c.severity, func.count()).where(window).group_by(_t.c.severity)
            )
        }
        if _dialect_name(db) == "postgresql":
            day_expr: Any = cast(func.timezone("UTC", _t.c.timestamp), Date)
        else:  # SQLite stores naive UTC text: its first 10 characters are the UTC day
            day_expr = func.substr(_t.c.timestamp, 1, 10)
        counted = {
            (d.isoformat() if isinstance(d, date) else str(d)): int(n)
            for d, n in await db.execute(
                select(day_expr, func.count()).where(window).group_by(day_expr)
            )
        }
        return _summary(first_day, last_day, by_type, by_severity, counted)

    async def count(self, db: Database, filters: ActivityFilter | None = None) -> int:
        """How many activities match ``filters``."""
        stmt = select(func.count()).select_from(_t)
        conds = (filters or ActivityFilter()).conditions()
        if conds:
            stmt = stmt.where(*conds)
        return int((await db.execute(stmt)).scalar_one())

    async def get_newest_timestamp(self, db: Database) -> datetime | None:
        """The timestamp of the newest stored activity, or ``None`` for an empty table."""
        value = (await db.execute(select(func.max(_t.c.timestamp)))).scalar_one_or_none()
        return as_utc(value) if isinstance(value, datetime) else None

    async def iter_batches(
        self,
        conn: AsyncConnection,
        filters: ActivityFilter | None = None,
        *,
        order: Order = "asc",
        batch_size: int = 2000,
    ) -> AsyncGenerator[Sequence[Row[Any]], None]:
        """Every matching row, in batches of at most ``batch_size``, from a server-side cursor.

        Constant memory: one batch is held at a time. Rows hold every column in table order
        (``schema.COLUMNS``), what ``export.encode_jsonl``/``encode_csv`` take. Needs an
        ``AsyncConnection`` (not a session) whose transaction outlives the iteration:
        PostgreSQL server-side cursors live as long as their transaction
        (``db.read_connection`` holds one for its whole block). Close the iterator
        (``contextlib.aclosing``) when stopping early.
        """
        result = await conn.stream(
            build_select(filters, order=order).execution_options(yield_per=batch_size)
        )
        try:
            async for batch in result.partitions(batch_size):
                yield batch
        finally:
            await result.close()

    async def iter_activities(
        self,
        conn: AsyncConnection,
        filters: ActivityFilter | None = None,
        *,
        order: Order = "asc",
        batch_size: int = 2000,
    ) -> AsyncGenerator[ActivityRecord, None]:
        """Every matching activity as an ``ActivityRecord``, streamed as ``iter_batches``."""
        async for batch in self.iter_batches(conn, filters, order=order, batch_size=batch_size):
            for row in batch:
                yield ActivityRecord.from_row(row)

    async def get_sequence_report(
        self, db: Database, *, producer_id: str | None = None, since: datetime | date | None = None
    ) -> list[ProducerSequence]:
        """Per ``producer_id``: rows, sequence range, missing numbers (gaps) and duplicates.

        A gap inside a producer's stored range means records were lost (or expired by a
        cleanup that cut through its range: pass ``since`` after the retention cutoff).
        Rows without ``producer_id``/``seq`` are ignored. Sorted by producer id.
        """
        conds: list[ColumnElement[bool]] = [_t.c.producer_id.is_not(None), _t.c.seq.is_not(None)]
        if producer_id is not None:
            conds.append(_t.c.producer_id == producer_id)
        if since is not None:
            conds.append(_t.c.timestamp >= as_utc(since))
        stats = await db.execute(
            select(
                _t.c.producer_id, func.count(), func.min(_t.c.seq), func.max(_t.c.seq),
                func.count(_t.c.seq.distinct()),
            ).where(*conds).group_by(_t.c.producer_id).order_by(_t.c.producer_id)
        )
        reports: dict[str, ProducerSequence] = {}
        for pid, rows, first, last, distinct in stats:
            reports[pid] = ProducerSequence(
                producer_id=pid, rows=int(rows), first_seq=int(first), last_seq=int(last),
                missing=int(last) - int(first) + 1 - int(distinct),
                duplicates=int(rows) - int(distinct),
            )
        if any(r.missing for r in reports.values()):
            inner = (
                select(
                    _t.c.producer_id.label("p"), _t.c.seq.label("s"),
                    func.lead(_t.c.seq)
                    .over(partition_by=_t.c.producer_id, order_by=_t.c.seq)
                    .label("nxt"),
                ).where(*conds).subquery()
            )
            gaps = await db.execute(
                select(inner.c.p, inner.c.s + 1, inner.c.nxt - 1)
                .where(inner.c.nxt > inner.c.s + 1).order_by(inner.c.p, inner.c.s)
            )
            found: dict[str, list[tuple[int, int]]] = {}
            for pid, start, end in gaps:
                found.setdefault(pid, []).append((int(start), int(end)))
            for pid, ranges in found.items():
                reports[pid] = replace(reports[pid], gaps=ranges)
        return list(reports.values())


activity_log_crud: Final = ActivityLogCRUD()

__all__ = [
    "MAX_LIMIT",
    "ActivityCursor",
    "ActivityFilter",
    "ActivityLogCRUD",
    "ActivityPage",
    "ActivityRecord",
    "ActivitySummary",
    "Database",
    "Order",
    "ProducerSequence",
    "activity_log_crud",
    "as_utc",
    "build_select",
]
