"""examples/callcenter_app.py runs: selftest on the embedded store, served by uvicorn, and on
Redis + PostgreSQL. Checked here so the example cannot rot."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from activity_logging import ActivityWorker
from activity_logging.db import init_db

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "callcenter_app.py"
SELFTEST_TYPES = {
    "system_startup", "call_created", "call_updated", "call_ended", "agent_status_changed",
    "lead_created", "lead_converted", "system_event", "api_request", "api_error",
    "system_shutdown",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "ACTIVITY_LOG_STREAM", "ACTIVITY_LOG_SCHEMA")}
    env.update(extra)
    return env


def _rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM activity_logs")]
    finally:
        conn.close()


def test_selftest_passes_on_the_embedded_store(tmp_path: Path) -> None:
    db = tmp_path / "activity.db"
    done = subprocess.run([sys.executable, str(APP), "--selftest", "--db", str(db)],
                          env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "selftest: ok" in done.stdout
    rows = _rows(db)
    assert {r["activity_type"] for r in rows} >= SELFTEST_TYPES
    assert len({r["id"] for r in rows}) == len(rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_by_uvicorn_records_the_forwarded_client(tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(APP), "--port", str(port), "--db", str(db)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # wait for the server to listen (a bound, not a timing assertion)
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        headers = {"User-Agent": "served-test", "X-Forwarded-For": "203.0.113.77",
                   "X-Request-ID": "served-1", "X-Agent-ID": "a-2"}
        created = httpx.post(f"{base}/calls", json={"number": "555-0111", "agent_id": "a-2"},
                             headers=headers, timeout=10)
        assert created.status_code == 201
        assert created.headers["x-request-id"] == "served-1"
        recent = httpx.get(f"{base}/activities", timeout=10).json()
        assert any(r["request_id"] == "served-1" and r["activity_type"] == "call_created"
                   for r in recent)
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    rows = _rows(db)
    created_rows = [r for r in rows if r["activity_type"] == "call_created"]
    assert len(created_rows) == 1
    row = created_rows[0]
    assert (row["ip_address"], row["user_agent"], row["request_id"], row["actor_id"]) == (
        "203.0.113.77", "served-test", "served-1", "a-2")
    assert {"system_startup", "system_shutdown", "api_request"} <= {r["activity_type"] for r in rows}


@pytest.mark.integration
@pytest.mark.anyio
async def test_selftest_on_redis_then_worker_into_postgres(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str
) -> None:
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [sys.executable, str(APP), "--selftest"],
            env=_env(REDIS_URL=redis_url, ACTIVITY_LOG_STREAM=redis_stream), check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    await init_db(pg_url, schema=pg_schema)
    worker = ActivityWorker(redis_url, pg_url, stream=redis_stream, schema=pg_schema,
                            max_wait=0.2)
    await worker.run(stop_when_idle=True)
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": pg_schema})
    try:
        rows = [dict(r) for r in await conn.fetch("SELECT * FROM activity_logs")]
    finally:
        await conn.close()
    assert {r["activity_type"] for r in rows} >= SELFTEST_TYPES
    assert len({r["id"] for r in rows}) == len(rows)
    with_request = [r for r in rows if r["request_id"]]
    assert with_request
    assert {str(r["ip_address"]) for r in with_request} == {"198.51.100.23"}
    assert {r["user_agent"] for r in with_request} == {"callcenter-selftest/1.0"}
