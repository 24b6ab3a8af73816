"""Rows of ``activity_logs``: the one builder, from a wire record, used by every writer.

The worker builds rows from the records it decoded from stream entries; the handler's
direct mode from the records of a ``wire.Batch`` it made, each decoded once (no entry
is made at all on that path). Either way ``build_activity``
maps a record onto the columns (``schema.COLUMNS``), bounding, cleaning and normalising:
this module is where a value from a producer becomes a stored value. Pure: no I/O.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from ._internal import reporter
from .exceptions import EntryFormatError
from .levels import level_to_severity
from .request_context import canonical_ip
from .schema import TEXT_LIMITS
from .wire import Batch, Entry, decode_entry

if TYPE_CHECKING:
    from .redact import Redactor

Row = dict[str, Any]

_COLUMN_EXTRAS: Final = (
    "actor_type", "actor_id", "target_type", "target_id", "user_agent", "request_id",
    "http_method", "path",
)
_COLUMN_EXTRA_LIMITS: Final = tuple((key, TEXT_LIMITS[key]) for key in _COLUMN_EXTRAS)
_TYPE_LIMIT: Final = TEXT_LIMITS["activity_type"]
_LOGGER_LIMIT: Final = TEXT_LIMITS["logger"]
_DESCRIPTION_LIMIT: Final = TEXT_LIMITS["description"]
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TS_US: Final = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_TS_US: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def _clean_json(value: Any) -> Any:
    """Remove what PostgreSQL's jsonb refuses (NUL characters) from decoded JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_clean_json(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _text(value: Any, limit: int, nul: bool) -> str | None:
    """A text column's value: strings cut to ``limit`` (NULs replaced when ``nul``), else made str."""
    if value is None:
        return None
    if type(value) is str:
        text: str = value
        if nul and "\x00" in text:
            text = text.replace("\x00", "\ufffd")
        return text if len(text) <= limit else text[:limit]
    text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text[:limit]


_EntryColumns = tuple[str | None, int | None, str | None]


def _entry_columns(meta: Mapping[str, Any]) -> _EntryColumns:
    """(hostname, process_id, producer_id) of an entry, cleaned once per entry (cached in meta)."""
    cached = meta.get("_columns")
    if cached is not None:
        # a string target: cast() with a subscripted type would build the type on every call
        return cast("_EntryColumns", cached)
    pid = meta.get("pid")
    columns = (
        _text(meta.get("h"), TEXT_LIMITS["hostname"], True),
        int(pid) if isinstance(pid, int | str) and str(pid).isdigit() else None,
        _text(meta.get("p"), TEXT_LIMITS["producer_id"], True),
    )
    if isinstance(meta, dict):
        meta["_columns"] = columns
    return columns


def build_activity(wire: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Map one wire record (plus its entry's metadata) onto the columns of ``activity_logs``.

    The worker's hot path (measured in benchmarks/bench_worker.py): per-entry values are
    cleaned once per entry, and the walk that replaces NUL characters runs only when
    ``decode_entry`` saw an escaped NUL in the entry's bytes (``meta["_nul"]``; absent means
    "maybe", so hand-made metadata is always cleaned). ``changes`` is normalised to the one
    shape, ``{"field": {"old": ..., "new": ...}}`` (``[old, new]`` pairs rewritten, a scalar
    wrapped as ``{"value": ...}``, empty as None; rules in ``changes.py``). Does not modify
    ``wire``. Raises ``EntryFormatError`` when the record lacks its id or timestamp.
    """
    try:
        record_id = uuid.UUID(wire["id"])
        ts_us = int(wire["ts"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise EntryFormatError(f"record without a valid id/timestamp: {exc!r}") from None
    if not _MIN_TS_US <= ts_us <= _MAX_TS_US:  # datetime's range (e.g. created given in ms)
        raise EntryFormatError(f"record timestamp out of range: {ts_us} us since the epoch")
    nul = meta.get("_nul", True) is not False
    levelno = wire.get("lv")
    level = levelno if type(levelno) is int else logging.INFO
    if not -32768 <= level <= 32767:
        level = max(-32768, min(32767, level))
    msg = _text(wire.get("msg"), _DESCRIPTION_LIMIT, nul) or ""
    x = wire.get("x")
    extras: dict[str, Any] = x.copy() if type(x) is dict else {}
    pop = extras.pop
    activity_type = pop("activity_type", None)
    description = pop("description", None)
    pop("severity", None)  # severity is the record's level; helpers already mapped it
    changes = pop("changes", None)
    ip_raw = pop("ip_address", None)
    explicit_meta = pop("metadata", None)
    row: dict[str, Any] = {
        "id": record_id,
        "timestamp": _EPOCH + timedelta(microseconds=ts_us),
        "activity_type": _text(activity_type if activity_type not in (None, "") else msg,
                               _TYPE_LIMIT, nul) or "",
        "description": _text(description if description is not None else msg, _DESCRIPTION_LIMIT, nul),
        "severity": level_to_severity(level),
        "level": level,
    }
    for key, limit in _COLUMN_EXTRA_LIMITS:
        value = pop(key, None)
        # the common case inline (a short clean string, or nothing): no call at all
        if value is None or (type(value) is str and len(value) <= limit and not nul):
            row[key] = value
        else:
            row[key] = _text(value, limit, nul)
    if ip_raw is None or ip_raw == "":
        row["ip_address"] = None
    else:
        ip = canonical_ip(ip_raw if type(ip_raw) is str else str(ip_raw))
        if ip is None:
            extras["invalid_ip_address"] = str(ip_raw)[:255]
        row["ip_address"] = ip
    if changes == {} or changes == [] or changes == "":  # nothing changed: no value, on every store
        changes = None
    if type(changes) is dict:
        # One shape, {"field": {"old": o, "new": n}}: the seed's [o, n] pairs are rewritten
        # here, where every producer's records pass (the rules are in changes.py, and a test
        # keeps the two in step). A tuple arrives as a list: the extras are JSON by now.
        for value in changes.values():
            if type(value) is list and len(value) == 2:
                changes = {k: {"old": v[0], "new": v[1]} if type(v) is list and len(v) == 2 else v
                           for k, v in changes.items()}
                break
    elif changes is not None and type(changes) is not list:
        changes = {"value": changes}
    if type(explicit_meta) is dict:
        metadata: dict[str, Any] = {**explicit_meta, **extras}
    else:
        metadata = extras
        if explicit_meta is not None:
            metadata["metadata"] = explicit_meta
    exc_text = wire.get("exc")
    if exc_text:
        metadata["exception"] = exc_text
    if nul:
        changes = _clean_json(changes)
        metadata = _clean_json(metadata)
    row["changes"] = changes
    row["metadata"] = metadata
    row["logger"] = _text(wire.get("lg"), _LOGGER_LIMIT, nul)
    row["hostname"], row["process_id"], row["producer_id"] = _entry_columns(meta)
    seq = wire.get("seq")
    row["seq"] = seq if type(seq) is int else None
    return row


def rows_from_batch(batch: Batch) -> tuple[list[Row], int]:
    """The rows of a batch, and how many records could not become rows (each reported).

    A batch the listener made is read record by record (each decoded once, no entry made); a batch
    read back from the spool is decoded from its entry.
    """
    if batch.records is None:
        return rows_from_entries([batch.entry()])
    meta = batch.header()
    meta["_nul"] = any(b"\\u0000" in record for record in batch.records)
    rows: list[Row] = []
    rejected = 0
    for record in batch.records:
        try:
            rows.append(build_activity(orjson.loads(record), meta))
        except Exception as exc:  # any record that cannot be a row, never the others' loss
            rejected += 1
            reporter.report("reject", "a record could not become a row and was dropped", exc)
    return rows, rejected


def rows_from_entries(entries: Sequence[Entry]) -> tuple[list[Row], int]:
    """Decode entries and build one row per record; (rows, records that could not be rows).

    A record that cannot become a row (e.g. a timestamp outside what the database can
    store) is left out and counted, never allowed to block the others.
    """
    rows: list[Row] = []
    rejected = 0
    for entry in entries:
        try:
            meta, records = decode_entry(entry)
        except Exception as exc:  # an entry this version cannot read: a pure function of its bytes
            rejected += _record_count(entry)
            reporter.report("reject", "an entry could not be decoded and was dropped", exc)
            continue
        for rec in records:
            try:
                rows.append(build_activity(rec, meta))
            except Exception as exc:  # as the worker: a record that cannot be a row is left out
                rejected += 1
                reporter.report("reject", "a record could not become a row and was dropped", exc)
    return rows, rejected


def _record_count(entry: Entry) -> int:
    raw: Any = entry.get("n") or 1
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


@functools.cache
def _redactor() -> Redactor:
    """The default-keys redactor ``activity_from_record`` shares (building one costs its
    search terms; its counter is of no use here)."""
    from .redact import Redactor

    return Redactor()


def activity_from_record(
    record: logging.LogRecord, *, producer_id: str = "local", seq: int = 0
) -> Row:
    """The row a handler with default settings would store for ``record`` (``seq`` its number).

    The formatter's and the tests' way to see a row without a store; the same snapshot,
    redaction (the default keys), batch and build as the pipeline.
    """
    from .snapshot import Snapshotter
    from .wire import WireEncoder

    taken = [Snapshotter(context=False, seq=max(0, seq - 1), redactor=_redactor()).take(record)]
    _redactor().redact_in_place(taken)
    rows, _ = rows_from_batch(WireEncoder(producer_id).batch(taken))
    if not rows:
        raise EntryFormatError("the record cannot become a row")
    return rows[0]
