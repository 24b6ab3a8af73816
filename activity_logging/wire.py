"""The wire: batches of records, and the stream entry format (docs/entry-format.md).

Runs in the handler's listener thread (batching) and in the worker (decoding). The caller
encoded each record once, id and sequence number included (``snapshot``); ``Batch.entry``
joins a batch into one stream entry for the Redis sink and the spool. Nothing here encodes
JSON on the way out; ``decode_entry`` is the one decode on the way back. Pure: no I/O.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from .entry_limits import field
from .exceptions import EntryFormatError
from .snapshot import QueuedRecord

if TYPE_CHECKING:
    from .signing import EntrySigner

WIRE_VERSION: Final = "1"

#: One stream entry as redis-py takes it: field name to value.
Entry = dict[str, Any]
#: One decoded record: ``id``, ``ts``, ``lv``, ``lg``, ``msg``, ``seq``, ``x``, ``exc``.
Wire = dict[str, Any]


class Batch:
    """Records shipped together, each a complete wire record (JSON bytes), and their entry.

    A batch made by ``WireEncoder.batch`` keeps its records, so a store can build rows
    from them without an entry ever being made; one replayed from the spool has only its
    ``entry``. ``n`` is the number of records it carries. A signed batch was tagged when it
    was made (the chain follows the order batches are made, which is ``seq`` order):
    ``auth`` holds its ``k``/``pm``/``t`` fields and ``payload`` the bytes they cover.
    """

    __slots__ = ("_encoder", "_entry", "auth", "n", "payload", "records")

    def __init__(self, records: list[bytes] | None, encoder: WireEncoder | None,
                 entry: Entry | None = None, n: int = 0) -> None:
        self.records = records
        self._encoder = encoder
        self._entry = entry
        self.n = len(records) if records is not None else n
        self.auth: dict[str, bytes | str] | None = None
        self.payload: bytes | None = None

    @classmethod
    def from_entry(cls, entry: Entry, n: int) -> Batch:
        """A batch that exists only as an encoded entry (read back from the spool)."""
        return cls(None, None, entry, n)

    def entry(self) -> Entry:
        """The stream entry of this batch, made once and kept (a retry resends the same)."""
        if self._entry is None:
            assert self._encoder is not None
            assert self.records is not None
            self._entry = self._encoder.entry(self.records, self.payload)
            if self.auth is not None:
                self._entry.update(self.auth)
        return self._entry

    def header(self) -> dict[str, Any]:
        """The entry's metadata (``p``, ``h``, ``pid``) as ``decode_entry`` returns it."""
        if self._encoder is not None:
            return dict(self._encoder.header_meta)
        meta, _ = decode_entry(self.entry())
        return meta


class WireEncoder:
    """Makes batches and stream entries of queued records. One listener thread uses it; not
    thread-safe.

    Each queued record is already a complete wire record, id and ``seq`` included
    (``snapshot.Snapshotter.take``): no JSON is encoded here. Counts in ``unencodable`` the
    records left out of their batch (an impossible ``created`` such as NaN; they took no
    sequence number, so they leave no gap).
    """

    def __init__(self, producer_id: str, signer: EntrySigner | None = None) -> None:
        self.producer_id = producer_id
        self.signer = signer
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.unencodable = 0
        self.header_meta: dict[str, Any] = {"p": producer_id, "h": self.hostname, "pid": str(self.pid)}

    def batch(self, items: Sequence[QueuedRecord]) -> Batch:
        """The records of ``items`` as one ``Batch``, unencodable ones left out and counted."""
        records = [item for item in items if item]
        self.unencodable += len(items) - len(records)
        batch = Batch(records, self)
        if self.signer is not None and records:
            batch.payload = payload(records)
            batch.auth = self.signer.sign(self.entry_header(len(records)), batch.payload)
        return batch

    def entry_header(self, n: int) -> dict[str, str]:
        """The entry's fields but its payload: ``v`` (format version), ``n`` (record count),
        ``p`` (producer id), ``h`` (hostname), ``pid``."""
        return {"v": WIRE_VERSION, "n": str(n), "p": self.producer_id, "h": self.hostname,
                "pid": str(self.pid)}

    def entry(self, records: list[bytes], encoded: bytes | None = None) -> Entry:
        """One stream entry for ``records``: the ``header`` fields and ``d``, the JSON array
        of the records (``encoded`` when it was made already)."""
        entry: Entry = self.entry_header(len(records))
        entry["d"] = payload(records) if encoded is None else encoded
        return entry

    def encode_batch(self, items: Sequence[QueuedRecord]) -> Entry:
        """``batch`` then ``entry``: the entry for ``items`` (tests and benchmarks)."""
        return self.batch(items).entry()


def payload(records: list[bytes]) -> bytes:
    """The ``d`` field of an entry: the records (JSON objects) as one JSON array."""
    return b"[" + b",".join(records) + b"]"


def decode_entry(fields: Mapping[Any, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decode one stream entry into (entry metadata, wire records).

    Raises ``EntryFormatError`` for an entry this version cannot read.
    """
    version = field(fields, "v")
    if isinstance(version, bytes):
        version = version.decode()
    if version != WIRE_VERSION:
        raise EntryFormatError(f"unsupported entry version {version!r} (this reader knows {WIRE_VERSION})")
    payload = field(fields, "d")
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
        value = field(fields, key)
        meta[key] = value.decode() if isinstance(value, bytes) else value
    # an escaped NUL anywhere in the payload: only then must build_activity walk the JSON values
    meta["_nul"] = b"\\u0000" in (payload if isinstance(payload, bytes) else payload.encode())
    return meta, records
