"""Files that hold audit records, kept private: created 0600 whatever the umask, and an
existing one that group or others can open reported once per process.

Used for the embedded store's SQLite file (``store_sqlite.SQLiteStore`` and ``init-db``);
SQLite creates the ``-wal`` and ``-shm`` files next to it with the database file's mode
(its unix VFS copies it, umask or not), so a database made here keeps all three private. A
file that already exists keeps its mode: changing the permissions of a file someone else
chose is not a logging library's call, saying so is. Dependency-free (stdlib and
``_internal``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import Final

from ._internal import reporter

PRIVATE_FILE_MODE: Final = 0o600
#: The siblings SQLite makes next to a database in WAL mode (and a rollback journal).
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")

_reported: set[str] = set()
_lock = threading.Lock()


def create_private_file(path: Path) -> bool:
    """Create ``path``, empty, with mode ``PRIVATE_FILE_MODE`` exactly (neither the umask
    nor an inherited ACL default widens it); False when it already exists (left as it is;
    a symlink there is not followed). Raises ``OSError`` as ``os.open`` does (no such
    directory, no permission)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        if hasattr(os, "fchmod"):  # POSIX; the umask can only narrow, an ACL can widen
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return True


def report_if_shared(path: Path, what: str) -> bool:
    """Say once per process (on stderr, ``_internal.reporter``) that ``path`` exists and
    group or others may read or write it. True when it was reported by this call. Never
    raises."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, ValueError):
        return False
    if not mode & 0o077:
        return False
    key = str(path.absolute())
    with _lock:
        if key in _reported:
            return False
        _reported.add(key)
    reporter.report(f"file-mode:{key}",
                    f"{what} {path} is accessible to group/others (mode {mode:o}); the audit "
                    f"records in it are readable there, consider chmod 600")
    return True


def prepare_sqlite_file(path: Path) -> None:
    """Before SQLite opens the database file ``path``: create it 0600 when it is missing
    (SQLite takes an empty file for an empty database), else report, once, a database file
    or side file (``SQLITE_SIDE_FILES``) that group or others can open. Never raises: when
    the file cannot be made here, SQLite's own open says why."""
    with contextlib.suppress(OSError, ValueError):
        if create_private_file(path):
            return
    report_if_shared(path, "SQLite database")
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            report_if_shared(side, "SQLite file")


__all__ = ["PRIVATE_FILE_MODE", "SQLITE_SIDE_FILES", "create_private_file",
           "prepare_sqlite_file", "report_if_shared"]
