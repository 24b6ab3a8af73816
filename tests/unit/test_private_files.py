"""The embedded store's SQLite files are private: created 0600 under any umask (and SQLite's
-wal and -shm files with them); an existing file keeps its mode, and one that group or
others can open is reported once."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from activity_logging import private_files
from activity_logging.handler import ActivityHandler
from activity_logging.private_files import create_private_file, prepare_sqlite_file
from activity_logging.store_sqlite import SQLiteStore
from tests.cli_run import run
from tests.crud_rows import make_rows


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """umask 000: a file made without an explicit mode would be 0666 (0644 under 022)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(autouse=True)
def _fresh_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(private_files, "_reported", set())


def test_create_private_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    assert create_private_file(path)
    assert _mode(path) == 0o600
    assert not create_private_file(path)  # exists: left alone


def test_create_private_file_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "a.db").symlink_to(target)
    assert not create_private_file(tmp_path / "a.db")
    assert not target.exists()


def test_the_store_makes_its_database_and_wal_files_0600(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(f"sqlite:///{path}", create=True)

    async def write() -> None:
        await store.connect()
        assert await store.insert_activities(make_rows(5)) == 5

    asyncio.run(write())
    try:
        for name in ("store.db", "store.db-wal", "store.db-shm"):
            assert (tmp_path / name).exists(), name
            assert _mode(tmp_path / name) == 0o600, name
    finally:
        asyncio.run(store.close())


def test_init_db_makes_the_file_0600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.db"
    code, _, err = run(["init-db", "--database-url", f"sqlite:///{path}"], capsys)
    assert code == 0, err
    assert _mode(path) == 0o600
    for side in ("cli.db-wal", "cli.db-shm"):
        if (tmp_path / side).exists():
            assert _mode(tmp_path / side) == 0o600


def test_the_embedded_handler_makes_its_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "embedded.db"
    handler = ActivityHandler(database_url=f"sqlite:///{path}")
    log = logging.getLogger("activity.private_files")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("call_created", extra={"actor_id": "a1"})
        assert handler.flush(10.0)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert _mode(path) == 0o600
    assert handler.stats()["sent"] == 1


def test_an_existing_shared_file_keeps_its_mode_and_is_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    os.chmod(path, 0o644)
    prepare_sqlite_file(path)
    prepare_sqlite_file(path)
    store = SQLiteStore(f"sqlite:///{path}", create=True)
    store.connect_now()
    store.abort()
    err = capsys.readouterr().err
    assert err.count("is accessible to group/others (mode 644)") == 1, err
    assert str(path) in err
    assert _mode(path) == 0o644


def test_a_shared_side_file_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.db"
    assert create_private_file(path)
    wal = tmp_path / "p.db-wal"
    wal.touch()
    os.chmod(wal, 0o666)
    prepare_sqlite_file(path)
    err = capsys.readouterr().err
    assert "p.db-wal" in err and "mode 666" in err
    assert "p.db is" not in err


def test_a_private_file_is_not_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.db"
    assert create_private_file(path)
    prepare_sqlite_file(path)
    assert capsys.readouterr().err == ""
