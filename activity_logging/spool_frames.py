"""The spool's on-disk frame format: encode one stream entry, find every intact frame again.

Pure: bytes in, bytes out. Files, locks and directories are ``spool.py``'s; this module
only sees a ``Reader`` (``(size, offset) -> bytes``), so the same scanner reads a file with
``os.pread`` and a ``bytes`` object in memory.

Frame format (version 1). A stream entry is a dict of str fields plus the payload ``d``
(bytes); one entry is one frame, all integers big-endian::

    offset      size  field
    0           4     magic  b"\\xffALS"  (0xFF never occurs in UTF-8, so never in JSON)
    4           1     format version (1)
    5           1     flags (0; reserved)
    6           4     H = length of the header JSON
    10          4     P = length of the payload
    14          H     header: the entry's fields other than ``d``, as a JSON object
    14+H        4     head CRC = crc32(bytes 0 .. 14+H)          (prefix and header)
    18+H        P     payload: the entry's ``d``
    18+H+P      4     body CRC = crc32(payload, start=head CRC)  (chained to its header)

A frame is 22 + H + P bytes and accepted only when both CRCs check out, its version is
known, it is no larger than the reader's cap and its header claims no more records than
the reader's record cap (checked before the payload is read: a frame over a cap is never
read into memory; ``Damage.oversized`` counts them). Anything else is a damaged region: the
scanner looks forward for the next magic whose frame checks out and goes on from there, so
every intact frame is recovered whatever lies between them. The head CRC lets it trust the
lengths and the header (its record count ``n``) before reading the payload.

Files written by versions before the magic (frames ``len(header) header len(payload)
payload``, no checksum) are recognised by the missing magic at offset 0 and still read;
they cannot resynchronise, so everything after their first bad frame is one damaged region.

The same table is the public description in docs/entry-format.md; a test keeps the two equal.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .exceptions import EntryFormatError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "WINDOW_BYTES",
    "Damage",
    "Entry",
    "Item",
    "Reader",
    "Window",
    "encode_frame",
    "read_frames",
    "record_count",
    "scan",
]

MAGIC: Final = b"\xffALS"
FORMAT_VERSION: Final = 1
MAX_HEADER_BYTES: Final = 1 << 20  # the header is a handful of short fields; more is damage
WINDOW_BYTES: Final = 1 << 20  # a Window holds this much (or one frame) at a time

_PREFIX: Final = struct.Struct(">4sBBII")
_CRC: Final = struct.Struct(">I")
_LEN: Final = _CRC  # the length fields of the old format
_OVERHEAD: Final = _PREFIX.size + 2 * _CRC.size

Entry = dict[str, Any]
Reader = Callable[[int, int], bytes]  # (size, offset) -> up to size bytes at offset


def encode_frame(entry: Entry) -> bytes:
    """One frame (see the module docstring) for a stream entry.

    ``entry["d"]`` is the payload (bytes, or str encoded as UTF-8); every other field goes
    into the header. Raises ``EntryFormatError`` when the header is larger than
    ``MAX_HEADER_BYTES`` (a reader would take it for damage).
    """
    raw = entry["d"]
    payload: bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
    header = orjson.dumps({k: v for k, v in entry.items() if k != "d"})
    if len(header) > MAX_HEADER_BYTES:
        raise EntryFormatError(f"spool frame header of {len(header)} bytes is too large")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header), len(payload))
    head_crc = zlib.crc32(header, zlib.crc32(prefix))
    body_crc = zlib.crc32(payload, head_crc)
    return b"".join((prefix, header, _CRC.pack(head_crc), payload, _CRC.pack(body_crc)))


def record_count(entry: Entry) -> int:
    """The entry's record count ``n``; 0 when it is missing or not a non-negative integer."""
    try:
        return max(0, int(entry.get("n", 0)))
    except (TypeError, ValueError):
        return 0


class Window:
    """Bounded random access over ``size`` bytes: holds one buffer of ``WINDOW_BYTES`` (or one frame)."""

    def __init__(self, pread: Reader, size: int) -> None:
        self._pread = pread
        self.size = size
        self._data = b""
        self._start = 0

    def read(self, offset: int, n: int) -> memoryview:
        """``n`` bytes at ``offset``, fewer only at the end of the data (a view: no copy)."""
        n = max(0, min(n, self.size - offset))
        rel = offset - self._start
        if rel < 0 or rel + n > len(self._data):
            self._fill(offset, max(n, WINDOW_BYTES))
            rel = 0
            n = min(n, len(self._data))
        return memoryview(self._data)[rel : rel + n]

    def find(self, sub: bytes, offset: int) -> int:
        """Offset of the next ``sub`` at or after ``offset``; ``size`` when there is none."""
        while offset < self.size:
            rel = offset - self._start
            if rel < 0 or rel + len(sub) > len(self._data):
                self._fill(offset, WINDOW_BYTES)
                rel = 0
            found = self._data.find(sub, rel)
            if found >= 0:
                return self._start + found
            end = self._start + len(self._data)
            if end >= self.size:
                break
            offset = max(offset + 1, end - len(sub) + 1)  # ``sub`` may straddle the window's end
        return self.size

    def _fill(self, offset: int, want: int) -> None:
        want = min(want, self.size - offset)
        parts: list[bytes] = []
        got = 0
        while got < want:
            part = self._pread(want - got, offset + got)
            if not part:
                break  # the file shrank under us: what is missing reads as end of file
            parts.append(part)
            got += len(part)
        self._data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._start = offset


@dataclass(frozen=True, slots=True)
class Damage:
    """A region of the data that holds no intact frame (or only frames over a cap)."""

    offset: int
    length: int
    known_records: int  # records of frames in it whose header survived
    oversized: int = 0  # frames in it refused, unread, for being over the size or record cap


Item = tuple[Entry, int] | Damage


_Found = tuple[Entry | None, int, int, bool]


def _frame_at(win: Window, pos: int, cap: int, max_records: int | None = None) -> _Found:
    """The frame at ``pos``: (entry, end, records, False) when it checks out, else (None, 0,
    records known from a header that survived or 0, whether it was refused for a cap)."""
    prefix = win.read(pos, _PREFIX.size)
    if len(prefix) < _PREFIX.size:
        return None, 0, 0, False
    magic, version, _flags, hlen, plen = _PREFIX.unpack(prefix)
    if magic != MAGIC or version != FORMAT_VERSION or hlen > MAX_HEADER_BYTES:
        return None, 0, 0, False
    head = win.read(pos + _PREFIX.size, hlen + _CRC.size)
    if len(head) < hlen + _CRC.size:
        return None, 0, 0, False
    head_crc = zlib.crc32(head[:hlen], zlib.crc32(prefix))
    if head_crc != _CRC.unpack_from(head, hlen)[0]:
        return None, 0, 0, False
    header = _header(head[:hlen])
    if header is None:
        return None, 0, 0, False
    records = record_count(header)
    if _OVERHEAD + hlen + plen > cap or (max_records is not None and records > max_records):
        return None, 0, records, True  # a genuine header, but more than this reader will hold
    body_at = pos + _PREFIX.size + hlen + _CRC.size
    body = win.read(body_at, plen + _CRC.size)
    if len(body) < plen + _CRC.size or zlib.crc32(body[:plen], head_crc) != _CRC.unpack_from(body, plen)[0]:
        return None, 0, records, False
    header["d"] = bytes(body[:plen])
    return header, body_at + plen + _CRC.size, records, False


def _header(raw: bytes | memoryview) -> dict[str, Any] | None:
    """A frame's JSON header, or None when it is not a JSON object."""
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def _old_frame_at(win: Window, pos: int, cap: int, max_records: int | None = None) -> _Found:
    """A frame of the format before version 1 (no magic, no checksum); same result shape."""
    raw = win.read(pos, _LEN.size)
    if len(raw) < _LEN.size:
        return None, 0, 0, False
    (hlen,) = _LEN.unpack(raw)
    if hlen > MAX_HEADER_BYTES:
        return None, 0, 0, False
    head = win.read(pos + _LEN.size, hlen + _LEN.size)
    if len(head) < hlen + _LEN.size:
        return None, 0, 0, False
    header = _header(head[:hlen])
    if header is None:
        return None, 0, 0, False
    records = record_count(header)
    (plen,) = _LEN.unpack_from(head, hlen)
    body_at = pos + _LEN.size + hlen + _LEN.size
    if body_at - pos + plen > cap or (max_records is not None and records > max_records):
        return None, 0, records, True
    body = win.read(body_at, plen)
    if len(body) < plen:
        return None, 0, records, False
    header["d"] = bytes(body)
    return header, body_at + plen, records, False


def scan(win: Window, cap: int, max_records: int | None = None) -> Iterator[Item]:
    """Every intact frame as (entry, records), and every damaged region, in order.

    A frame larger than ``cap`` bytes, or whose header claims more than ``max_records``
    records, counts as damage (its records counted when its header checks out, and in
    ``Damage.oversized``) and is never read. Memory is bounded by the window: one
    ``WINDOW_BYTES`` buffer or one frame of at most ``cap`` bytes.
    """
    if win.size == 0:
        return
    if bytes(win.read(0, len(MAGIC))) != MAGIC and _old_frame_at(win, 0, cap)[0] is not None:
        yield from _scan_old(win, cap, max_records)
        return
    pos = 0
    bad_at = -1
    known = 0
    refused = 0
    while pos < win.size:
        entry, end, records, over = _frame_at(win, pos, cap, max_records)
        if entry is not None:
            if bad_at >= 0:
                yield Damage(bad_at, pos - bad_at, known, refused)
                bad_at, known, refused = -1, 0, 0
            yield entry, records
            pos = end
            continue
        if bad_at < 0:
            bad_at = pos
        known += records
        refused += over
        # Never skip by a length that did not check out: the next frame may start anywhere.
        pos = win.find(MAGIC, pos + 1)
    if bad_at >= 0:
        yield Damage(bad_at, win.size - bad_at, known, refused)


def _scan_old(win: Window, cap: int, max_records: int | None) -> Iterator[Item]:
    pos = 0
    while pos < win.size:
        entry, end, records, over = _old_frame_at(win, pos, cap, max_records)
        if entry is None:
            # no way to find the next frame
            yield Damage(pos, win.size - pos, records, int(over))
            return
        yield entry, records
        pos = end


def read_frames(data: bytes) -> Iterator[Entry]:
    """Yield the intact frames in ``data`` (either format), skipping damaged regions."""
    win = Window(lambda n, offset: data[offset : offset + n], len(data))
    for item in scan(win, len(data)):
        if not isinstance(item, Damage):
            yield item[0]
