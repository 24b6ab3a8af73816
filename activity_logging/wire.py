"""The wire: records stamped with their id and sequence number, and the stream entry format.

Runs in the handler's listener thread (stamping, encoding) and in the worker (decoding).
A batch of queued records becomes a ``Batch`` of wire records, each a dict with the keys
of docs/entry-format.md; the Redis sink (and the spool) encode a batch into one entry with
``Batch.entry``, the one place records are encoded for the wire. The extras bytes made at
call time are embedded as they are (``orjson.Fragment``), never decoded and re-encoded.
Pure: no I/O.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from .encoding import OPTS, default, sanitize
from .exceptions import EntryFormatError
from .snapshot import QueuedRecord

WIRE_VERSION: Final = "1"
_Fragment: Final = orjson.Fragment

#: One stream entry as redis-py takes it: field name to value.
Entry = dict[str, Any]
#: One record on the wire: ``id``, ``ts``, ``lv``, ``lg``, ``msg``, ``seq``, ``x``, ``exc``.
Wire = dict[str, Any]


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


class Batch:
    """Records shipped together: stamped wire records, encoded into one entry on demand.

    A batch made by ``WireEncoder.stamp`` keeps its wire records and their extras bytes
    (``raws``), so a store can build rows from them without a JSON round trip; one replayed
    from the spool has only its ``entry``. ``n`` is the number of records it carries.
    """

    __slots__ = ("_encoder", "_entry", "n", "raws", "wires")

    def __init__(self, wires: list[Wire] | None, raws: list[bytes | None] | None,
                 encoder: WireEncoder | None, entry: Entry | None = None, n: int = 0) -> None:
        self.wires = wires
        self.raws = raws
        self._encoder = encoder
        self._entry = entry
        self.n = len(wires) if wires is not None else n

    @classmethod
    def from_entry(cls, entry: Entry, n: int) -> Batch:
        """A batch that exists only as an encoded entry (read back from the spool)."""
        return cls(None, None, None, entry, n)

    def entry(self) -> Entry:
        """The stream entry of this batch, encoded once and kept (a retry resends the same)."""
        if self._entry is None:
            assert self._encoder is not None
            assert self.wires is not None
            assert self.raws is not None
            self._entry = self._encoder.encode(self.wires, self.raws)
        return self._entry

    def header(self) -> dict[str, Any]:
        """The entry's metadata (``p``, ``h``, ``pid``) as ``decode_entry`` returns it."""
        if self._encoder is not None:
            return self._encoder.header_meta
        meta, _ = decode_entry(self.entry())
        return meta


class WireEncoder:
    """Stamps queued records and encodes batches into stream entries. One listener thread
    uses it; not thread-safe.

    Counts what it had to change: ``sanitized`` (batches holding a value orjson refused,
    re-encoded one record at a time) and ``unencodable`` (records left out of their batch:
    an impossible ``created`` such as NaN; they take no sequence number).
    """

    def __init__(self, producer_id: str) -> None:
        self.producer_id = producer_id
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.ids = IdFactory()
        self.seq = 0
        self.sanitized = 0
        self.unencodable = 0
        self.header_meta: dict[str, Any] = {
            "p": producer_id, "h": self.hostname, "pid": str(self.pid), "_nul": True,
        }

    def stamp(self, items: Sequence[QueuedRecord]) -> Batch:
        """Give each record its id and sequence number; the records as one ``Batch``."""
        make_id = self.ids.make
        seq = self.seq
        wires: list[Wire] = []
        raws: list[bytes | None] = []
        append = wires.append
        try:
            for created, levelno, name, msg, raw, exc in items:
                seq += 1
                ts_us = int(created * 1_000_000)
                wire = {"id": make_id(ts_us, seq), "ts": ts_us, "lv": levelno, "lg": name,
                        "msg": msg, "seq": seq}
                if raw is not None:
                    wire["x"] = _Fragment(raw)
                if exc is not None:
                    wire["exc"] = exc
                append(wire)
                raws.append(raw)
        except Exception:  # e.g. created is NaN: isolate the record, the batch goes on
            wires, raws, seq = self._stamp_one_by_one(items)
        self.seq = seq
        return Batch(wires, raws, self)

    def _stamp_one_by_one(
        self, items: Sequence[QueuedRecord]
    ) -> tuple[list[Wire], list[bytes | None], int]:
        """The slow path of ``stamp``: a record that cannot be stamped is left out and
        counted (``unencodable``) without taking a sequence number; the others go on."""
        seq = self.seq
        wires: list[Wire] = []
        raws: list[bytes | None] = []
        for item in items:
            try:
                created, levelno, name, msg, raw, exc = item
                ts_us = int(created * 1_000_000)  # NaN and infinities raise here
                wire = {"id": self.ids.make(ts_us, seq + 1), "ts": ts_us, "lv": int(levelno),
                        "lg": str(name), "msg": str(msg), "seq": seq + 1}
                if raw is not None:
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

    def encode(self, wires: list[Wire], raws: list[bytes | None]) -> Entry:
        """One stream entry for ``wires``: fields ``v`` (format version), ``n`` (record count),
        ``p`` (producer id), ``h`` (hostname), ``pid``, ``d`` (JSON array of the records)."""
        try:
            payload = orjson.dumps(wires)
        except Exception:  # e.g. a lone surrogate in a message: fix the records one by one
            self.sanitized += 1
            payload = self._sanitized_payload(wires, raws)
        return {
            "v": WIRE_VERSION, "n": str(len(wires)), "p": self.producer_id,
            "h": self.hostname, "pid": str(self.pid), "d": payload,
        }

    def encode_batch(self, items: Sequence[QueuedRecord]) -> Entry:
        """``stamp`` then ``encode``: the entry for ``items`` (tests and benchmarks)."""
        return self.stamp(items).entry()

    @staticmethod
    def _sanitized_payload(wires: list[Wire], raws: list[bytes | None]) -> bytes:
        parts = []
        for wire, raw in zip(wires, raws, strict=True):
            plain = dict(wire)
            if raw is not None:
                plain["x"] = orjson.loads(raw)
            parts.append(orjson.dumps(sanitize(plain), default=default, option=OPTS))
        return b"[" + b",".join(parts) + b"]"


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
