"""Local-disk spool for stream entries that could not be shipped while Redis was down.

Each producer appends to its own file ``<directory>/<producer_id>.spool`` and holds an
exclusive ``flock`` on it for as long as it lives. A file nobody holds belongs to a process
that exited or died before replaying it: the next handler that opens the directory adopts
it and replays it. Frames are length-prefixed (header JSON, then payload) and written with
``fsync``; a torn frame at the end (crash mid-write) is ignored on replay.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from ._internal import reporter

_LEN: Final = struct.Struct(">I")
SUFFIX: Final = ".spool"
ORPHAN_CHECK_INTERVAL: Final = 5.0

Entry = dict[str, Any]


def encode_frame(entry: Entry) -> bytes:
    """One spool frame for a stream entry: ``len(header) header len(payload) payload``."""
    raw = entry["d"]
    payload: bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
    header = orjson.dumps({k: v for k, v in entry.items() if k != "d"})
    return _LEN.pack(len(header)) + header + _LEN.pack(len(payload)) + payload


def read_frames(data: bytes) -> Iterator[Entry]:
    """Yield the complete frames in ``data``; stops quietly at a torn or corrupt tail."""
    pos = 0
    size = len(data)
    while pos + 4 <= size:
        (hlen,) = _LEN.unpack_from(data, pos)
        if pos + 4 + hlen + 4 > size:
            return
        try:
            header = orjson.loads(data[pos + 4 : pos + 4 + hlen])
        except orjson.JSONDecodeError:
            return
        pos += 4 + hlen
        (plen,) = _LEN.unpack_from(data, pos)
        if pos + 4 + plen > size:
            return
        header["d"] = data[pos + 4 : pos + 4 + plen]
        pos += 4 + plen
        yield header


def _record_count(entry: Entry) -> int:
    try:
        return int(entry.get("n", 0))
    except (TypeError, ValueError):
        return 0


class Spool:
    """A producer's spool file plus adoption of orphaned ones. Used by one thread at a time.

    ``append`` returns False (and writes nothing) when the spool would exceed ``max_bytes``.
    """

    def __init__(self, directory: str | os.PathLike[str], producer_id: str, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{producer_id}{SUFFIX}"
        self.max_bytes = max_bytes
        self._file: BinaryIO | None = None
        self._size = 0
        self._next_orphan_check = 0.0

    @property
    def size_bytes(self) -> int:
        """Bytes currently held in this producer's spool file."""
        return self._size

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "ab")  # noqa: SIM115 - held open for the producer's lifetime
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file = handle
            self._size = handle.tell()
        return self._file

    def append(self, entry: Entry) -> bool:
        """Append one entry durably (fsync). False when it would exceed ``max_bytes``."""
        frame = encode_frame(entry)
        handle = self._open()
        if self._size + len(frame) > self.max_bytes:
            return False
        handle.write(frame)
        handle.flush()
        os.fsync(handle.fileno())
        self._size += len(frame)
        return True

    def has_pending(self) -> bool:
        """True when this producer's file holds frames, or an orphaned file is waiting.

        A file another live producer holds (its lock) is not an orphan. Looking for orphans
        lists the directory, so it is done at most every ``ORPHAN_CHECK_INTERVAL`` seconds.
        """
        if self._size > 0:
            return True
        now = time.monotonic()
        if now < self._next_orphan_check:
            return False
        self._next_orphan_check = now + ORPHAN_CHECK_INTERVAL
        return any(True for _ in self._orphans())

    def _orphans(self) -> Iterator[Path]:
        """Non-empty spool files of other producers that nobody holds (lock probed, released)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                if path == self.path or path.stat().st_size == 0:
                    continue
                with open(path, "rb") as probe:
                    fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
            except (BlockingIOError, FileNotFoundError):
                continue  # a live producer owns it, or it was just replayed and removed
            yield path

    def replay(self, send: Callable[[list[Entry]], None], group: int = 16) -> int:
        """Send every spooled entry (own file, then orphans nobody holds); returns records sent.

        A file is truncated or removed only after all its entries were sent; if ``send``
        raises, the exception propagates and the file stays for the next attempt (entries
        carry their record ids, so a partial resend is deduplicated downstream).
        """
        sent = 0
        if self._size > 0 and self._file is not None:
            self._file.flush()
            data = self.path.read_bytes()
            sent += self._send_all(data, send, group)
            self._file.truncate(0)
            self._file.seek(0)
            self._size = 0
        for path in list(self._orphans()):
            try:
                handle = open(path, "rb+")  # noqa: SIM115 - closed below, after unlinking
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live producer owns it
                sent += self._send_all(handle.read(), send, group)
                path.unlink()
            finally:
                handle.close()
        return sent

    @staticmethod
    def _send_all(data: bytes, send: Callable[[list[Entry]], None], group: int) -> int:
        entries = list(read_frames(data))
        for start in range(0, len(entries), group):
            send(entries[start : start + group])
        return sum(_record_count(entry) for entry in entries)

    def close(self) -> None:
        """Release the lock; an empty own file is removed. Never raises."""
        if self._file is None:
            return
        try:
            empty = self._size == 0
            self._file.close()
            if empty:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        except Exception as exc:
            reporter.report("spool-close", "could not close the spool file", exc)
        finally:
            self._file = None
