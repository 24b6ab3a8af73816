"""How big one stream entry (or one spool frame) may be before anyone decodes it.

A stream entry is whatever anyone who can write to Redis put there, and a spool file is
whatever was on disk: both are sized up from their fields alone (``n``, the record count
the entry claims, and the bytes of every field), without decoding the payload, and refused
when over the caps. The worker (``worker_stream``) and the spool replay (``spool``) use the
same caps, written here once. Pure: no I/O.

The defaults sit well above what this library's own handler produces: an entry carries at
most the handler's ``batch_size`` records (500 by default) of at most ``max_record_bytes``
each (64 KiB): 500 records and 32 MiB in the very worst case. A handler configured with a
larger ``batch_size`` or ``max_record_bytes`` needs the worker's caps raised to match
(docs/worker.md, "Hostile input").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

#: Records one entry may carry: 20 times the handler's default ``batch_size`` (500), and the
#: worker's default ``batch_size`` (an entry never makes a batch overshoot by more than this).
MAX_ENTRY_RECORDS: Final = 10_000
#: Bytes one entry may hold, every field counted: twice the handler's worst case (500 records
#: of ``max_record_bytes`` = 64 KiB).
MAX_ENTRY_BYTES: Final = 64 * 1024 * 1024
#: What a dead letter keeps of what it refuses: the first bytes of it, never the whole.
MAX_EXCERPT_BYTES: Final = 64 * 1024
#: Why something is refused (a dead letter's ``reason``): an entry too big to decode, one
#: that cannot be decoded, a record that cannot be a row, a record dated outside the
#: accepted window, a record the database refused.
REFUSAL_REASONS: Final = ("oversized", "undecodable", "bad_signature", "malformed", "out_of_window",
                           "refused")
#: Characters of one header field (``p``, ``h``, ``pid``, ``n``...) an excerpt keeps.
_FIELD_EXCERPT_CHARS: Final = 256


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def field(fields: Mapping[Any, Any], key: str) -> Any:
    """``fields[key]``, whether the keys are ``str`` (the spool, tests) or ``bytes`` (redis-py)."""
    value = fields.get(key)
    return fields.get(key.encode()) if value is None else value


def claimed_records(fields: Mapping[Any, Any]) -> int | None:
    """The record count the entry claims (``n``); None when missing or not a whole number."""
    raw = field(fields, "n")
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("ascii", "replace")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit() and len(raw) < 20:
        return int(raw)
    return None


def entry_bytes(fields: Mapping[Any, Any]) -> int:
    """Bytes of every field name and value of an entry (values as Redis holds them)."""
    total = 0
    for key, value in fields.items():
        total += len(key) + (len(value) if isinstance(value, bytes | bytearray | str | memoryview)
                             else len(str(value)))
    return total


def oversized(fields: Mapping[Any, Any], *, max_records: int = MAX_ENTRY_RECORDS,
              max_bytes: int = MAX_ENTRY_BYTES, size: int | None = None) -> str | None:
    """Why an entry is too big to decode (a sentence), or None when it is within the caps.

    Reads only ``n`` and the lengths of the fields (``size``, when the caller has measured
    them already): constant work, whatever the entry holds.
    """
    if size is None:
        size = entry_bytes(fields)
    if size > max_bytes:
        return f"entry of {size} bytes is over the limit of {max_bytes} bytes per entry"
    claimed = claimed_records(fields)
    if claimed is not None and claimed > max_records:
        return f"entry of {claimed} records is over the limit of {max_records} records per entry"
    return None


def payload_bytes(fields: Mapping[Any, Any]) -> bytes:
    """The entry's payload ``d`` as bytes (empty when it has none)."""
    raw = field(fields, "d")
    if raw is None:
        return b""
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return bytes(raw)


def excerpt(data: bytes, limit: int = MAX_EXCERPT_BYTES) -> str:
    """The start of ``data`` as text of at most ``limit`` UTF-8 bytes (bytes that are not
    UTF-8, and NUL, which PostgreSQL's text refuses, become U+FFFD)."""
    text = data[:limit].decode("utf-8", "replace")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > limit:  # replacements are 3 bytes: cut again, at a whole character
        text = encoded[:limit].decode("utf-8", "ignore")
    return text


def entry_excerpt(fields: Mapping[Any, Any], limit: int = MAX_EXCERPT_BYTES) -> tuple[str, int, str]:
    """A bounded stand-in for a whole entry: (excerpt, bytes of the entry, sha256 of ``d``).

    The excerpt (at most ``limit`` UTF-8 bytes) is a JSON object of the entry's fields,
    each header field cut to 256 characters and the payload ``d`` to what is left of
    ``limit``; the hash is over the
    whole payload, so an operator can tell two dead letters of one entry apart from two
    entries, and match a copy kept elsewhere. Never raises; its work is bounded by ``limit``
    plus one hash of the payload.
    """
    payload = payload_bytes(fields)
    header = {_text(k)[:_FIELD_EXCERPT_CHARS]: _text(v)[:_FIELD_EXCERPT_CHARS]
              for k, v in list(fields.items())[:32] if _text(k) != "d"}
    room = max(0, limit - len(orjson.dumps(header)) - 16)
    header["d"] = excerpt(payload, room)
    encoded = orjson.dumps(header)
    for _ in range(4):  # JSON escapes made it longer: cut the payload's share again
        if len(encoded) <= limit:
            break
        header["d"] = header["d"][: max(0, len(header["d"]) - (len(encoded) - limit))]
        encoded = orjson.dumps(header)
    text = encoded[:limit].decode("utf-8", "ignore")
    return text, entry_bytes(fields), hashlib.sha256(payload).hexdigest()
