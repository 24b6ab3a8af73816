"""Local-disk spool for stream entries that could not be shipped while Redis was down.

Each producer appends to its own file ``<directory>/<producer_id>.spool`` and holds an
exclusive ``flock`` on it for as long as it lives. A file nobody holds belongs to a process
that exited or died before replaying it: the next handler that opens the directory adopts
it and replays it. The directory is created ``0700`` (and so are the parents the spool
creates), files ``0600``.

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

A frame is 22 + H + P bytes and accepted on replay only when both CRCs check out, its
version is known and it is no larger than ``max_bytes``. Anything else is a damaged region:
replay scans forward for the next magic whose frame checks out and goes on from there, so
every intact frame is recovered whatever lies between them. The head CRC lets replay trust
the lengths and the header (its record count ``n``) before reading the payload.

Files written by versions before the magic (frames ``len(header) header len(payload)
payload``, no checksum) are recognised by the missing magic at offset 0 and still replay;
they cannot resynchronise, so everything after their first bad frame is one damaged region.

Damaged bytes are never deleted: each region is copied, byte for byte, into
``<directory>/damaged/<file name>.<UTC timestamp>.<offset>.damaged`` (0600, fsync'd) before
the file it came from is truncated or removed, counted on the ``Spool`` and reported once
on stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import os
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from ._internal import reporter
from .exceptions import ActivityLoggingError, EntryFormatError

SUFFIX: Final = ".spool"
DAMAGED_DIR: Final = "damaged"
DAMAGED_SUFFIX: Final = ".damaged"
ORPHAN_CHECK_INTERVAL: Final = 5.0
MAGIC: Final = b"\xffALS"
FORMAT_VERSION: Final = 1
MAX_HEADER_BYTES: Final = 1 << 20  # the header is a handful of short fields; more is damage

_PREFIX: Final = struct.Struct(">4sBBII")
_CRC: Final = struct.Struct(">I")
_LEN: Final = _CRC  # the length fields of the old format
_OVERHEAD: Final = _PREFIX.size + 2 * _CRC.size
_CHUNK: Final = 1 << 20  # replay reads the file in windows of this size (or one frame)
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_DAMAGE_EVENTS: Final = itertools.count(1)

Entry = dict[str, Any]
Send = Callable[[list[Entry]], None]


def encode_frame(entry: Entry) -> bytes:
    """One spool frame (see the module docstring) for a stream entry.

    ``entry["d"]`` is the payload (bytes, or str encoded as UTF-8); every other field goes
    into the header. Raises ``EntryFormatError`` when the header is larger than
    ``MAX_HEADER_BYTES`` (replay would take it for damage).
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


def _record_count(entry: Entry) -> int:
    try:
        return max(0, int(entry.get("n", 0)))
    except (TypeError, ValueError):
        return 0


# --- reading: a bounded window over a file, and the frame scanner -------------------------

Reader = Callable[[int, int], bytes]  # (size, offset) -> up to size bytes at offset


class _Window:
    """Bounded random access over ``size`` bytes: holds one buffer of ``_CHUNK`` (or one frame)."""

    def __init__(self, pread: Reader, size: int) -> None:
        self._pread = pread
        self.size = size
        self._data = b""
        self._start = 0

    def read(self, offset: int, n: int) -> memoryview:
        """``n`` bytes at ``offset``, fewer only at the end of the file (a view: no copy)."""
        n = max(0, min(n, self.size - offset))
        rel = offset - self._start
        if rel < 0 or rel + n > len(self._data):
            self._fill(offset, max(n, _CHUNK))
            rel = 0
            n = min(n, len(self._data))
        return memoryview(self._data)[rel : rel + n]

    def find(self, sub: bytes, offset: int) -> int:
        """Offset of the next ``sub`` at or after ``offset``; ``size`` when there is none."""
        while offset < self.size:
            rel = offset - self._start
            if rel < 0 or rel + len(sub) > len(self._data):
                self._fill(offset, _CHUNK)
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
class _Damage:
    """A region of a file that holds no intact frame."""

    offset: int
    length: int
    known_records: int  # records of frames in it whose header survived


_Item = tuple[Entry, int] | _Damage


def _frame_at(win: _Window, pos: int, cap: int) -> tuple[Entry | None, int, int]:
    """The frame at ``pos``: (entry, end, records) when it checks out, else (None, 0, records
    known from a header that survived, or 0)."""
    prefix = win.read(pos, _PREFIX.size)
    if len(prefix) < _PREFIX.size:
        return None, 0, 0
    magic, version, _flags, hlen, plen = _PREFIX.unpack(prefix)
    if magic != MAGIC or version != FORMAT_VERSION or hlen > MAX_HEADER_BYTES:
        return None, 0, 0
    head = win.read(pos + _PREFIX.size, hlen + _CRC.size)
    if len(head) < hlen + _CRC.size:
        return None, 0, 0
    head_crc = zlib.crc32(head[:hlen], zlib.crc32(prefix))
    if head_crc != _CRC.unpack_from(head, hlen)[0]:
        return None, 0, 0
    try:
        header = orjson.loads(head[:hlen])
    except orjson.JSONDecodeError:
        return None, 0, 0
    if not isinstance(header, dict):
        return None, 0, 0
    records = _record_count(header)
    if _OVERHEAD + hlen + plen > cap:
        return None, 0, records  # a genuine header, but more than this reader will hold
    body_at = pos + _PREFIX.size + hlen + _CRC.size
    body = win.read(body_at, plen + _CRC.size)
    if len(body) < plen + _CRC.size or zlib.crc32(body[:plen], head_crc) != _CRC.unpack_from(body, plen)[0]:
        return None, 0, records
    header["d"] = bytes(body[:plen])
    return header, body_at + plen + _CRC.size, records


def _old_frame_at(win: _Window, pos: int, cap: int) -> tuple[Entry | None, int, int]:
    """A frame of the format before version 1 (no magic, no checksum); same result shape."""
    raw = win.read(pos, _LEN.size)
    if len(raw) < _LEN.size:
        return None, 0, 0
    (hlen,) = _LEN.unpack(raw)
    if hlen > MAX_HEADER_BYTES:
        return None, 0, 0
    head = win.read(pos + _LEN.size, hlen + _LEN.size)
    if len(head) < hlen + _LEN.size:
        return None, 0, 0
    try:
        header = orjson.loads(head[:hlen])
    except orjson.JSONDecodeError:
        return None, 0, 0
    if not isinstance(header, dict):
        return None, 0, 0
    records = _record_count(header)
    (plen,) = _LEN.unpack_from(head, hlen)
    body_at = pos + _LEN.size + hlen + _LEN.size
    if body_at - pos + plen > cap:
        return None, 0, records
    body = win.read(body_at, plen)
    if len(body) < plen:
        return None, 0, records
    header["d"] = bytes(body)
    return header, body_at + plen, records


def _scan(win: _Window, cap: int) -> Iterator[_Item]:
    """Every intact frame as (entry, records), and every damaged region, in file order."""
    if win.size == 0:
        return
    if bytes(win.read(0, len(MAGIC))) != MAGIC and _old_frame_at(win, 0, cap)[0] is not None:
        yield from _scan_old(win, cap)
        return
    pos = 0
    bad_at = -1
    known = 0
    while pos < win.size:
        entry, end, records = _frame_at(win, pos, cap)
        if entry is not None:
            if bad_at >= 0:
                yield _Damage(bad_at, pos - bad_at, known)
                bad_at, known = -1, 0
            yield entry, records
            pos = end
            continue
        if bad_at < 0:
            bad_at = pos
        known += records
        # Never skip by a length that did not check out: the next frame may start anywhere.
        pos = win.find(MAGIC, pos + 1)
    if bad_at >= 0:
        yield _Damage(bad_at, win.size - bad_at, known)


def _scan_old(win: _Window, cap: int) -> Iterator[_Item]:
    pos = 0
    while pos < win.size:
        entry, end, records = _old_frame_at(win, pos, cap)
        if entry is None:
            yield _Damage(pos, win.size - pos, records)  # no way to find the next frame
            return
        yield entry, records
        pos = end


def read_frames(data: bytes) -> Iterator[Entry]:
    """Yield the intact frames in ``data`` (either format), skipping damaged regions."""
    win = _Window(lambda n, offset: data[offset : offset + n], len(data))
    for item in _scan(win, len(data)):
        if not isinstance(item, _Damage):
            yield item[0]


# --- files and directories ----------------------------------------------------------------


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, _FILE_MODE)


def _make_private_dir(directory: Path) -> bool:
    """Create ``directory`` and missing parents as 0700; False when it already existed."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            continue  # created by someone else meanwhile: theirs, leave its mode
        os.chmod(path, _DIR_MODE)  # exact, whatever the umask
    return not missing


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:] + "Z"


def _copy_region(pread: Reader, offset: int, length: int, dest: Path) -> None:
    """Write bytes [offset, offset + length) of a file into the new file ``dest`` (0600, fsync'd)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
        done = 0
        while done < length:
            part = pread(min(_CHUNK, length - done), offset + done)
            if not part:
                raise OSError(f"spool file shrank while its damaged bytes were copied to {dest}")
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view) :]
            done += len(part)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise
    os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the spool ----------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What one ``Spool.replay`` call did (or, on ``SpoolReplayError``, finished before it stopped).

    Records are counted from the entries' ``n`` field. ``own_records`` were this producer's
    and are now sent; ``adopted_records`` came from orphaned files of other producers.
    ``own_damaged_records`` are this producer's records that were appended but not found
    intact (exact: appended - recovered); ``adopted_damaged_records`` are orphans' records
    known lost, i.e. only those whose frame header survived (the bytes are always counted).
    """

    own_records: int = 0
    adopted_records: int = 0
    own_damaged_records: int = 0
    adopted_damaged_records: int = 0
    damaged_bytes: int = 0
    damaged_regions: int = 0
    adopted_files: int = 0

    @property
    def records(self) -> int:
        """Records sent, own and adopted."""
        return self.own_records + self.adopted_records

    @property
    def damaged_records(self) -> int:
        """Records known lost to damage, own and adopted."""
        return self.own_damaged_records + self.adopted_damaged_records


class SpoolReplayError(ActivityLoggingError):
    """``Spool.replay`` stopped early: ``send`` raised (the cause), or a file could not be read
    or its damaged bytes could not be set aside.

    ``result`` holds what was finished before that: files whose entries were all sent and
    that were truncated or removed. The file being replayed stays as it was, to be sent
    again on the next call (entries carry their record ids: a resend is deduplicated).
    """

    def __init__(self, result: ReplayResult, cause: BaseException) -> None:
        super().__init__(f"spool replay stopped: {type(cause).__name__}: {cause}")
        self.result = result


class Spool:
    """A producer's spool file plus adoption of orphaned ones. Used by one thread at a time.

    The counters are plain ints, safe to read from any thread (``stats()``); cumulative for
    this object, they include what a replay finished before raising ``SpoolReplayError``:
    ``replayed_records`` (own, sent), ``adopted_records`` (others', sent),
    ``damaged_records`` (known lost: own exactly, others' where a frame header survived),
    ``own_damaged_records`` (the own part of it: spooled = replayed + pending + this),
    ``damaged_bytes`` and ``damaged_regions`` (moved aside into ``damaged/``),
    ``write_failures`` (appends rolled back).
    """

    def __init__(self, directory: str | os.PathLike[str], producer_id: str, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{producer_id}{SUFFIX}"
        self.max_bytes = max_bytes
        self._file: io.FileIO | None = None
        self._size = 0
        self._pending_records = 0
        self._next_orphan_check = 0.0
        self._mode_checked = False
        self.replayed_records = 0
        self.adopted_records = 0
        self.damaged_records = 0
        self.own_damaged_records = 0
        self.damaged_bytes = 0
        self.damaged_regions = 0
        self.write_failures = 0

    @property
    def size_bytes(self) -> int:
        """Bytes currently held in this producer's spool file."""
        return self._size

    @property
    def pending_records(self) -> int:
        """Records this producer appended that are not replayed (or counted damaged) yet."""
        return self._pending_records

    def _open(self) -> io.FileIO:
        if self._file is not None:
            return self._file
        existed = _make_private_dir(self.directory)
        if existed and not self._mode_checked:
            self._check_mode()
        if not self._owned():
            raise PermissionError(f"spool directory {self.directory} belongs to another user")
        for _ in range(2):
            handle = open(self.path, "a+b", buffering=0, opener=_private_opener)  # noqa: SIM115 - held for the producer's lifetime
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.fchmod(handle.fileno(), _FILE_MODE)  # exact, whatever the umask
                if os.fstat(handle.fileno()).st_size == 0:
                    self._file, self._size, self._pending_records = handle, 0, 0
                    return handle
                # Left by an earlier Spool of this producer id: its record count is unknown
                # here, so it becomes an orphan (adopted, counted from its headers) and this
                # producer starts a fresh file whose appends it counts exactly.
                os.rename(self.path, self.directory / f"{self.path.stem}-{_stamp()}{SUFFIX}")
            except BaseException:
                handle.close()
                raise
            handle.close()
        raise OSError(f"could not start a fresh spool file at {self.path}")

    def _owned(self) -> bool:
        """False (reported once) when the directory belongs to another user: its files could
        have been planted there, so nothing is written to or replayed from it."""
        try:
            owner = self.directory.stat().st_uid
        except OSError:
            return True  # not there (yet): it will be made ours
        if owner == os.getuid():
            return True
        reporter.report(f"spool-owner:{self.directory}",
                        f"spool directory {self.directory} belongs to uid {owner}, not to this "
                        "process: not used (set ACTIVITY_LOG_SPOOL_PATH to a directory of yours)")
        return False

    def _check_mode(self) -> None:
        self._mode_checked = True
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(self.directory.stat().st_mode)
            if mode & 0o077:
                reporter.report(
                    f"spool-mode:{self.directory}",
                    f"spool directory {self.directory} is accessible to group/others "
                    f"(mode {mode:o}); spooled records are readable there, consider chmod 700")

    def append(self, entry: Entry) -> bool:
        """Append one entry as a frame and fsync it; True when it is on disk.

        Returns False, writing nothing, when the file would exceed ``max_bytes``. When the
        write, flush or fsync raises (disk full, file size limit, I/O error) the file is
        truncated back to its last good size and the exception re-raised: nothing of the
        entry is kept, and later appends work as before.
        """
        frame = encode_frame(entry)
        handle = self._open()
        if self._size + len(frame) > self.max_bytes:
            return False
        try:
            view = memoryview(frame)
            while view:
                view = view[handle.write(view) :]
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            self.write_failures += 1
            self._roll_back(handle)
            raise
        self._size += len(frame)
        self._pending_records += _record_count(entry)
        return True

    def _roll_back(self, handle: io.FileIO) -> None:
        try:
            os.ftruncate(handle.fileno(), self._size)
        except OSError as exc:
            # The torn frame stays; replay skips it as damage (its checksum cannot match).
            reporter.report("spool-rollback", "could not roll back a failed spool write", exc)
            with contextlib.suppress(OSError):
                self._size = os.fstat(handle.fileno()).st_size

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
        if not self.directory.is_dir() or not self._owned():
            return
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                if path == self.path or path.stat().st_size == 0:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, PermissionError):
                continue  # just replayed and removed, or another user's (0600) file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live producer owns it
            finally:
                os.close(fd)  # releases the probe's lock
            yield path

    def replay(self, send: Send, group: int = 16, *, orphans: bool = True) -> ReplayResult:
        """Send every spooled entry, own file first, then orphans nobody holds (not with
        ``orphans=False``: a closing handler replays only its own file).

        Entries go to ``send`` in lists of at most ``group``, in file order, read frame by
        frame (memory bounded by ``group`` frames plus a 1 MiB window). A file is truncated
        (own) or removed (orphan) only after every entry in it was sent and its damaged
        bytes, if any, were copied into ``damaged/``. Raises ``SpoolReplayError`` (cause:
        what ``send`` or the file system raised) when it stops early; the file in progress
        is left as it was and ``.result`` tells what was finished.
        """
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group!r}")
        result = ReplayResult()
        try:
            if self._file is not None:
                self._replay_own(self._file, send, group, result)
            for path in list(self._orphans()) if orphans else []:
                self._replay_orphan(path, send, group, result)
        except Exception as exc:
            raise SpoolReplayError(result, exc) from exc
        return result

    def _replay_own(self, handle: io.FileIO, send: Send, group: int, result: ReplayResult) -> None:
        fd = handle.fileno()
        size = os.fstat(fd).st_size  # also bytes a failed roll-back left behind
        if size == 0 and self._pending_records == 0:
            self._size = 0
            return
        sent, damages = self._send_file(fd, size, send, group)
        lost = max(0, self._pending_records - sent)
        self._set_aside(fd, self.path, damages)
        os.ftruncate(fd, 0)
        self._size, self._pending_records = 0, 0
        self._count_damage(self.path, damages, lost, result)
        self.replayed_records += sent
        self.own_damaged_records += lost
        result.own_records += sent
        result.own_damaged_records += lost

    def _replay_orphan(self, path: Path, send: Send, group: int, result: ReplayResult) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live producer owns it
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                return  # another adopter finished it while we waited for the lock
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                return  # replaced meanwhile: ours is a removed file, already replayed
            sent, damages = self._send_file(fd, held.st_size, send, group)
            lost = sum(d.known_records for d in damages)
            self._set_aside(fd, path, damages)
            path.unlink()
            self._count_damage(path, damages, lost, result)
            self.adopted_records += sent
            result.adopted_records += sent
            result.adopted_damaged_records += lost
            result.adopted_files += 1
        finally:
            os.close(fd)

    def _send_file(self, fd: int, size: int, send: Send, group: int) -> tuple[int, list[_Damage]]:
        """Send the intact entries of a file; returns (records sent, damaged regions)."""
        win = _Window(lambda n, offset: os.pread(fd, n, offset), size)
        batch: list[Entry] = []
        records = 0
        damages: list[_Damage] = []
        for item in _scan(win, self.max_bytes):
            if isinstance(item, _Damage):
                damages.append(item)
                continue
            batch.append(item[0])
            records += item[1]
            if len(batch) >= group:
                send(batch)
                batch = []
        if batch:
            send(batch)
        return records, damages

    def _set_aside(self, fd: int, path: Path, damages: list[_Damage]) -> None:
        """Copy each damaged region of ``path`` into its own file in ``damaged/`` (durably)."""
        if not damages:
            return
        target = self.directory / DAMAGED_DIR
        _make_private_dir(target)
        stamp = _stamp()
        for damage in damages:
            dest = target / f"{path.name}.{stamp}.{damage.offset}{DAMAGED_SUFFIX}"
            _copy_region(lambda n, offset: os.pread(fd, n, offset), damage.offset, damage.length, dest)
        _fsync_dir(target)

    def _count_damage(self, path: Path, damages: list[_Damage], lost: int, result: ReplayResult) -> None:
        """Count what a finished file lost (once: its damage is gone from the spool now), report it."""
        if not damages and not lost:
            return
        size = sum(d.length for d in damages)
        self.damaged_regions += len(damages)
        self.damaged_bytes += size
        self.damaged_records += lost
        result.damaged_regions += len(damages)
        result.damaged_bytes += size
        if path == self.path:
            result_hint = f"{lost} records lost"
        else:
            result_hint = f"{lost} records known lost (more where no frame header survived)"
        reporter.report(
            f"spool-damaged:{next(_DAMAGE_EVENTS)}",  # each damage once, never rate-limited away
            f"spool file {path.name}: {len(damages)} damaged regions ({size} bytes) moved to "
            f"{self.directory / DAMAGED_DIR}, {result_hint}")

    def release_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptor, leaving the file and the parent's
        lock as they are (the lock belongs to the open file, which the parent still holds).
        Never raises."""
        handle, self._file = self._file, None
        self._size, self._pending_records = 0, 0
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

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
