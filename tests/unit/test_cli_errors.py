"""Failure paths of the CLI and of the parsers under it: each reports one line (never a
traceback) with the right exit code, and crafted input (scoped IPv6 peers, cursors, huge
ages and retention periods) is rejected or normalised.

The middleware and cursor cases are here because the CLI's ``--cursor`` and the viewer
pass that input on unchanged; their own modules' tests cover the rest.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson
import pytest

from activity_logging.crud import ActivityCursor
from activity_logging.exceptions import ConfigurationError, StoreUnavailableError
from activity_logging.export import export_activities
from activity_logging.middleware import parse_forwarded_for
from activity_logging.request_context import parse_ip as _parse_ip
from activity_logging.retention import MAX_RETENTION_DAYS, cleanup
from activity_logging.when import parse_when
from tests.cli_run import run

ROOT = Path(__file__).resolve().parents[2]


# --- scoped IPv6 peers ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["fe80::1%eth0", "[fe80::1%eth0]:5678", "fe80::1%25"])
def test_scoped_ipv6_loses_its_zone_id(text: str) -> None:
    address = _parse_ip(text)
    assert address is not None
    assert str(address) == "fe80::1"


def test_scoped_ipv6_peer_gives_an_inet_safe_address() -> None:
    assert parse_forwarded_for("fe80::1%eth0", None, ()) == "fe80::1"


# --- crafted cursors --------------------------------------------------------------------------


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize("value", [
    ["2024-01-01T00:00:00", 5], [5, "0" * 32], ["2024-01-01T00:00:00", None],
    {"a": "2024-01-01T00:00:00", "b": "0" * 32}, "ab", ["2024-01-01T00:00:00", ["x"]],
])
def test_crafted_cursor_is_a_configuration_error(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalid cursor"):
        ActivityCursor.decode(_cursor(value))


def test_well_formed_cursor_still_round_trips() -> None:
    cursor = ActivityCursor(datetime(2024, 1, 1, tzinfo=UTC), uuid.uuid4())
    assert ActivityCursor.decode(cursor.encode()) == cursor


# --- unopenable SQLite files ----------------------------------------------------------------


def test_init_db_unopenable_sqlite_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["init-db", "--database-url", "sqlite:////nonexistent/dir/x.db"], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert "unable to open database file" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture
def aiosqlite_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files SQLAlchemy asks aiosqlite to open, recorded as it does."""
    opened: list[str] = []
    real = aiosqlite.connect

    def connect(database: Any, *args: Any, **kwargs: Any) -> aiosqlite.Connection:
        opened.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(aiosqlite, "connect", connect)
    return opened


@pytest.mark.parametrize("verb", ["init-db", "query", "status", "verify", "vacuum"])
def test_unopenable_sqlite_is_refused_before_aiosqlite_opens_it(
    verb: str, tmp_path: Path, aiosqlite_opens: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiosqlite, failing to open a file, answers its own stop request from its thread after
    # asyncio.run has closed the loop: an exception in a thread, after the verb returned.
    monkeypatch.delenv("REDIS_URL", raising=False)
    target = tmp_path / "missing-dir" / "x.db" if verb == "init-db" else tmp_path  # a directory
    code, out, err = run([verb, "--database-url", f"sqlite:///{target}"], capsys)
    assert code == 1
    assert err == f"activity-logging {verb}: database error" + (
        f" at sqlite:///{target}" if verb == "init-db" else "") + ": unable to open database file\n"
    assert out == ""
    assert aiosqlite_opens == []
    assert list(tmp_path.iterdir()) == []


def test_init_db_still_creates_a_new_sqlite_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "new.db"
    code, out, _ = run(["init-db", "--database-url", f"sqlite:///{target}"], capsys)
    assert code == 0
    assert out == f"activity_logs ready in sqlite:///{target}\n"
    code, out, _ = run(["query", "--database-url", f"sqlite:///{target}", "--format", "jsonl"],
                       capsys)
    assert (code, out) == (0, "")


# --- output write errors, broken pipes -------------------------------------------------------


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass


def test_export_write_error_is_not_an_unreachable_database(db: str, rows: list[dict[str, Any]]
                                                            ) -> None:
    with pytest.raises(OSError, match="No space left") as exc:
        asyncio.run(export_activities(db, _FullDisk(), progress=False))  # type: ignore[arg-type]
    assert not isinstance(exc.value, StoreUnavailableError)
    assert exc.value.errno == errno.ENOSPC


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_export_to_a_full_disk_exits_1_naming_the_output(
        db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["export", "--database-url", db, "-o", "/dev/full", "--no-progress",
                        "--batch-size", "5"], capsys)
    assert code == 1
    assert "cannot reach" not in err
    assert "cannot write" in err and "/dev/full" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", [["query", "--format", "jsonl"], ["export"]])
def test_closed_stdout_is_quiet(verb: list[str], db: str, rows: list[dict[str, Any]]) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "activity_logging", *verb, "--database-url", db],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader went away before anything was written (`| head -0`)
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 141
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert "cannot reach" not in err


# --- huge ages and retention periods ------------------------------------------------------------


@pytest.mark.parametrize("text", ["99999999999w", "9" * 40 + "s", "0001-01-01T00:00+01:00"])
def test_out_of_range_time_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="out of range"):
        parse_when(text)


def test_out_of_range_since_exits_2(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["query", "--database-url", db, "--since", "99999999999w"], capsys)
    assert code == 2
    assert "out of range" in err and "Traceback" not in err


def test_retention_days_above_the_maximum_is_a_configuration_error(db: str) -> None:
    with pytest.raises(ConfigurationError, match=str(MAX_RETENTION_DAYS)):
        asyncio.run(cleanup(db, retention_days=999_999_999))


@pytest.mark.parametrize("verb", ["cleanup", "scheduler"])
def test_huge_retention_days_exits_2(verb: str, db: str, rows: list[dict[str, Any]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = [verb, "--database-url", db, "--retention-days", "999999999"]
    code, _, err = run([*argv, "--once"] if verb == "scheduler" else argv, capsys)
    assert code == 2
    assert str(MAX_RETENTION_DAYS) in err and "Traceback" not in err


def test_retention_days_at_the_maximum_still_works(db: str, rows: list[dict[str, Any]]) -> None:
    result = asyncio.run(cleanup(db, retention_days=MAX_RETENTION_DAYS))
    assert result.retention_days == MAX_RETENTION_DAYS


# --- demo against an unopenable store ------------------------------------------------------------


def test_demo_unopenable_sqlite_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["demo", "--database-url", "sqlite:////nonexistent/dir/x.db",
                        "--count", "1"], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert "unable to open database file" in err
