"""The query API over ``activity_logs``: typed results, filters, keyset pagination, summaries.

Works on a SQLAlchemy ``AsyncSession`` (or ``AsyncConnection``) bound to PostgreSQL (asyncpg)
or to the embedded SQLite store (aiosqlite)::

    activities = await activity_log_crud.get_recent_activities(db, limit=100)
    activities = await activity_log_crud.get_activities_by_date_range(
        db, start_date, end_date, activity_type="call_created")
    summary = await activity_log_crud.get_activity_summary(db, days=30)

Every list query orders on ``(timestamp, id)`` and pages with a keyset cursor (never OFFSET),
so page 10,000 costs what page 1 costs. On PostgreSQL each query is served by one of the
table's indexes (time; actor+time; target+time; type+time; request_id); see docs/queries.md.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal

import orjson
from sqlalchemy import Date, Select, and_, cast, func, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from .exceptions import ConfigurationError
from .record import ACTIVITY_COLUMNS, SEVERITIES
from .schema import activity_logs

MAX_LIMIT: Final = 10_000
Order = Literal["asc", "desc"]
Database = AsyncSession | AsyncConnection

_t = activity_logs
_EQUALITY_FIELDS: Final = (
    "actor_type", "actor_id", "target_type", "target_id", "request_id", "producer_id",
)


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """One stored activity. Immutable; ``to_dict()`` is JSON-safe (ids and times as strings)."""

    id: uuid.UUID
    timestamp: datetime
    activity_type: str
    description: str | None
    severity: str
    level: int
    actor_type: str | None
    actor_id: str | None
    target_type: str | None
    target_id: str | None
    changes: Any
    metadata: Any
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    http_method: str | None
    path: str | None
    logger: str | None
    hostname: str | None
    process_id: int | None
    producer_id: str | None
    seq: int | None

    @classmethod
    def from_row(cls, row: Row[Any] | Mapping[str, Any]) -> ActivityRecord:
        """Build from a result row holding every column of ``activity_logs``."""
        m = row._mapping if isinstance(row, Row) else row
        values = {name: m[name] for name in ACTIVITY_COLUMNS}
        rid = values["id"]
        values["id"] = rid if isinstance(rid, uuid.UUID) else uuid.UUID(str(rid))
        ts = values["timestamp"]
        if isinstance(ts, datetime) and ts.tzinfo is None:
            values["timestamp"] = ts.replace(tzinfo=UTC)
        ip = values["ip_address"]
        values["ip_address"] = None if ip is None else str(ip)  # asyncpg gives ipaddress objects
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types: ``id`` and ``timestamp`` (ISO 8601, UTC) as strings."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["id"] = str(self.id)
        out["timestamp"] = self.timestamp.isoformat()
        return out

    def to_json(self) -> bytes:
        """``to_dict()`` encoded as one line of JSON (UTF-8)."""
        return orjson.dumps(self.to_dict())

    @property
    def cursor(self) -> str:
        """The opaque cursor that continues a listing right after this record."""
        return ActivityCursor(self.timestamp, self.id).encode()


@dataclass(frozen=True, slots=True)
class ActivityCursor:
    """A keyset position: the ``(timestamp, id)`` of the last record already seen."""

    timestamp: datetime
    id: uuid.UUID

    def encode(self) -> str:
        """Opaque, URL-safe text form."""
        raw = orjson.dumps([self.timestamp.isoformat(), self.id.hex])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> ActivityCursor:
        """Parse ``encode()``'s output; raises ``ConfigurationError`` for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            decoded = orjson.loads(raw)
            if not (isinstance(decoded, list) and len(decoded) == 2
                    and all(isinstance(part, str) for part in decoded)):
                raise ValueError("a cursor is a [timestamp, id] pair of strings")
            ts_text, id_hex = decoded
            ts = datetime.fromisoformat(ts_text)
            return cls(ts if ts.tzinfo else ts.replace(tzinfo=UTC), uuid.UUID(hex=id_hex))
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise ConfigurationError(f"invalid cursor {text!r}") from None


@dataclass(frozen=True, slots=True)
class ActivityPage:
    """One page of a listing; ``next_cursor`` is ``None`` on the last page."""

    items: list[ActivityRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ActivitySummary:
    """Counts over ``[since, until)``: totals by activity type, by severity and by UTC day.

    ``by_day`` has one key per UTC day in the window (ISO date), zero-filled, oldest first.
    """

    days: int
    since: datetime
    until: datetime
    total: int
    by_type: dict[str, int]
    by_severity: dict[str, int]
    by_day: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out = asdict(self)
        out["since"] = self.since.isoformat()
        out["until"] = self.until.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class ProducerSequence:
    """What the stored trail says about one producer's sequence numbers (loss detection).

    ``missing`` counts sequence numbers absent between ``first_seq`` and ``last_seq``; each
    gap is an inclusive ``(start, end)`` range. ``duplicates`` counts rows sharing a ``seq``.
    """

    producer_id: str
    rows: int
    first_seq: int
    last_seq: int
    missing: int
    duplicates: int
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out = asdict(self)
        out["gaps"] = [list(g) for g in self.gaps]
        return out


# --- filters ------------------------------------------------------------------------------


def as_utc(value: datetime | date, *, end: bool = False) -> datetime:
    """A timezone-aware UTC datetime for a query bound.

    Naive datetimes are taken as UTC. A plain ``date`` means that day's midnight (UTC); as an
    ``end`` bound it means the end of that day, so ``(date(2024,1,1), date(2024,1,31))``
    covers all of January.
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    start = datetime.combine(value, time(0), tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _tuple(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True, slots=True)
class ActivityFilter:
    """Which activities to return. Every field is optional; set fields are ANDed.

    ``start`` is inclusive and ``end`` exclusive (UTC). ``activity_type`` and ``severity``
    take one value or several (any of them). ``text`` matches a case-insensitive substring
    of ``description`` (a filter applied on top of an indexed condition, never alone on a
    large table: combine it with a time window or another filter).
    """

    start: datetime | None = None
    end: datetime | None = None
    activity_type: tuple[str, ...] | None = None
    actor_type: str | None = None
    actor_id: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    request_id: str | None = None
    severity: tuple[str, ...] | None = None
    text: str | None = None
    producer_id: str | None = None

    @classmethod
    def build(
        cls,
        *,
        start: datetime | date | None = None,
        end: datetime | date | None = None,
        activity_type: str | Sequence[str] | None = None,
        actor_type: str | None = None,
        actor_id: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        request_id: str | None = None,
        severity: str | Sequence[str] | None = None,
        text: str | None = None,
        producer_id: str | None = None,
    ) -> ActivityFilter:
        """Validate and normalise; raises ``ConfigurationError`` naming a bad value."""
        severities = _tuple(severity)
        if severities is not None:
            severities = tuple(s.strip().lower() for s in severities)
            bad = [s for s in severities if s not in SEVERITIES]
            if bad:
                allowed = ", ".join(SEVERITIES)
                raise ConfigurationError(f"severity must be one of {allowed}, got {bad[0]!r}")
        start_utc = as_utc(start) if start is not None else None
        end_utc = as_utc(end, end=True) if end is not None else None
        if start_utc is not None and end_utc is not None and end_utc < start_utc:
            raise ConfigurationError(
                f"end ({end_utc.isoformat()}) is before start ({start_utc.isoformat()})"
            )
        return cls(
            start=start_utc, end=end_utc, activity_type=_tuple(activity_type),
            actor_type=actor_type, actor_id=actor_id, target_type=target_type,
            target_id=target_id, request_id=request_id,
            severity=severities, text=text or None, producer_id=producer_id,
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE conditions for this filter."""
        conds: list[ColumnElement[bool]] = []
        if self.start is not None:
            conds.append(_t.c.timestamp >= self.start)
        if self.end is not None:
            conds.append(_t.c.timestamp < self.end)
        if self.activity_type is not None:
            conds.append(_in(_t.c.activity_type, self.activity_type))
        for name in _EQUALITY_FIELDS:
            value = getattr(self, name)
            if value is not None:
                conds.append(_t.c[name] == value)
        if self.severity is not None:
            conds.append(_in(_t.c.severity, self.severity))
        if self.text is not None:
            conds.append(_t.c.description.icontains(self.text, autoescape=True))
        return conds


def _in(column: Any, values: tuple[str, ...]) -> ColumnElement[bool]:
    # "= x" rather than "IN (x)" for one value keeps the plans in docs/queries.md readable.
    result: ColumnElement[bool] = column == values[0] if len(values) == 1 else column.in_(values)
    return result


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ConfigurationError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def _keyset(cursor: ActivityCursor, order: Order) -> ColumnElement[bool]:
    ts, rid = _t.c.timestamp, _t.c.id
    # Spelled out instead of a row comparison: the redundant "timestamp <=" bound is what
    # lets PostgreSQL start the index scan at the cursor on a (…, timestamp) index.
    if order == "desc":
        return and_(ts <= cursor.timestamp, or_(ts < cursor.timestamp, rid < cursor.id))
    return and_(ts >= cursor.timestamp, or_(ts > cursor.timestamp, rid > cursor.id))


def build_select(
    filters: ActivityFilter | None = None,
    *,
    order: Order = "desc",
    cursor: ActivityCursor | str | None = None,
    limit: int | None = None,
) -> Select[Any]:
    """The SELECT of every column for ``filters``, ordered on ``(timestamp, id)``."""
    if order not in ("asc", "desc"):
        raise ConfigurationError(f"order must be 'asc' or 'desc', got {order!r}")
    stmt = select(*[_t.c[name] for name in ACTIVITY_COLUMNS])
    conds = (filters or ActivityFilter()).conditions()
    if cursor is not None:
        position = ActivityCursor.decode(cursor) if isinstance(cursor, str) else cursor
        conds.append(_keyset(position, order))
    if conds:
        stmt = stmt.where(*conds)
    if order == "desc":
        stmt = stmt.order_by(_t.c.timestamp.desc(), _t.c.id.desc())
    else:
        stmt = stmt.order_by(_t.c.timestamp.asc(), _t.c.id.asc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt


def _dialect_name(db: Database) -> str:
    if isinstance(db, AsyncSession):
        return db.get_bind().dialect.name
    return db.dialect.name


# --- the API ------------------------------------------------------------------------------


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
        _check_limit(limit)
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
        """Counts over the last ``days`` whole UTC days (today included): by type, severity, day."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            raise ConfigurationError(f"days must be an integer from 1 to 3660, got {days!r}")
        current = as_utc(now) if now is not None else datetime.now(UTC)
        first_day = current.date() - timedelta(days=days - 1)
        since = as_utc(first_day)
        until = as_utc(current.date(), end=True)
        window = and_(_t.c.timestamp >= since, _t.c.timestamp < until)

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
        by_day = {
            (first_day + timedelta(days=i)).isoformat(): 0 for i in range(days)
        }
        for key, n in counted.items():
            if key in by_day:
                by_day[key] = n
        ordered_sev: dict[str, int] = {s: by_severity[s] for s in SEVERITIES if s in by_severity}
        ordered_sev.update({k: v for k, v in by_severity.items() if k not in ordered_sev})
        return ActivitySummary(
            days=days, since=since, until=until, total=sum(by_type.values()),
            by_type=by_type, by_severity=ordered_sev, by_day=by_day,
        )

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

    async def iter_activities(
        self,
        conn: AsyncConnection,
        filters: ActivityFilter | None = None,
        *,
        order: Order = "asc",
        batch_size: int = 2000,
    ) -> AsyncIterator[ActivityRecord]:
        """Every matching activity, streamed with a server-side cursor in constant memory.

        Needs an ``AsyncConnection`` (not a session) inside a transaction it owns: PostgreSQL
        server-side cursors live as long as their transaction.
        """
        result = await conn.stream(
            build_select(filters, order=order).execution_options(yield_per=batch_size)
        )
        async for partition in result.partitions(batch_size):
            for row in partition:
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
    "ProducerSequence",
    "activity_log_crud",
    "as_utc",
    "build_select",
]
