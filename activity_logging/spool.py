"""Local-disk spool for stream entries that could not be shipped while Redis was down.

Each producer appends to its own file ``<directory>/<producer_id>.spool`` and holds an
exclusive ``flock`` on it for as long as it lives. A file nobody holds belongs to a process
that exited or died before replaying it: the next handler that opens the directory adopts
it and replays it. The directory is created ``0700`` (and so are the parents the spool
creates), files ``0600``.

Frames are ``spool_frames.py``'s (the format, the checksums, the scanner that recovers
every intact frame past damage); this module writes them to files and replays the files.

A spool file is replayed as a stream, frame by frame, never read whole: a frame over the
worker's caps (``entry_limits``: records and bytes per entry, what the worker would refuse
anyway) is not read, it is set aside as damage (``oversized_frames`` counts them), and
entries go to ``send`` in groups of at most ``group`` entries and ``REPLAY_GROUP_BYTES``.

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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._internal import reporter
from .entry_limits import MAX_ENTRY_BYTES, MAX_ENTRY_RECORDS
from .exceptions import ActivityLoggingError
from .spool_frames import (
    MAX_HEADER_BYTES,
    WINDOW_BYTES,
    Damage,
    Entry,
    Reader,
    Window,
    encode_frame,
    read_frames,
    record_count,
    scan,
)

# ``encode_frame`` and ``read_frames`` stay importable from here for existing callers.
__all__ = [
    "DAMAGED_DIR",
    "DAMAGED_SUFFIX",
    "SUFFIX",
    "ReplayResult",
    "Spool",
    "SpoolReplayError",
    "encode_frame",
    "read_frames",
]

SUFFIX: Final = ".spool"
DAMAGED_DIR: Final = "damaged"
DAMAGED_SUFFIX: Final = ".damaged"
ORPHAN_CHECK_INTERVAL: Final = 5.0
#: A replay hands ``send`` a group once its payloads reach this many bytes (or ``group``
#: entries): memory is bounded by this plus one frame.
REPLAY_GROUP_BYTES: Final = 8 * 1024 * 1024

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_DAMAGE_EVENTS: Final = itertools.count(1)

Send = Callable[[list[Entry]], None]


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
            part = pread(min(WINDOW_BYTES, length - done), offset + done)
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


def _same_file(held: os.stat_result, path: Path) -> bool:
    """True when ``path`` still names the file ``held`` describes (not removed or replaced)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


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
    oversized_frames: int = 0

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
    ``damaged_bytes`` and ``damaged_regions`` (moved aside into ``damaged/``; frames over
    ``max_entry_records`` / ``max_entry_bytes`` are set aside so, unread, and counted in
    ``oversized_frames`` too), ``write_failures`` (appends rolled back).
    """

    def __init__(self, directory: str | os.PathLike[str], producer_id: str, max_bytes: int, *,
                 max_entry_records: int = MAX_ENTRY_RECORDS,
                 max_entry_bytes: int = MAX_ENTRY_BYTES) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{producer_id}{SUFFIX}"
        self.max_bytes = max_bytes
        self.max_entry_records = max_entry_records
        # the payload's cap, plus room for its header (itself capped at MAX_HEADER_BYTES)
        self.max_frame_bytes = min(max_bytes, max_entry_bytes + MAX_HEADER_BYTES)
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
        self.oversized_frames = 0

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
        for _ in range(3):
            handle = open(self.path, "a+b", buffering=0, opener=_private_opener)  # noqa: SIM115 - held for the producer's lifetime
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = os.fstat(handle.fileno())
                if not _same_file(held, self.path):
                    # an adopter removed it as an empty orphan between our open and our lock
                    handle.close()
                    continue
                os.fchmod(handle.fileno(), _FILE_MODE)  # exact, whatever the umask
                if held.st_size == 0:
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
        self._pending_records += record_count(entry)
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
                if path == self.path:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, PermissionError):
                continue  # just replayed and removed, or another user's (0600) file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = os.fstat(fd)
                if held.st_size == 0:
                    # a producer that died before its first frame: nothing to replay, and
                    # removed under our lock (a producer opening it checks that its locked
                    # file is still the one at its path, and starts over if not)
                    if _same_file(held, path):
                        path.unlink()
                    continue
            except BlockingIOError:
                continue  # a live producer owns it
            except FileNotFoundError:
                continue  # another adopter removed it meanwhile
            finally:
                os.close(fd)  # releases the probe's lock
            yield path

    def replay(self, send: Send, group: int = 16, *, orphans: bool = True) -> ReplayResult:
        """Send every spooled entry, own file first, then orphans nobody holds (not with
        ``orphans=False``: a closing handler replays only its own file).

        Entries go to ``send`` in lists of at most ``group``, in file order, read frame by
        frame (memory bounded by one frame of at most ``max_frame_bytes``, ``REPLAY_GROUP_BYTES``
        and a 1 MiB window; frames over the entry caps are set aside unread). A file is truncated
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
            if not _same_file(held, path):
                return  # removed or replaced meanwhile: ours was already replayed
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

    def _send_file(self, fd: int, size: int, send: Send, group: int) -> tuple[int, list[Damage]]:
        """Send the intact entries of a file, frame by frame; returns (records sent, damaged
        regions: each counts in ``oversized`` the frames it holds that were over the caps)."""
        win = Window(lambda n, offset: os.pread(fd, n, offset), size)
        batch: list[Entry] = []
        batch_bytes = 0
        records = 0
        damages: list[Damage] = []
        for item in scan(win, self.max_frame_bytes, self.max_entry_records):
            if isinstance(item, Damage):
                damages.append(item)
                continue
            batch.append(item[0])
            batch_bytes += len(item[0].get("d") or b"")
            records += item[1]
            if len(batch) >= group or batch_bytes >= REPLAY_GROUP_BYTES:
                send(batch)
                batch, batch_bytes = [], 0
        if batch:
            send(batch)
        return records, damages

    def _set_aside(self, fd: int, path: Path, damages: list[Damage]) -> None:
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

    def _count_damage(self, path: Path, damages: list[Damage], lost: int, result: ReplayResult) -> None:
        """Count what a finished file lost (once: its damage is gone from the spool now), report it."""
        if not damages and not lost:
            return
        size = sum(d.length for d in damages)
        oversized = sum(d.oversized for d in damages)
        self.damaged_regions += len(damages)
        self.damaged_bytes += size
        self.damaged_records += lost
        self.oversized_frames += oversized
        result.damaged_regions += len(damages)
        result.damaged_bytes += size
        result.oversized_frames += oversized
        if path == self.path:
            result_hint = f"{lost} records lost"
        else:
            result_hint = f"{lost} records known lost (more where no frame header survived)"
        reporter.report(
            f"spool-damaged:{next(_DAMAGE_EVENTS)}",  # each damage once, never rate-limited away
            f"spool file {path.name}: {len(damages)} damaged regions ({size} bytes"
            + (f", {oversized} frames over the entry caps" if oversized else "")
            + f") moved to {self.directory / DAMAGED_DIR}, {result_hint}")

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
