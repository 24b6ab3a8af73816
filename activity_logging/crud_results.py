"""What the queries return: ``ActivityRecord`` (one row), its keyset ``ActivityCursor``, a
page of them, and the summary and sequence reports. Plain frozen dataclasses, JSON-safe
through ``to_dict()``; no SQL here (``crud_select`` builds it, ``crud`` runs it).

``ActivityRecord`` has one field per column of ``schema.make_table``, in table order
(``schema.COLUMNS``): written out for the type checker, checked against the table by
``tests/unit/test_crud_results.py``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Row

from .exceptions import ConfigurationError
from .schema import COLUMNS


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
    key_id: str | None = None
    prev_mac: str | None = None
    mac: str | None = None
    row_mac: str | None = None

    @classmethod
    def from_row(cls, row: Row[Any] | Mapping[str, Any]) -> ActivityRecord:
        """Build from a result row holding every column of ``activity_logs``."""
        m = row._mapping if isinstance(row, Row) else row
        # a table made before the chain columns existed reads back without them
        values: dict[str, Any] = {name: m.get(name) for name in COLUMNS}
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


__all__ = ["ActivityCursor", "ActivityPage", "ActivityRecord", "ActivitySummary",
           "ProducerSequence"]
