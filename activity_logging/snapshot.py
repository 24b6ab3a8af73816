"""The caller's side: a ``LogRecord`` snapshotted into the bytes the listener ships.

Runs in the application's thread, inside ``ActivityHandler.emit``, so it is kept small:
the message formatted only when it has arguments, and the record (its id, time, level,
logger, message, the keys of ``extra`` plus the request context, the exception text)
encoded at once by orjson, in one call, so a dict mutated after the call cannot change the audit
record; oversized extras are cut before they are queued. Pure: no I/O.
Each record gets its id and producer sequence number here too, in queue order (``emit``
runs under the handler's lock). The bytes made here are the ones that travel: the
listener joins a batch of them into one stream entry, and the embedded path decodes each
record once to build its row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from itertools import islice
from typing import Any, Final

import orjson

from .config import HANDLER_TUNABLES
from .context import current_context
from .encoding import MAX_VALUE_BYTES, MAX_VALUE_CHARS, OPTS, default, dumps, sanitize
from .ids import IdFactory
from .redact import Redactor

#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra`` or a filter.
STANDARD_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))
) | {"message", "asctime", "taskName"}

#: Keys that ``logging`` refuses in ``extra`` (``Logger.makeRecord`` raises ``KeyError``).
RESERVED_EXTRA_KEYS: Final = STANDARD_RECORD_ATTRS
#: How many attributes ``LogRecord.__init__`` sets: ``extra`` follows them in ``__dict__``.
STANDARD_COUNT: Final = len(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)))

MAX_MESSAGE_CHARS: Final = 8_192
MAX_RECORD_BYTES: Final = int(HANDLER_TUNABLES["max_record_bytes"][1])  # the handler's default
#: Of ``max_record_bytes``, what is kept for the record's own fields: its ``extra`` may use
#: the rest (``Snapshotter.extras_limit``, ``limit_extras``).
FIELDS_HEADROOM: Final = 1024
#: Bytes of a queued record beyond its message, extras and exception (an estimate, for
#: ``queue_max_bytes``).
RECORD_OVERHEAD: Final = 200

#: What the caller enqueues: the record's JSON object as docs/entry-format.md defines it,
#: id and ``seq`` included. ``b""`` marks a record that cannot be encoded (its ``created``
#: is NaN or infinite): it takes no sequence number, and the listener counts it and leaves
#: it out.
QueuedRecord = bytes
UNENCODABLE: Final = b""

#: Extras keys kept when a record must be cut to its activity fields.
_KEPT_WHEN_TRUNCATED: Final = frozenset({
    "activity_type", "actor_type", "actor_id", "target_type", "target_id", "request_id",
    "ip_address", "http_method", "description",
})


class Snapshotter:
    """Makes the ``QueuedRecord`` of a ``LogRecord``: the one snapshot function.

    ``ActivityHandler.emit`` calls ``take`` for every record, and tests build records the
    same way (``queued_from_record``). It gives each record its id (made from the record's
    own ``created``, ``ids.IdFactory``) and its producer sequence number (``seq``, the last
    one given; the first record gets ``seq + 1``), in the order the records are queued.
    Counts the extras it cut to ``max_record_bytes`` in
    ``truncated`` (and the secrets those held in the redactor's ``redacted``) and the records
    holding a value orjson refused, encoded from a sanitised copy, in ``sanitized``. Not
    thread-safe on its own: the handler calls it under its lock (``logging.Handler.handle``).
    """

    def __init__(self, *, max_record_bytes: int = MAX_RECORD_BYTES,
                 redactor: Redactor | None = None, context: bool = True, seq: int = 0) -> None:
        self.max_record_bytes = max_record_bytes
        self.extras_limit = max_record_bytes - FIELDS_HEADROOM
        self.redactor = redactor if redactor is not None else Redactor()
        self.context = context
        self.ids = IdFactory()
        self.seq = seq
        self.truncated = 0
        self.sanitized = 0

    def take(self, record: logging.LogRecord) -> QueuedRecord:
        """Snapshot ``record`` now. Never raises for any value the record holds."""
        msg = record.msg
        if record.args or type(msg) is not str:
            msg = message_of(record)
        elif len(msg) > MAX_MESSAGE_CHARS:
            msg = msg[:MAX_MESSAGE_CHARS]
        try:
            ts_us = int(record.created * 1_000_000)
        except (ValueError, OverflowError, TypeError):  # NaN, an infinity, not a number
            return UNENCODABLE
        self.seq = seq = self.seq + 1
        body: dict[str, Any] = {"id": self.ids.make(ts_us, seq), "ts": ts_us, "lv": record.levelno,
                                "lg": record.name, "msg": msg, "seq": seq}
        attrs = record.__dict__
        ctx = current_context() if self.context else None
        if ctx or len(attrs) > STANDARD_COUNT:
            extras = self.extras(attrs, ctx)
            if extras is not None:
                body["x"] = extras
        if record.exc_info or record.exc_text:
            exc = exception_text(record)
            if exc is not None:
                body["exc"] = exc
        try:
            encoded = orjson.dumps(body, default=default)
        except Exception:  # a value orjson refuses (a lone surrogate, a huge int, a cycle)
            self.sanitized += 1
            encoded = orjson.dumps(sanitize(body), default=default, option=OPTS)
        if len(encoded) > self.extras_limit and "x" in body:  # cut now: the queue holds bounded records
            encoded = self._cut(body, encoded)
        return encoded

    def _cut(self, body: dict[str, Any], encoded: bytes) -> bytes:
        """``encoded`` again with its extras cut to ``max_record_bytes`` when they are too big
        (a long message or exception text is bounded on its own, not here)."""
        raw = dumps(body["x"])
        if len(raw) <= self.extras_limit:
            return encoded
        self.truncated += 1
        body["x"] = orjson.Fragment(limit_extras(raw, self.max_record_bytes, self.redactor))
        return dumps(body)

    def extras(self, attrs: dict[str, Any], context: Mapping[str, Any] | None = None
               ) -> dict[str, Any] | None:
        """The non-standard attributes of a record (its ``extra``), or None when there are none.

        ``LogRecord.__init__`` sets the standard attributes first and ``makeRecord`` adds
        ``extra`` after them, so only the tail of ``__dict__`` is taken. An attribute named
        ``extra`` holding a dict is unpacked (``unpack_nested_extra``: loguru's standard sink).
        ``context`` (the request context) fills keys ``extra`` did not set. A new dict; its
        values are the caller's, encoded (frozen) by ``take`` before it returns.
        """
        snap = dict(islice(attrs.items(), STANDARD_COUNT, None))
        if snap and not snap.keys().isdisjoint(STANDARD_RECORD_ATTRS):  # e.g. "message" from a formatter
            snap = {k: v for k, v in snap.items() if k not in STANDARD_RECORD_ATTRS}
        nested = snap.get("extra")
        if type(nested) is dict:
            snap = unpack_nested_extra(snap, nested)
        if context:
            for key, value in context.items():
                if key not in snap:
                    snap[key] = value
        return snap or None


def queued_size(item: QueuedRecord) -> int:
    """What one queued record counts against ``queue_max_bytes``: its encoded bytes and an
    estimate of what holding it costs beyond them."""
    return RECORD_OVERHEAD + len(item)


_DEFAULT: Final = Snapshotter(context=False)


def queued_from_record(record: logging.LogRecord) -> QueuedRecord:
    """Snapshot ``record`` as a handler with default settings and no request context would."""
    return _DEFAULT.take(record)


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
        msg = f"<unformattable message {safe_repr(record.msg)}: {type(exc).__name__}>"
    return msg if len(msg) <= MAX_MESSAGE_CHARS else msg[:MAX_MESSAGE_CHARS]


def safe_repr(obj: Any) -> str:
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


def limit_extras(raw: bytes, max_record_bytes: int, redactor: Redactor) -> bytes:
    """Cut an oversized ``extra`` (JSON bytes) to fit ``max_record_bytes``; never raises.

    Secrets are redacted first (a preview must not carry them; counted in the redactor's
    ``redacted``), then long strings are cut to ``MAX_VALUE_CHARS``, containers over
    ``MAX_VALUE_BYTES`` become ``{"_truncated": true, "bytes": N, "preview": "..."}``, and if
    that is still too large only the activity fields survive, beside
    ``{"_truncated": {"original_bytes": N, "keys": [...]}}``.
    Returns the new bytes.
    """
    try:
        extras = orjson.loads(raw)
    except orjson.JSONDecodeError:
        extras = {}
    if not isinstance(extras, dict):
        extras = {"extra": extras}
    extras, redacted = redactor.redact(extras)
    redactor.redacted += redacted
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
    if len(limited) <= max_record_bytes - FIELDS_HEADROOM:
        return limited
    keep: dict[str, Any] = {
        k: str(v)[:255] for k, v in cut.items() if k in _KEPT_WHEN_TRUNCATED and v is not None
    }
    keep["_truncated"] = {"original_bytes": len(raw), "keys": sorted(cut)[:64]}
    return orjson.dumps(keep)
