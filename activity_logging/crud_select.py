"""Which rows a query reads: filters, time bounds, keyset conditions and the ``SELECT``.

Pure SQLAlchemy Core over ``schema.activity_logs``; builds statements, never runs them
(``crud`` does). Every listing selects every column in table order (``schema.COLUMNS``,
what ``ActivityRecord`` and the export formats take) and orders on ``(timestamp, id)``, so
a keyset cursor continues it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal

from sqlalchemy import Select, String, and_, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from .crud_results import ActivityCursor
from .exceptions import ConfigurationError
from .levels import SEVERITIES
from .schema import activity_logs

#: The most rows one page may ask for.
MAX_LIMIT: Final = 10_000
Order = Literal["asc", "desc"]

_t = activity_logs
_EQUALITY_FIELDS: Final = (
    "actor_type", "actor_id", "target_type", "target_id", "request_id", "producer_id",
)


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
            conds.append(_text_condition(self.text))
        return conds


def _text_condition(text: str) -> ColumnElement[bool]:
    """``description ILIKE '%text%'``, ``%``, ``_`` and ``/`` in ``text`` matched literally.

    The pattern goes into the SQL as a literal (``literal_execute``: SQLAlchemy quotes it at
    execution), not as a bound parameter: PostgreSQL then plans every search with its word
    in sight and takes the trigram index (``db.ensure_text_index``) for a rare one, where a
    prepared statement's generic plan, made for any pattern, would scan the table.
    """
    escaped = text.replace("/", "//").replace("%", "/%").replace("_", "/_")
    pattern = literal(f"%{escaped}%", String(), literal_execute=True)
    return _t.c.description.ilike(pattern, escape="/")


def _in(column: Any, values: tuple[str, ...]) -> ColumnElement[bool]:
    # "= x" rather than "IN (x)" for one value keeps the plans in docs/queries.md readable.
    result: ColumnElement[bool] = column == values[0] if len(values) == 1 else column.in_(values)
    return result


def check_limit(limit: int) -> int:
    """``limit`` when it is an integer from 1 to ``MAX_LIMIT``, else ``ConfigurationError``."""
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
    """The SELECT of every column (table order) for ``filters``, ordered on ``(timestamp, id)``.

    ``cursor`` starts right after that position; raises ``ConfigurationError`` for a bad
    ``order`` or a malformed cursor.
    """
    if order not in ("asc", "desc"):
        raise ConfigurationError(f"order must be 'asc' or 'desc', got {order!r}")
    stmt = select(*_t.columns)
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


__all__ = ["MAX_LIMIT", "ActivityFilter", "Order", "as_utc", "build_select", "check_limit"]
