"""The read side on a read replica, on the real PostgreSQL.

One server stands in for both: the "replica" is a second database, made for this module and
dropped after it, holding the same schema as the primary with different rows. What a read
verb returns says which database it read; ``verify`` and the writers stay on the primary.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from activity_logging import read_engine
from activity_logging.config import ENV_READ_DATABASE_URL
from activity_logging.crud import ActivityFilter, activity_log_crud
from activity_logging.viewer import create_viewer_app
from tests.cli_run import run
from tests.crud_rows import make_rows, seed
from tests.html_page import Page
from tests.pg_sql import execute
from tests.services import PG_URL, require_service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "replica-viewer-token-0123456789"
START_TIMEOUT = 60.0


def on_database(url: str, database: str, *, password: str | None = None) -> str:
    """``url`` naming ``database`` instead (and, given one, with a password: the test server
    trusts local logins, so any password connects)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0] or 'postgres'}:{password}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))



@pytest.fixture(scope="module")
def replica_database() -> Iterator[str]:
    """The URL of a database of its own on the shared server, dropped after the module."""
    url = require_service("PostgreSQL", PG_URL)
    name = f"t_{uuid.uuid4().hex[:12]}_replica"
    asyncio.run(execute(url, f'CREATE DATABASE "{name}"'))
    try:
        yield on_database(url, name)
    finally:
        asyncio.run(execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def stores(pg_url: str, pg_schema: str, replica_database: str,
           monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The primary (``pg_schema`` in the shared database) with 5 rows, the replica (the same
    schema in the module's database) with 7 others; the environment names neither."""
    for name in ("DATABASE_URL", ENV_READ_DATABASE_URL, "ACTIVITY_LOG_SCHEMA", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    asyncio.run(execute(replica_database, f'CREATE SCHEMA "{pg_schema}"'))
    primary_rows = make_rows(5, producer_id="primary")
    replica_rows = make_rows(7, producer_id="replica")
    asyncio.run(seed(pg_url, primary_rows, schema=pg_schema))
    asyncio.run(seed(replica_database, replica_rows, schema=pg_schema))
    return {"primary": pg_url, "replica": replica_database, "schema": pg_schema,
            "primary_ids": {r["id"] for r in primary_rows},
            "replica_ids": {r["id"] for r in replica_rows}}


def queried_ids(stores: dict[str, Any], argv: list[str],
                capsys: pytest.CaptureFixture[str]) -> set[uuid.UUID]:
    code, out, err = run(["query", "--schema", stores["schema"], "--format", "jsonl",
                          "--limit", "500", *argv], capsys)
    assert code == 0, err
    return {uuid.UUID(json.loads(line)["id"]) for line in out.splitlines()}


def test_query_reads_the_replica_from_the_argument_or_the_environment(
    stores: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, replica = stores["primary"], stores["replica"]
    assert queried_ids(stores, ["--database-url", primary, "--read-database-url", replica],
                       capsys) == stores["replica_ids"]
    monkeypatch.setenv("DATABASE_URL", primary)
    assert queried_ids(stores, [], capsys) == stores["primary_ids"]
    monkeypatch.setenv(ENV_READ_DATABASE_URL, replica)
    assert queried_ids(stores, [], capsys) == stores["replica_ids"]
    assert queried_ids(stores, ["--database-url", primary], capsys) == stores["primary_ids"]
    monkeypatch.setenv(ENV_READ_DATABASE_URL, primary)
    assert queried_ids(stores, ["--read-database-url", replica], capsys) == stores["replica_ids"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_copies_from_the_replica(stores: dict[str, Any], fmt: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / f"out.{fmt}"
    base = ["export", "--schema", stores["schema"], "--database-url", stores["primary"],
            "--format", fmt, "-o", str(target)]
    code, _, err = run([*base, "--read-database-url", stores["replica"]], capsys)
    assert code == 0, err
    lines = target.read_text().splitlines()
    if fmt == "jsonl":
        got = {uuid.UUID(json.loads(line)["id"]) for line in lines}
    else:
        got = {uuid.UUID(line.split(",", 1)[0]) for line in lines[1:]}
    assert got == stores["replica_ids"]
    assert f"from the read replica {stores['replica']}" in err
    code, _, err = run(base, capsys)
    assert code == 0 and "read replica" not in err
    assert len(target.read_text().splitlines()) - (fmt == "csv") == len(stores["primary_ids"])


def test_verify_reads_the_primary_unless_given_the_replica(
    stores: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", stores["primary"])
    monkeypatch.setenv(ENV_READ_DATABASE_URL, stores["replica"])
    code, out, _ = run(["verify", "--schema", stores["schema"], "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["rows"], report["replica"]) == (len(stores["primary_ids"]), False)
    code, out, _ = run(["verify", "--schema", stores["schema"], "--json",
                        "--read-database-url", stores["replica"]], capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["rows"], report["replica"]) == (len(stores["replica_ids"]), True)


@pytest.mark.anyio
async def test_the_viewer_reads_the_replica(stores: dict[str, Any]) -> None:
    app = create_viewer_app(database_url=stores["primary"], read_database_url=stores["replica"],
                            schema=stores["schema"], authorize=lambda r: True)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://viewer.test") as client:
            listing = await client.get("/?limit=500")
            export = await client.get("/export.jsonl")
    finally:
        await app.state.viewer_store.close()
    assert set(Page(listing.text).row_ids()) == stores["replica_ids"]
    assert {uuid.UUID(json.loads(x)["id"]) for x in export.text.splitlines()} == stores["replica_ids"]


@pytest.mark.anyio
async def test_read_engine_reads_the_replica_and_cannot_write(
    stores: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", stores["primary"])
    monkeypatch.setenv(ENV_READ_DATABASE_URL, stores["replica"])
    monkeypatch.setenv("ACTIVITY_LOG_SCHEMA", stores["schema"])
    for engine, want in ((read_engine(), stores["replica_ids"]),
                         (read_engine(stores["primary"]), stores["primary_ids"])):
        try:
            async with engine.connect() as conn:
                page = await activity_log_crud.get_page(conn, ActivityFilter(), limit=500)
                assert {r.id for r in page.items} == want
                with pytest.raises(DBAPIError, match="read-only transaction"):
                    await conn.execute(text("DELETE FROM activity_logs"))
        finally:
            await engine.dispose()
    # a setting of the caller's is kept beside the read-only one
    engine = read_engine(connect_args={"server_settings": {"application_name": "replica-test"}})
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW application_name"))).scalar_one() == "replica-test"
            assert (await conn.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
    finally:
        await engine.dispose()
    assert await _count(stores["primary"], stores["schema"]) == len(stores["primary_ids"])


async def _count(url: str, schema: str) -> int:
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM activity_logs")
    finally:
        await conn.close()
    return count


def test_serve_shows_the_replica_and_names_it_with_its_password_hidden(
    stores: dict[str, Any], tmp_path: Path,
) -> None:
    replica = on_database(stores["replica"], urlsplit(stores["replica"]).path.lstrip("/"),
                          password="s3cret-pw")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", ENV_READ_DATABASE_URL, "ACTIVITY_LOG_SCHEMA", "REDIS_URL")}
    env["ACTIVITY_LOG_VIEWER_TOKEN"] = TOKEN
    stderr = tmp_path / "serve.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "activity_logging", "serve", "--port", "0",
             "--database-url", stores["primary"], "--read-database-url", replica,
             "--schema", stores["schema"]],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        base = _wait_for_start(process, stderr)
        request = urllib.request.Request(f"{base}/?limit=500",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            html = response.read().decode()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    said = stderr.read_text()
    assert set(Page(html).row_ids()) == stores["replica_ids"]
    assert "s3cret-pw" not in said
    assert f"serve: {replica.replace('s3cret-pw', '***')} read-only at" in said
    assert "pages read the replica" in said


def _wait_for_start(process: subprocess.Popen[bytes], stderr: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        said = stderr.read_text()
        found = re.search(r"read-only at (http://127\.0\.0\.1:\d+)/", said)
        if found and "Application startup complete" in said:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"serve did not start: {stderr.read_text()[-3000:]}")
