"""The read side on a read replica, with two SQLite files standing in for the primary and the
replica: each holds different rows, so what a verb prints says which file it read.

``query``, ``export`` and the viewer read ``--read-database-url`` / ``read_database_url``
(else an explicit database URL, else ``ACTIVITY_LOG_READ_DATABASE_URL``, else
``DATABASE_URL``); ``verify`` and every writer stay on the primary.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from activity_logging import read_engine
from activity_logging.cli import build_parser
from activity_logging.config import ENV_READ_DATABASE_URL, resolve_read_database_url
from activity_logging.crud import ActivityFilter, activity_log_crud
from activity_logging.viewer import create_viewer_app
from tests.cli_run import run
from tests.crud_rows import make_rows, seed
from tests.html_page import Page

READ_VERBS = ("query", "export", "serve")
WRITE_VERBS = ("init-db", "worker", "cleanup", "vacuum", "scheduler")


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A primary with 5 rows of producer ``primary`` and a "replica" with 7 of ``replica``
    (different ids), and an environment that names neither."""
    for name in ("DATABASE_URL", ENV_READ_DATABASE_URL, "ACTIVITY_LOG_SCHEMA", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    primary, replica = f"sqlite:///{tmp_path / 'primary.db'}", f"sqlite:///{tmp_path / 'replica.db'}"
    primary_rows = make_rows(5, producer_id="primary")
    replica_rows = make_rows(7, producer_id="replica")
    asyncio.run(seed(primary, primary_rows))
    asyncio.run(seed(replica, replica_rows))
    return {"primary": primary, "replica": replica,
            "primary_ids": {r["id"] for r in primary_rows},
            "replica_ids": {r["id"] for r in replica_rows}}


def queried_ids(argv: list[str], capsys: pytest.CaptureFixture[str]) -> set[uuid.UUID]:
    code, out, err = run(["query", "--format", "jsonl", "--limit", "500", *argv], capsys)
    assert code == 0, err
    return {uuid.UUID(json.loads(line)["id"]) for line in out.splitlines()}


# --- which URL: one rule ----------------------------------------------------------------------


def test_read_url_precedence_argument_then_database_argument_then_environment() -> None:
    env = {"DATABASE_URL": "postgresql://h/primary", ENV_READ_DATABASE_URL: "postgresql://h/replica"}
    assert resolve_read_database_url("sqlite:///r.db", "sqlite:///p.db", env) == "sqlite:///r.db"
    assert resolve_read_database_url(None, "sqlite:///p.db", env) == "sqlite:///p.db"
    assert resolve_read_database_url(None, None, env) == "postgresql://h/replica"
    assert resolve_read_database_url(None, None, {"DATABASE_URL": "postgresql://h/primary"}
                                     ) == "postgresql://h/primary"
    assert resolve_read_database_url(None, None, {}, default="sqlite:///d.db") == "sqlite:///d.db"
    assert resolve_read_database_url("", "", {ENV_READ_DATABASE_URL: "  "}) is None  # blank = unset


def test_only_the_read_verbs_take_a_read_url(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name in (*READ_VERBS, "verify"):
        args = parser.parse_args([name, "--read-database-url", "sqlite:///r.db"])
        assert args.read_database_url == "sqlite:///r.db", name
    for name in WRITE_VERBS:
        assert "read_database_url" not in vars(parser.parse_args([name])), name
    with pytest.raises(SystemExit):
        parser.parse_args(["verify", "--help"])
    assert "ignores ACTIVITY_LOG_READ_DATABASE_URL" in " ".join(capsys.readouterr().out.split())


# --- query and export -------------------------------------------------------------------------


def test_query_reads_the_read_url_and_only_it(stores: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    got = queried_ids(["--database-url", stores["primary"], "--read-database-url",
                       stores["replica"]], capsys)
    assert got == stores["replica_ids"]
    assert queried_ids(["--database-url", stores["primary"]], capsys) == stores["primary_ids"]


def test_query_takes_the_read_url_from_the_environment_below_the_arguments(
    stores: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", stores["primary"])
    assert queried_ids([], capsys) == stores["primary_ids"]
    monkeypatch.setenv(ENV_READ_DATABASE_URL, stores["replica"])
    assert queried_ids([], capsys) == stores["replica_ids"]
    # an explicit --database-url is read there, whatever the environment's replica
    assert queried_ids(["--database-url", stores["primary"]], capsys) == stores["primary_ids"]
    # and --read-database-url beats the variable
    monkeypatch.setenv(ENV_READ_DATABASE_URL, stores["primary"])
    assert queried_ids(["--read-database-url", stores["replica"]], capsys) == stores["replica_ids"]


def test_query_summary_counts_the_replica(stores: dict[str, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["query", "--summary", "3650", "--format", "json", "--database-url", stores["primary"]]
    code, out, _ = run([*argv, "--read-database-url", stores["replica"]], capsys)
    assert code == 0
    assert json.loads(out)["total"] == len(stores["replica_ids"])
    code, out, _ = run(argv, capsys)
    assert json.loads(out)["total"] == len(stores["primary_ids"])


def test_export_reads_the_replica_and_says_so(stores: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.jsonl"
    code, _, err = run(["export", "--database-url", stores["primary"], "--read-database-url",
                        stores["replica"], "-o", str(target)], capsys)
    assert code == 0, err
    got = {uuid.UUID(json.loads(line)["id"]) for line in target.read_text().splitlines()}
    assert got == stores["replica_ids"]
    assert "exported 7 rows as jsonl" in err
    assert f"from the read replica {stores['replica']}" in err
    code, _, err = run(["export", "--database-url", stores["primary"], "-o", str(target)], capsys)
    assert code == 0 and "read replica" not in err
    assert len(target.read_text().splitlines()) == len(stores["primary_ids"])


def test_a_missing_replica_file_names_the_read_option_and_is_not_created(
    stores: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "typo.db"
    for verb in ("query", "export"):
        code, out, err = run([verb, "--database-url", stores["primary"], "--read-database-url",
                              f"sqlite:///{missing}"], capsys)
        assert code == 1 and out == ""
        assert "a typo in --read-database-url or ACTIVITY_LOG_READ_DATABASE_URL" in err
    assert not missing.exists()


# --- verify reads the primary unless told ------------------------------------------------------


def test_verify_reads_the_primary_whatever_the_environment_and_the_replica_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    primary, replica = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'r.db'}"
    asyncio.run(seed(primary, make_rows(10, producer_id="p")))
    asyncio.run(seed(replica, make_rows(6, producer_id="p", skip_seqs=(3,))))  # a gap
    monkeypatch.setenv("DATABASE_URL", primary)
    monkeypatch.setenv(ENV_READ_DATABASE_URL, replica)
    code, out, _ = run(["verify", "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert (report["rows"], report["missing"], report["replica"]) == (10, 0, False)
    assert report["database"] == primary
    code, out, _ = run(["verify", "--json", "--read-database-url", replica], capsys)
    report = json.loads(out)
    assert code == 1
    assert (report["rows"], report["missing"], report["replica"]) == (6, 1, True)
    assert report["database"] == replica
    code, out, _ = run(["verify", "--read-database-url", replica], capsys)
    assert f"read from {replica} (--read-database-url)" in out


# --- writers stay on the primary -------------------------------------------------------------


def test_writers_ignore_the_read_url(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    primary, replica = tmp_path / "p.db", tmp_path / "r.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{primary}")
    monkeypatch.setenv(ENV_READ_DATABASE_URL, f"sqlite:///{replica}")
    code, _, err = run(["init-db"], capsys)
    assert code == 0, err
    assert primary.exists() and not replica.exists()


# --- the viewer -------------------------------------------------------------------------------


async def listed_ids(app: Any) -> set[uuid.UUID]:
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://viewer.test") as client:
            response = await client.get("/?limit=500")
            assert response.status_code == 200, response.text[:500]
    finally:
        await app.state.viewer_store.close()
    return set(Page(response.text).row_ids())


@pytest.mark.anyio
async def test_the_viewer_reads_read_database_url(stores: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def allow(request: Any) -> bool:
        return True

    app = create_viewer_app(database_url=stores["primary"], read_database_url=stores["replica"],
                            authorize=allow)
    assert app.state.viewer_store.url == stores["replica"]
    assert await listed_ids(app) == stores["replica_ids"]
    # database_url alone keeps its meaning: the store shown, even with the variable set
    monkeypatch.setenv(ENV_READ_DATABASE_URL, stores["replica"])
    assert await listed_ids(create_viewer_app(database_url=stores["primary"], authorize=allow)
                            ) == stores["primary_ids"]
    monkeypatch.setenv("DATABASE_URL", stores["primary"])
    assert await listed_ids(create_viewer_app(authorize=allow)) == stores["replica_ids"]


def test_serve_refuses_a_missing_replica_file_naming_the_read_option(
    stores: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACTIVITY_LOG_VIEWER_TOKEN", raising=False)
    missing = tmp_path / "typo.db"
    code, _, err = run(["serve", "--port", "0", "--database-url", stores["primary"],
                        "--read-database-url", f"sqlite:///{missing}"], capsys)
    assert code == 1
    assert f"no SQLite database at {missing}" in err and "--read-database-url" in err
    assert not missing.exists()


# --- read_engine for activity_log_crud users ---------------------------------------------------


@pytest.mark.anyio
async def test_read_engine_reads_the_replica_for_crud(stores: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async def page_ids(engine: Any) -> set[uuid.UUID]:
        try:
            async with AsyncSession(engine) as session:
                page = await activity_log_crud.get_page(session, ActivityFilter(), limit=500)
        finally:
            await engine.dispose()
        return {r.id for r in page.items}

    assert await page_ids(read_engine(stores["primary"], stores["replica"])) == stores["replica_ids"]
    assert await page_ids(read_engine(stores["primary"])) == stores["primary_ids"]
    monkeypatch.setenv("DATABASE_URL", stores["primary"])
    assert await page_ids(read_engine()) == stores["primary_ids"]
    monkeypatch.setenv(ENV_READ_DATABASE_URL, stores["replica"])
    assert await page_ids(read_engine()) == stores["replica_ids"]
