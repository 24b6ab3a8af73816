"""The activity record: snapshot at call time, wire encoding, and building the stored row.

Pure: no I/O. Three stages, each in the process that can afford it:

1. ``snapshot_extras`` runs in the caller's thread and must be tiny: it copies the keys of
   ``extra`` into JSON bytes at once (orjson) so a dict mutated
   after the call cannot change the audit record.
2. ``WireEncoder`` runs in the handler's listener thread: it gives each record its id and
   sequence number and encodes a batch into one stream entry (format in docs/entry-format.md).
3. ``build_activity`` runs wherever rows are written (the worker, the embedded store): it maps
   a wire record onto the columns of ``activity_logs``, bounding, cleaning and redacting.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, Final, cast

import orjson

from .config import HANDLER_TUNABLES
from .exceptions import EntryFormatError

WIRE_VERSION: Final = "1"

# --- severity <-> level ----------------------------------------------------------------

SEVERITIES: Final = ("debug", "info", "warning", "error", "critical")
SEVERITY_TO_LEVEL: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def severity_to_level(severity: str | int | None, default: int = logging.INFO) -> int:
    """Map a severity name (``"warning"``) or a level number onto a ``logging`` level.

    Unknown names give ``default``; never raises.
    """
    if severity is None:
        return default
    if isinstance(severity, int) and not isinstance(severity, bool):
        return severity
    return SEVERITY_TO_LEVEL.get(str(severity).strip().lower(), default)


def level_to_severity(levelno: int) -> str:
    """Map a ``logging`` level onto the stored severity: the named level at or below it."""
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


# --- caller side: snapshot ---------------------------------------------------------------

#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra`` or a filter.
STANDARD_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))
) | {"message", "asctime", "taskName"}

#: Keys that ``logging`` refuses in ``extra`` (``Logger.makeRecord`` raises ``KeyError``).
RESERVED_EXTRA_KEYS: Final = STANDARD_RECORD_ATTRS
_STANDARD_COUNT: Final = len(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)))

MAX_VALUE_CHARS: Final = 16_384
MAX_VALUE_BYTES: Final = 16_384
MAX_MESSAGE_CHARS: Final = 8_192
MAX_RECORD_BYTES: Final = int(HANDLER_TUNABLES["max_record_bytes"][1])  # the handler's default
MAX_REPR_CHARS: Final = 1_024

_OPTS: Final = orjson.OPT_NON_STR_KEYS
_Fragment: Final = orjson.Fragment


def _default(obj: Any) -> Any:
    """orjson fallback: turn anything JSON cannot encode into something it can, bounded."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj[:MAX_VALUE_BYTES]).decode("utf-8", "replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    try:
        text = str(obj)
    except Exception:
        text = f"<unprintable {type(obj).__name__}>"
    return text[:MAX_REPR_CHARS]


def _safe_str(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: orjson (and PostgreSQL) refuse them
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def sanitize(obj: Any, _depth: int = 0, _seen: set[int] | None = None) -> Any:
    """Return a JSON-safe deep copy of ``obj``: cycles, huge ints, odd keys and types made safe.

    The slow path, used only when orjson refuses a value. Never raises.
    """
    if _depth > 32:
        return "<max depth>"
    t = type(obj)
    if t is str:
        return _safe_str(obj)
    if t is float or t is bool or obj is None:
        return obj
    if t is int:
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    seen = set() if _seen is None else _seen
    if isinstance(obj, Mapping | list | tuple | set | frozenset):
        if id(obj) in seen:
            return "<cycle>"
        seen.add(id(obj))
        try:
            if isinstance(obj, Mapping):
                return {_safe_str(str(k))[:MAX_REPR_CHARS]: sanitize(v, _depth + 1, seen)
                        for k, v in list(obj.items())}
            return [sanitize(v, _depth + 1, seen) for v in list(obj)]
        finally:
            seen.discard(id(obj))
    try:
        return orjson.loads(orjson.dumps(obj, option=_OPTS))
    except Exception:
        return sanitize(_default(obj), _depth + 1, seen)


def encode_json(value: Any) -> bytes:
    """orjson-encode ``value``; whatever it holds, fall back to a sanitised copy. Never raises."""
    try:
        return orjson.dumps(value, default=_default)
    except Exception:
        return orjson.dumps(sanitize(value), default=_default, option=_OPTS)


def snapshot_extras(attrs: dict[str, Any], context: Mapping[str, Any] | None = None) -> bytes | None:
    """Serialise the non-standard attributes of a record (its ``extra``) now, as JSON bytes.

    Runs in the caller's thread, so later mutation of a passed dict cannot change the audit
    record, at the cost of one orjson call. ``LogRecord.__init__`` sets the standard
    attributes first and ``makeRecord`` adds ``extra`` after them, so only the tail of
    ``__dict__`` is taken. An attribute named ``extra`` holding a dict is unpacked into the
    snapshot (``unpack_nested_extra``): that is how loguru's standard sink passes the fields of
    ``logger.bind(...)``. ``context`` (the request context) fills keys ``extra`` did not set.
    Returns ``None`` when there is nothing to store. Never raises.
    """
    snap = dict(islice(attrs.items(), _STANDARD_COUNT, None))
    if snap and not snap.keys().isdisjoint(STANDARD_RECORD_ATTRS):  # e.g. "message" from a formatter
        snap = {k: v for k, v in snap.items() if k not in STANDARD_RECORD_ATTRS}
    nested = snap.get("extra")
    if type(nested) is dict:
        snap = unpack_nested_extra(snap, nested)
    if context:
        for key, value in context.items():
            if key not in snap:
                snap[key] = value
    if not snap:
        return None
    try:
        return orjson.dumps(snap, default=_default)
    except Exception:
        return orjson.dumps(sanitize(snap), default=_default, option=_OPTS)


def unpack_nested_extra(snap: Mapping[str, Any], nested: Mapping[str, Any]) -> dict[str, Any]:
    """``snap`` without its ``extra`` key, with the keys of ``nested`` (that key's dict) added.

    loguru's standard sink (``logger.add(handler)``) makes one ``LogRecord`` per message with
    ``extra={"extra": <the bound fields>}``, so ``logger.bind(actor_id=...)`` arrives as a
    single ``extra`` attribute. Unpacked, its keys map onto the columns and ``metadata``
    exactly like stdlib ``extra=`` keys. They win over the record's other attributes: on a
    loguru record those can only come from filters (such as ``ContextFilter``), which never
    overwrite what the caller passed. One level only; a new dict, the inputs are not changed.
    """
    merged = {key: value for key, value in snap.items() if key != "extra"}
    merged.update(nested)
    return merged


def message_of(record: logging.LogRecord) -> str:
    """The record's message, formatted now when it has arguments (they may be mutable)."""
    try:
        msg = record.getMessage() if record.args else record.msg
        if type(msg) is not str:
            msg = str(msg)
    except Exception as exc:
        msg = f"<unformattable message {_safe_repr(record.msg)}: {type(exc).__name__}>"
    return msg if len(msg) <= MAX_MESSAGE_CHARS else msg[:MAX_MESSAGE_CHARS]


def _safe_repr(obj: Any) -> str:
    """``repr(obj)`` cut to 200 characters, or a placeholder when ``__repr__`` raises too."""
    try:
        return repr(obj)[:200]
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def exception_text(record: logging.LogRecord) -> str | None:
    """The formatted exception of a record, if it has one; never raises."""
    try:
        # loguru sets exc_text to "\n" beside exc_info: a blank text is no text
        if record.exc_text and not record.exc_text.isspace():
            return record.exc_text[:MAX_VALUE_CHARS]
        if not record.exc_info:
            return None
        return logging.Formatter().formatException(record.exc_info)[:MAX_VALUE_CHARS]
    except Exception:
        return "<unformattable exception>"


#: What the caller enqueues: (created, levelno, logger name, message, extras as JSON, exception text).
QueuedRecord = tuple[float, int, str, str, bytes | None, str | None]


def queued_from_record(record: logging.LogRecord) -> QueuedRecord:
    """Snapshot a ``LogRecord`` into the tuple the listener encodes."""
    exc = exception_text(record) if record.exc_info or record.exc_text else None
    return (record.created, record.levelno, record.name, message_of(record),
            snapshot_extras(record.__dict__), exc)


# --- listener side: ids, wire encoding ---------------------------------------------------


class IdFactory:
    """Makes time-ordered UUIDs (version 7, RFC 9562) from a record's own creation time.

    The 48-bit millisecond timestamp and a 12-bit sub-millisecond fraction come from
    ``record.created``; the remaining 62 bits are 42 random bits fixed per producer and the
    low 20 bits of the producer's sequence number, so ids are unique without a lock.
    Not thread-safe (one listener thread uses it).
    """

    def __init__(self) -> None:
        node = int.from_bytes(os.urandom(8), "big") & ((1 << 42) - 1)
        # group 4 = variant (0b10) + top 14 node bits; group 5 = low 28 node bits + 20 seq bits
        self._group4 = "-%04x-" % (0x8000 | (node >> 28))
        self._node_low = (node & ((1 << 28) - 1)) << 20
        self._ms = -1
        self._prefix = ""

    def make(self, ts_us: int, seq: int) -> str:
        """Return the canonical string form of the UUID for a record created at ``ts_us``."""
        ms = ts_us // 1000
        if ms != self._ms:
            self._ms = ms
            self._prefix = "%08x-%04x-7" % ((ms >> 16) & 0xFFFFFFFF, ms & 0xFFFF)  # noqa: UP031
        return "%s%03x%s%012x" % (  # noqa: UP031 - one format op is the cheapest here
            self._prefix, ((ts_us - ms * 1000) * 4096) // 1000, self._group4,
            self._node_low | (seq & 0xFFFFF),
        )


_SECRET_WORDS: Final = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "api-key", "authorization",
    "cookie", "private_key", "credit_card", "card_number", "cvv",
)
DEFAULT_REDACT_KEYS: Final = ",".join(_SECRET_WORDS)
REDACTED: Final = "[REDACTED]"


class Redactor:
    """Replaces the values of secret-looking keys (at any depth) with ``[REDACTED]``.

    ``keys`` are case-insensitive substrings of key names (``"token"`` matches
    ``"access_token"``). The cheap tests (``secret_key``, ``scan``) decide whether the walk
    (``redact``) runs at all, so records without secrets pay almost nothing.
    """

    def __init__(self, keys: str | Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        words = [k.strip().lower() for k in (keys.split(",") if isinstance(keys, str) else keys)]
        self.words: tuple[str, ...] = tuple(w for w in words if w)
        self._cache: dict[str, bool] = {}
        self._needles: tuple[bytes, ...] = tuple(w.encode() for w in self.words)

    def secret_key(self, key: str) -> bool:
        """True when ``key`` names a secret (cached)."""
        found = self._cache.get(key)
        if found is None:
            lowered = key.lower()
            found = any(w in lowered for w in self.words)
            if len(self._cache) < 10_000:
                self._cache[key] = found
        return found

    def scan(self, encoded: bytes) -> bool:
        """True when encoded JSON may hold a secret *key* (false positives allowed).

        Finds each word with ``bytes.find`` (a regex alternation measured ~20x slower here)
        and counts a hit only when the string it sits in is followed by ``:``, i.e. is a key:
        a description that merely mentions a password costs a few finds, not a redaction.
        """
        if not self._needles:
            return False
        low = encoded.lower()
        for word in self._needles:
            i = low.find(word)
            while i != -1:
                j = low.find(b'"', i + len(word))
                if j != -1 and low[j + 1 : j + 2] == b":":
                    return True
                i = low.find(word, i + 1)
        return False

    def redact(self, obj: Any) -> tuple[Any, int]:
        """Return a redacted copy of decoded JSON ``obj`` and how many values were replaced."""
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            count = 0
            for key, value in obj.items():
                if self.secret_key(str(key)) and value is not None:
                    out[key] = REDACTED
                    count += 1
                else:
                    out[key], n = self.redact(value)
                    count += n
            return out, count
        if isinstance(obj, list):
            items = [self.redact(v) for v in obj]
            return [v for v, _ in items], sum(n for _, n in items)
        return obj, 0


def limit_extras(raw: bytes, max_record_bytes: int, redactor: Redactor) -> tuple[bytes, int]:
    """Cut an oversized ``extra`` (JSON bytes) to fit ``max_record_bytes``; never raises.

    Secrets are redacted first (a preview must not carry them), then long strings are cut to
    ``MAX_VALUE_CHARS``, containers over ``MAX_VALUE_BYTES`` become
    ``{"_truncated": true, "bytes": N, "preview": "..."}``, and if that is still too large only
    the activity fields survive, beside ``{"_truncated": {"original_bytes": N, "keys": [...]}}``.
    Returns the new bytes and how many values were redacted.
    """
    try:
        extras = orjson.loads(raw)
    except orjson.JSONDecodeError:
        extras = {}
    if not isinstance(extras, dict):
        extras = {"extra": extras}
    extras, redacted = redactor.redact(extras)
    cut: dict[str, Any] = {}
    for key, value in extras.items():
        if isinstance(value, str):
            cut[key] = value[:MAX_VALUE_CHARS]
        elif isinstance(value, dict | list):
            encoded = orjson.dumps(value)
            cut[key] = value if len(encoded) <= MAX_VALUE_BYTES else {
                "_truncated": True, "bytes": len(encoded),
                "preview": encoded[:512].decode("utf-8", "replace"),
            }
        else:
            cut[key] = value
    limited = orjson.dumps(cut)
    if len(limited) <= max_record_bytes - 1024:
        return limited, redacted
    keep: dict[str, Any] = {
        k: str(v)[:255] for k, v in cut.items() if k in _KEPT_WHEN_TRUNCATED and v is not None
    }
    keep["_truncated"] = {"original_bytes": len(raw), "keys": sorted(cut)[:64]}
    return orjson.dumps(keep), redacted


class WireEncoder:
    """Encodes queued records into stream entries. Used by one listener thread; not thread-safe.

    Counts what it had to change: ``truncated`` (records cut to ``max_record_bytes``),
    ``redacted`` (secret values replaced), ``sanitized`` (values orjson refused) and
    ``unencodable`` (records left out of their entry: an impossible ``created`` such as NaN;
    the entry's ``n`` counts only the records it carries).
    """

    def __init__(
        self,
        producer_id: str,
        *,
        max_record_bytes: int = MAX_RECORD_BYTES,
        redactor: Redactor | None = None,
    ) -> None:
        self.producer_id = producer_id
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.max_record_bytes = max_record_bytes
        self.redactor = redactor if redactor is not None else Redactor()
        self.ids = IdFactory()
        self.seq = 0
        self.truncated = 0
        self.redacted = 0
        self.sanitized = 0
        self.unencodable = 0

    def _limit_extras(self, raw: bytes) -> bytes:
        self.truncated += 1
        limited, redacted = limit_extras(raw, self.max_record_bytes, self.redactor)
        self.redacted += redacted
        return limited

    def encode_batch(self, items: Sequence[QueuedRecord]) -> dict[str, bytes | str]:
        """Give each record its id and sequence number; encode all into one stream entry.

        Entry fields: ``v`` (format version), ``n`` (record count), ``p`` (producer id),
        ``h`` (hostname), ``pid``, ``d`` (JSON array of records). See docs/entry-format.md.
        """
        make_id = self.ids.make
        limit = self.max_record_bytes - 1024
        seq = self.seq
        wires: list[dict[str, Any]] = []
        raws: list[bytes | None] = []
        append = wires.append
        try:
            for created, levelno, name, msg, raw, exc in items:
                seq += 1
                ts_us = int(created * 1_000_000)
                wire = {"id": make_id(ts_us, seq), "ts": ts_us, "lv": levelno, "lg": name, "msg": msg,
                        "seq": seq}
                if raw is not None:
                    if len(raw) > limit:
                        raw = self._limit_extras(raw)
                    wire["x"] = _Fragment(raw)
                if exc is not None:
                    wire["exc"] = exc
                append(wire)
                raws.append(raw)
        except Exception:  # e.g. created is NaN: isolate the record, the batch goes on
            wires, raws, seq = self._wires_one_by_one(items, limit)
        self.seq = seq
        try:
            payload = orjson.dumps(wires)
        except Exception:  # e.g. a lone surrogate in a message: fix the records one by one
            self.sanitized += 1
            payload = self._sanitized_payload(wires, raws)
        if self.redactor.scan(payload):
            payload = self._redact_payload(payload)
        return {
            "v": WIRE_VERSION, "n": str(len(wires)), "p": self.producer_id,
            "h": self.hostname, "pid": str(self.pid), "d": payload,
        }

    def _wires_one_by_one(
        self, items: Sequence[QueuedRecord], limit: int
    ) -> tuple[list[dict[str, Any]], list[bytes | None], int]:
        """The slow path of ``encode_batch``: a record that cannot be encoded is left out and
        counted (``unencodable``) without taking a sequence number; the others go on."""
        seq = self.seq
        wires: list[dict[str, Any]] = []
        raws: list[bytes | None] = []
        for item in items:
            try:
                created, levelno, name, msg, raw, exc = item
                ts_us = int(created * 1_000_000)  # NaN and infinities raise here
                wire = {"id": self.ids.make(ts_us, seq + 1), "ts": ts_us, "lv": int(levelno),
                        "lg": str(name), "msg": str(msg), "seq": seq + 1}
                if raw is not None:
                    if len(raw) > limit:
                        raw = self._limit_extras(raw)
                    wire["x"] = _Fragment(raw)
                if exc is not None:
                    wire["exc"] = str(exc)
            except Exception:
                self.unencodable += 1
                continue
            seq += 1
            wires.append(wire)
            raws.append(raw)
        return wires, raws, seq

    def _sanitized_payload(self, wires: list[dict[str, Any]], raws: list[bytes | None]) -> bytes:
        parts = []
        for wire, raw in zip(wires, raws, strict=True):
            plain = dict(wire)
            if raw is not None:
                plain["x"] = orjson.loads(raw)
            parts.append(orjson.dumps(sanitize(plain), default=_default, option=_OPTS))
        return b"[" + b",".join(parts) + b"]"

    def _redact_payload(self, payload: bytes) -> bytes:
        records = orjson.loads(payload)
        for rec in records:
            extras = rec.get("x")
            if isinstance(extras, dict):
                rec["x"], count = self.redactor.redact(extras)
                self.redacted += count
        return orjson.dumps(records)


# --- store side: decoding and building rows ----------------------------------------------


def decode_entry(fields: Mapping[Any, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decode one stream entry into (entry metadata, wire records).

    Raises ``EntryFormatError`` for an entry this version cannot read.
    """
    def get(key: str) -> bytes | str | None:
        value = fields.get(key)
        return fields.get(key.encode()) if value is None else value

    version = get("v")
    if isinstance(version, bytes):
        version = version.decode()
    if version != WIRE_VERSION:
        raise EntryFormatError(f"unsupported entry version {version!r} (this reader knows {WIRE_VERSION})")
    payload = get("d")
    if payload is None:
        raise EntryFormatError("entry has no payload field 'd'")
    try:
        records = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EntryFormatError(f"entry payload is not JSON: {exc}") from None
    if not isinstance(records, list):
        raise EntryFormatError("entry payload is not a JSON array")
    meta: dict[str, Any] = {}
    for key in ("p", "h", "pid", "n"):
        value = get(key)
        meta[key] = value.decode() if isinstance(value, bytes) else value
    # an escaped NUL anywhere in the payload: only then must build_activity walk the JSON values
    meta["_nul"] = b"\\u0000" in (payload if isinstance(payload, bytes) else payload.encode())
    return meta, records


ACTIVITY_COLUMNS: Final = (
    "id", "timestamp", "activity_type", "description", "severity", "level",
    "actor_type", "actor_id", "target_type", "target_id", "changes", "metadata",
    "ip_address", "user_agent", "request_id", "http_method", "path",
    "logger", "hostname", "process_id", "producer_id", "seq",
)

#: Maximum characters stored per text column; longer values are cut (documented in docs/guarantees.md).
TEXT_LIMITS: Final[Mapping[str, int]] = {
    "activity_type": 255, "description": 8_192, "actor_type": 255, "actor_id": 255,
    "target_type": 255, "target_id": 255, "user_agent": 512, "request_id": 255,
    "http_method": 16, "path": 2_048, "logger": 255, "hostname": 255, "producer_id": 64,
}

_KEPT_WHEN_TRUNCATED: Final = frozenset({
    "activity_type", "actor_type", "actor_id", "target_type", "target_id", "request_id",
    "ip_address", "http_method", "description",
})

_COLUMN_EXTRAS: Final = (
    "actor_type", "actor_id", "target_type", "target_id", "user_agent", "request_id",
    "http_method", "path",
)
_COLUMN_EXTRA_LIMITS: Final = tuple((key, TEXT_LIMITS[key]) for key in _COLUMN_EXTRAS)
_SHORT_LIMIT: Final = 255
_DESCRIPTION_LIMIT: Final = TEXT_LIMITS["description"]
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TS_US: Final = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_TS_US: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def _clean_text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else (
        orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
    )
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text[:limit]


def _clean_json(value: Any) -> Any:
    """Remove what PostgreSQL's jsonb refuses (NUL characters) from decoded JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_clean_json(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


@functools.lru_cache(maxsize=4096)
def _canonical_ip(text: str) -> str | None:
    # Cached: the same client addresses recur from record to record, and ipaddress parsing
    # was ~30% of build_activity on the worker's hot path (benchmarks/bench_worker.py).
    try:
        # a zone id ("fe80::1%eth0") is not part of the address, and inet refuses it
        return str(ipaddress.ip_address(text.strip().split("%", 1)[0]))
    except ValueError:
        return None


def _clean_ip(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _canonical_ip(str(value))


def _text(value: Any, limit: int, nul: bool) -> str | None:
    """A text column's value: strings cut to ``limit`` (NULs replaced when ``nul``), else made str."""
    if value is None:
        return None
    if type(value) is str:
        text: str = value
        if nul and "\x00" in text:
            text = text.replace("\x00", "\ufffd")
        return text if len(text) <= limit else text[:limit]
    return _clean_text(value, limit)


_EntryColumns = tuple[str | None, int | None, str | None]


def _entry_columns(meta: Mapping[str, Any]) -> _EntryColumns:
    """(hostname, process_id, producer_id) of an entry, cleaned once per entry (cached in meta)."""
    cached = meta.get("_columns")
    if cached is not None:
        # a string target: cast() with a subscripted type builds it on every call (~10 us here)
        return cast("_EntryColumns", cached)
    pid = meta.get("pid")
    columns = (
        _clean_text(meta.get("h"), TEXT_LIMITS["hostname"]),
        int(pid) if isinstance(pid, int | str) and str(pid).isdigit() else None,
        _clean_text(meta.get("p"), TEXT_LIMITS["producer_id"]),
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
                               _SHORT_LIMIT, nul) or "",
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
        ip = _canonical_ip(ip_raw if type(ip_raw) is str else str(ip_raw))
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
    row["logger"] = _text(wire.get("lg"), _SHORT_LIMIT, nul)
    row["hostname"], row["process_id"], row["producer_id"] = _entry_columns(meta)
    seq = wire.get("seq")
    row["seq"] = seq if type(seq) is int else None
    return row


def activity_from_record(
    record: logging.LogRecord, *, producer_id: str = "local", seq: int = 0
) -> dict[str, Any]:
    """Build the activity row for a ``LogRecord`` directly (formatter and tests; slow path)."""
    encoder = WireEncoder(producer_id)
    encoder.seq = seq - 1 if seq > 0 else 0
    entry = encoder.encode_batch([queued_from_record(record)])
    meta, records = decode_entry(entry)
    return build_activity(records[0], meta)
