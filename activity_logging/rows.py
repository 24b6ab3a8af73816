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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from ._internal import reporter
from .encoding import MAX_VALUE_BYTES, MAX_VALUE_CHARS
from .entry_limits import entry_bytes
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
_UNSIGNED: Final = {"key_id": None, "prev_mac": None, "mac": None, "row_mac": None}
_MIN_TS_US: Final = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_TS_US: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
#: PostgreSQL ``bigint`` (``seq``) and ``integer`` (``process_id``): values outside are refused
#: here, at build time, not by a database round trip per record.
_BIGINT_MIN: Final = -(2**63)
_BIGINT_MAX: Final = 2**63 - 1
_INT_MAX: Final = 2**31 - 1
#: Encoded bytes the ``metadata`` and the ``changes`` of one row may each take: four times
#: the handler's default ``max_record_bytes`` (64 KiB), which its own records never exceed.
#: Larger ones are cut (``bound_json``) and say so in a ``_truncated`` marker.
MAX_JSON_BYTES: Final = 256 * 1024
#: Bytes of a value ``bound_json`` keeps as a preview of what it cut.
_PREVIEW_BYTES: Final = 512
#: A JSON value re-encoded from its decoded form is at most this many times its source
#: (``1e15`` becomes ``1000000000000000.0``): an entry this many times smaller than the bound
#: cannot hold a value over it, and the check is skipped.
_REENCODE_GROWTH: Final = 5


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
    digits = str(pid) if isinstance(pid, int | str) else ""
    # ASCII digits only (int() refuses "²"), and few enough to fit the integer column
    process_id = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 10 else None
    columns = (
        _text(meta.get("h"), TEXT_LIMITS["hostname"], True),
        process_id if process_id is not None and process_id <= _INT_MAX else None,
        _text(meta.get("p"), TEXT_LIMITS["producer_id"], True),
    )
    if isinstance(meta, dict):
        meta["_columns"] = columns
    return columns


def bound_json(value: Any, limit: int = MAX_JSON_BYTES) -> Any:
    """``value`` (decoded JSON) if it encodes to at most ``limit`` bytes, else a cut copy.

    As the handler cuts an oversized ``extra`` (``snapshot.limit_extras``): in a dict, long
    strings are cut to ``MAX_VALUE_CHARS`` and containers over ``MAX_VALUE_BYTES`` become
    ``{"_truncated": true, "bytes": N, "preview": "..."}``; if that is still over ``limit``
    (or ``value`` is no dict), the whole value becomes such a marker. The marker is what
    makes a cut visible in the stored row. Never raises.
    """
    if value is None:
        return None
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # not from decoded JSON: keep a preview only
        encoded = str(value).encode("utf-8", "replace")
    if len(encoded) <= limit:
        return value
    if type(value) is dict:
        cut: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, str):
                cut[key] = item[:MAX_VALUE_CHARS]
            elif isinstance(item, dict | list):
                inner = orjson.dumps(item)
                cut[key] = item if len(inner) <= MAX_VALUE_BYTES else _marker(inner)
            else:
                cut[key] = item
        if len(orjson.dumps(cut)) <= limit:
            return cut
    return _marker(encoded)


def _marker(encoded: bytes) -> dict[str, Any]:
    return {"_truncated": True, "bytes": len(encoded),
            "preview": encoded[:_PREVIEW_BYTES].decode("utf-8", "replace")}


def build_activity(wire: Mapping[str, Any], meta: Mapping[str, Any], *,
                   max_json_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """Map one wire record (plus its entry's metadata) onto the columns of ``activity_logs``.

    The worker's hot path (measured in benchmarks/bench_worker.py): per-entry values are
    cleaned once per entry, and the walk that replaces NUL characters runs only when
    ``decode_entry`` saw an escaped NUL in the entry's bytes (``meta["_nul"]``; absent means
    "maybe", so hand-made metadata is always cleaned). ``changes`` is normalised to the one
    shape, ``{"field": {"old": ..., "new": ...}}`` (``[old, new]`` pairs rewritten, a scalar
    wrapped as ``{"value": ...}``, empty as None; rules in ``changes.py``). Every text column
    is cut to its ``TEXT_LIMITS``, the exception text to ``MAX_VALUE_CHARS``, and
    ``metadata`` and ``changes`` each to ``max_json_bytes`` encoded bytes (``bound_json``;
    skipped when ``meta["_bytes"]``, the size of the entry's payload, shows no value can be
    that large). Does not modify ``wire``. Raises ``EntryFormatError`` when the record lacks
    its id or timestamp, or its ``seq`` is outside PostgreSQL's ``bigint``: a record that
    would always fail, refused without a database round trip.
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
        metadata["exception"] = exc_text[:MAX_VALUE_CHARS] if type(exc_text) is str else exc_text
    if nul:
        changes = _clean_json(changes)
        metadata = _clean_json(metadata)
    size = meta.get("_bytes")
    if type(size) is not int or size * _REENCODE_GROWTH > max_json_bytes:
        changes = bound_json(changes, max_json_bytes)
        metadata = bound_json(metadata, max_json_bytes)
    row["changes"] = changes
    row["metadata"] = metadata
    row["logger"] = _text(wire.get("lg"), _LOGGER_LIMIT, nul)
    row["hostname"], row["process_id"], row["producer_id"] = _entry_columns(meta)
    seq = wire.get("seq")
    if type(seq) is int:
        if not _BIGINT_MIN <= seq <= _BIGINT_MAX:
            raise EntryFormatError(f"record seq out of range for bigint: {seq}")
        row["seq"] = seq
    else:
        row["seq"] = None
    row.update(_UNSIGNED)  # the chain's columns: signing.seal fills them on a signed trail
    return row


#: Called with each row built and its record's position in the entry (``signing.seal``).
OnRow = Callable[[Row, int], None]


def rows_from_batch(batch: Batch, on_row: OnRow | None = None) -> tuple[list[Row], int]:
    """The rows of a batch, and how many records could not become rows (each reported).

    A batch the listener made is read record by record (each decoded once, no entry made); a batch
    read back from the spool is decoded from its entry. ``on_row(row, position)`` sees each
    row as it is built (the direct mode seals it there: the links need the position).
    """
    if batch.records is None:
        return rows_from_entries([batch.entry()], on_row)
    meta = batch.header()
    meta["_nul"] = any(b"\\u0000" in record for record in batch.records)
    meta["_bytes"] = max(map(len, batch.records), default=0)
    rows: list[Row] = []
    rejected = 0
    for position, record in enumerate(batch.records):
        try:
            row = build_activity(orjson.loads(record), meta)
        except Exception as exc:  # any record that cannot be a row, never the others' loss
            rejected += 1
            reporter.report("reject", "a record could not become a row and was dropped", exc)
            continue
        if on_row is not None:
            on_row(row, position)
        rows.append(row)
    return rows, rejected


def rows_from_entries(entries: Sequence[Entry], on_row: OnRow | None = None
                      ) -> tuple[list[Row], int]:
    """Decode entries and build one row per record; (rows, records that could not be rows).
    ``on_row`` as for ``rows_from_batch`` (the position within its entry).

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
        meta["_bytes"] = entry_bytes(entry)
        for position, rec in enumerate(records):
            try:
                row = build_activity(rec, meta)
            except Exception as exc:  # as the worker: a record that cannot be a row is left out
                rejected += 1
                reporter.report("reject", "a record could not become a row and was dropped", exc)
                continue
            if on_row is not None:
                on_row(row, position)
            rows.append(row)
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
