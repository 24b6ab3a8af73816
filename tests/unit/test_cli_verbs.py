"""The operations verbs on the embedded SQLite store: output, exit codes, error messages; the
defaults their help shows; how the CLI modules depend on each other."""

from __future__ import annotations

import argparse
import ast
import asyncio
import csv
import inspect
import io
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from activity_logging import config, db, export, retention, scheduler, status, worker
from activity_logging.cli import build_parser, main
from activity_logging.cli_common import MONTHS_AHEAD, resolve
from activity_logging.exceptions import ConfigurationError
from activity_logging.when import parse_when
from tests.cli_run import run
from tests.crud_rows import BASE, make_rows, reference, seed
from tests.servers import free_port


def test_query_prints_a_table_and_the_next_cursor(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["query", "--database-url", db, "--limit", "5"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIMESTAMP", "SEVERITY", "ACTIVITY_TYPE"]
    assert len(lines) == 6
    assert "more: --cursor " in err


def test_query_jsonl_applies_filters_and_pages_with_the_cursor(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["query", "--database-url", db, "--format", "jsonl", "--actor-type", "agent",
            "--severity", "info", "--severity", "error", "--limit", "4"]
    code, out, err = run(base, capsys)
    assert code == 0
    first = [json.loads(line)["id"] for line in out.splitlines()]
    cursor = err.split("--cursor ")[1].split()[0]
    code, out, _ = run([*base, "--cursor", cursor], capsys)
    second = [json.loads(line)["id"] for line in out.splitlines()]
    want = [str(r["id"]) for r in reference(rows, actor_type="agent", severity=["info", "error"])]
    assert len(want) > 4
    assert first + second == want[:8]


def test_query_summary_prints_counts_as_json_with_format_json(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["query", "--database-url", db, "--summary", "3650", "--format", "json"],
                       capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["total"] == len(rows)
    assert sum(summary["by_severity"].values()) == len(rows)
    code, out, _ = run(["query", "--database-url", db, "--summary", "3650", "--format", "jsonl"],
                       capsys)
    assert code == 0
    assert len(out.splitlines()) == 1
    assert json.loads(out) == summary


def test_query_summary_is_a_table_by_default(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["query", "--database-url", db, "--summary", "3650"], capsys)
    assert code == 0
    assert not out.lstrip().startswith("{")
    lines = out.splitlines()
    assert lines[0].startswith(f"{len(rows)} activities, ")
    for title in ("TYPE", "SEVERITY", "DAY"):
        assert any(line.split() == [title, "COUNT"] for line in lines)
    counts = {line.split()[0]: int(line.split()[1]) for line in lines
              if len(line.split()) >= 2 and line.split()[1].isdigit()}
    assert counts["call_created"] == sum(1 for r in rows if r["activity_type"] == "call_created")
    assert counts["2026-03-10"] == sum(1 for r in rows if r["timestamp"].date().isoformat()
                                       == "2026-03-10")
    assert "#" in out  # the busiest day has a bar


def test_query_show_changes_adds_a_changes_column(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["query", "--database-url", db, "--limit", "40", "--order", "asc"], capsys)
    assert code == 0
    assert "CHANGES" not in out.splitlines()[0]
    code, out, _ = run(["query", "--database-url", db, "--limit", "40", "--order", "asc",
                        "--show-changes"], capsys)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[-1] == "CHANGES"
    # the seed stores the old pair form ([None, "s1"]): shown as field: old → new all the same
    for r in rows:
        want = f'status: null → "{r["changes"]["status"][1]}"' if r["changes"] else "  -"
        assert sum(line.endswith(want) for line in lines) == 1 or not r["changes"]
    assert sum(line.endswith("  -") for line in lines) == sum(1 for r in rows if not r["changes"])


def test_query_format_json_is_one_array(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["query", "--database-url", db, "--format", "json", "--limit", "5"], capsys)
    assert code == 0
    items = json.loads(out)
    assert [i["id"] for i in items] == [str(r["id"]) for r in reference(rows)[:5]]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_matches_the_table_row_for_row(
    db: str, rows: list[dict[str, Any]], tmp_path: Path, fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / f"out.{fmt}"
    code, _, err = run(["export", "--database-url", db, "--format", fmt, "-o", str(target),
                        "--since", "2026-03-10T15:00:00Z", "--no-progress"], capsys)
    assert code == 0
    want = reference(rows, desc=False, start=BASE + timedelta(hours=3))
    assert f"exported {len(want)} rows" in err
    if fmt == "jsonl":
        got = [json.loads(line) for line in target.read_text().splitlines()]
    else:
        got = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [g["id"] for g in got] == [str(r["id"]) for r in want]
    for g, r in zip(got, want, strict=True):
        assert g["timestamp"] == r["timestamp"].isoformat()
        assert g["activity_type"] == r["activity_type"]
        assert g["description"] == r["description"]
        meta = g["metadata"] if fmt == "jsonl" else json.loads(g["metadata"])
        assert meta == r["metadata"]
        assert str(g["seq"]) == str(r["seq"])


def test_export_progress_line_when_asked(
    db: str, rows: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["export", "--database-url", db, "-o", str(tmp_path / "o.jsonl"),
                        "--progress", "--batch-size", "7"], capsys)
    assert code == 0
    assert f"{len(rows)}/{len(rows)} rows 100.0%" in err


def test_verify_exit_codes_follow_gaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_db = f"sqlite:///{tmp_path / 'clean.db'}"
    lossy_db = f"sqlite:///{tmp_path / 'lossy.db'}"
    asyncio.run(seed(clean_db, make_rows(30, producer_id="p1") + make_rows(5, producer_id="p2")))
    asyncio.run(seed(lossy_db, make_rows(30, producer_id="p1", skip_seqs=(10, 11))))
    code, out, _ = run(["verify", "--database-url", clean_db], capsys)
    assert code == 0
    assert "OK: no gaps (2 producers, 35 rows" in out
    code, out, _ = run(["verify", "--database-url", lossy_db], capsys)
    assert code == 1
    assert "gap: seq 10..11" in out
    code, out, _ = run(["verify", "--database-url", lossy_db, "--json"], capsys)
    assert code == 1
    report = json.loads(out)
    assert (report["ok"], report["missing"], report["rows"]) == (False, 2, 30)


def test_cleanup_and_vacuum_report_what_they_did(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    data = make_rows(20, start=now - timedelta(days=19, hours=12), step=timedelta(days=1))
    asyncio.run(seed(db, data))
    code, out, _ = run(["cleanup", "--database-url", db, "--retention-days", "10", "--json"],
                       capsys)
    assert code == 0
    result = json.loads(out)
    assert result["deleted_rows"] == sum(
        1 for r in data if r["timestamp"] < datetime.fromisoformat(result["cutoff"]))
    assert result["deleted_rows"] >= 8
    code, out, _ = run(["vacuum", "--database-url", db], capsys)
    assert code == 0
    assert out.startswith("VACUUM; ANALYZE: done")


def test_status_in_embedded_mode_is_healthy_with_a_reachable_store(
    db: str, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, out, _ = run(["status", "--database-url", db, "--json"], capsys)
    assert code == 0
    status = json.loads(out)
    assert status["healthy"] is True
    assert status["redis_url"] is None
    assert status["newest_activity"] == max(r["timestamp"] for r in rows).isoformat()


def test_scheduler_once_runs_both_jobs_and_records_them(db: str, rows: list[dict[str, Any]],
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, _, err = run(["scheduler", "--database-url", db, "--once", "--retention-days", "3650"],
                       capsys)
    assert code == 0, err
    # each run was recorded, through the "activity" logger and ActivityHandler, in the store
    code, out, _ = run(["query", "--database-url", db, "--type", "system_event",
                        "--format", "jsonl"], capsys)
    events = [json.loads(line) for line in out.splitlines()]
    assert sorted(e["target_id"] for e in events) == ["cleanup", "vacuum"]
    assert all(e["actor_type"] == "system" and e["metadata"]["ok"] for e in events)


@pytest.mark.parametrize(("argv", "message"), [
    (["query", "--since", "yesterday-ish"], "invalid time 'yesterday-ish'"),
    (["query", "--severity", "loud"], "severity must be one of"),
    (["query", "--cursor", "zzz"], "invalid cursor"),
    (["query", "--database-url", "mysql://x/y"], "database_url must be"),
    (["export", "-o", "/nonexistent-dir/out.jsonl"], "cannot write"),
    (["scheduler", "--tz", "Mars/Olympus"], "unknown time zone"),
    (["scheduler", "--cleanup-at", "2am"], "invalid schedule time"),
    (["status", "--redis-url", "http://nope"], "redis_url must start with"),
])
def test_bad_arguments_exit_2_with_one_line(
    db: str, rows: list[dict[str, Any]], argv: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "--database-url" not in argv:
        argv = [*argv, "--database-url", db]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_argparse_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["query", "--limit", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_missing_table_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    (tmp_path / "empty.db").touch()  # an SQLite database with no table in it
    code, _, err = run(["query", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}"], capsys)
    assert code == 1
    assert "run `activity-logging init-db` first" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", ["query", "export", "status", "verify", "cleanup", "vacuum"])
def test_missing_sqlite_file_is_one_line_exit_1_and_is_not_created(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    missing = tmp_path / "typo.db"
    code, out, err = run([verb, "--database-url", f"sqlite:///{missing}"], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert f"no database at sqlite:///{missing}" in err
    assert "does not exist" in err
    assert out == ""
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_sqlite_file_from_the_environment_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code, _, err = run(["query"], capsys)  # the default: sqlite:///activity_logs.db here
    assert code == 1
    assert "activity_logs.db does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_cleanup_dry_run_counts_and_deletes_nothing(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    data = make_rows(20, start=now - timedelta(days=19, hours=12), step=timedelta(days=1))
    asyncio.run(seed(db, data))
    argv = ["cleanup", "--database-url", db, "--retention-days", "10"]
    code, out, _ = run([*argv, "--dry-run", "--json"], capsys)
    assert code == 0
    preview = json.loads(out)
    assert preview["dry_run"] is True
    assert preview["batches"] == 0
    cutoff = datetime.fromisoformat(preview["cutoff"])
    assert preview["deleted_rows"] == sum(1 for r in data if r["timestamp"] < cutoff) >= 8
    code, out, _ = run(["query", "--database-url", db, "--format", "jsonl", "--limit", "100"],
                       capsys)
    assert len(out.splitlines()) == len(data)  # nothing deleted
    code, out, _ = run([*argv, "--dry-run"], capsys)
    assert code == 0
    assert out.startswith("dry run, nothing changed: cutoff ")
    assert f"{preview['deleted_rows']} rows older than the cutoff" in out
    code, out, _ = run([*argv, "--json"], capsys)
    assert json.loads(out)["deleted_rows"] == preview["deleted_rows"]


def test_cleanup_progress_goes_to_stderr_with_the_total(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    data = make_rows(30, start=datetime.now(UTC) - timedelta(days=400), step=timedelta(hours=1))
    asyncio.run(seed(db, data))
    code, out, err = run(["cleanup", "--database-url", db, "--batch-size", "7", "--progress"],
                         capsys)
    assert code == 0
    assert "30/30 rows deleted 100.0%" in err
    assert err.endswith("\n")
    assert "30 rows deleted in 5 batches" in out
    assert "rows deleted" not in out.replace("30 rows deleted in", "")
    code, _, err = run(["cleanup", "--database-url", db, "--no-progress"], capsys)
    assert code == 0
    assert err == ""


@pytest.mark.parametrize("verb", ["query", "export", "verify", "cleanup", "vacuum", "status"])
def test_unreachable_postgres_exits_3(verb: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    code, _, err = run([verb, "--database-url", url], capsys)
    assert code == 3
    assert "cannot" in err
    assert "Traceback" not in err


def test_unreachable_redis_exits_3(db: str, rows: list[dict[str, Any]],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["status", "--database-url", db,
                        "--redis-url", f"redis://127.0.0.1:{free_port()}/0"], capsys)
    assert code == 3
    assert "cannot reach Redis" in err


def test_parse_when_accepts_iso_and_ages() -> None:
    assert parse_when("2026-03-10").isoformat() == "2026-03-10T00:00:00+00:00"
    assert parse_when("2026-03-10T13:00+01:00") == BASE
    assert parse_when("2h", now=BASE) == BASE - timedelta(hours=2)
    assert parse_when("7d", now=BASE) == BASE - timedelta(days=7)
    with pytest.raises(ConfigurationError):
        parse_when("soon")


@pytest.mark.parametrize("verb", ["status", "query", "export", "cleanup", "vacuum", "scheduler",
                                  "verify"])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "--database-url" in capsys.readouterr().out


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process: its logging goes where a user's would (stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "activity_logging", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cleanup_and_vacuum_print_their_result_once(db: str, rows: list[dict[str, Any]]) -> None:
    done = _cli("cleanup", "--database-url", db, "--retention-days", "3650")
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count("deleted in") == 1
    assert done.stdout.count("\n") == 1
    done = _cli("vacuum", "--database-url", db)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count("VACUUM") == 1
    assert done.stdout.startswith("VACUUM; ANALYZE: done")


def test_init_db_prints_its_result_once_on_stdout(tmp_path: Path) -> None:
    done = _cli("init-db", "--database-url", f"sqlite:///{tmp_path / 'new.db'}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("activity_logs ready") == 1
    assert "activity_logs ready" not in done.stderr


@pytest.mark.parametrize("level", ["debug", "Warning"])
def test_log_level_is_case_insensitive(level: str, db: str, rows: list[dict[str, Any]],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["--log-level", level, "query", "--database-url", db, "--limit", "1"], capsys)
    assert code == 0


def test_status_never_prints_none(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    (tmp_path / "empty.db").touch()  # a store without its table: no count can be made
    code, out, _ = run(["status", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}"], capsys)
    assert code == 1
    assert "init-db" in out
    assert "None" not in out


# --- defaults shown in help ---------------------------------------------------------------------


def _default_of(func: Any, parameter: str) -> Any:
    return inspect.signature(func).parameters[parameter].default


def _shown(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


#: (verb, option, the default where it is written). Each default is written once, in the
#: module that uses it; the help shows it from there, or from a copy this test keeps honest.
HELP_DEFAULTS: list[tuple[str, str, Any]] = [
    ("init-db", "--months-ahead", _default_of(db.init_db, "months_ahead")),
    ("worker", "--batch-size", worker.DEFAULT_BATCH_SIZE),
    ("worker", "--max-wait", worker.DEFAULT_MAX_WAIT),
    ("worker", "--claim-idle", worker.DEFAULT_CLAIM_IDLE),
    ("worker", "--heartbeat-interval", worker.DEFAULT_HEARTBEAT_INTERVAL),
    ("worker", "--writers", worker.DEFAULT_WRITERS),
    ("worker", "--stop-timeout", worker.DEFAULT_STOP_TIMEOUT),
    ("worker", "--group", config.DEFAULT_GROUP),
    ("worker", "--stream", config.DEFAULT_STREAM),
    ("status", "--max-lag", status.DEFAULT_MAX_LAG),
    ("status", "--heartbeat-ttl", config.DEFAULT_HEARTBEAT_TTL),
    ("status", "--group", config.DEFAULT_GROUP),
    ("export", "--batch-size", export.DEFAULT_BATCH_SIZE),
    ("cleanup", "--batch-size", retention.DEFAULT_BATCH_SIZE),
    ("cleanup", "--months-ahead", _default_of(retention.cleanup, "months_ahead")),
    ("cleanup", "--retention-days", config.resolve_retention_days(None, environ={})),
    ("scheduler", "--retention-days", config.resolve_retention_days(None, environ={})),
    ("scheduler", "--cleanup-at", _default_of(scheduler.MaintenanceScheduler, "cleanup_at")),
    ("scheduler", "--vacuum-day", _default_of(scheduler.MaintenanceScheduler, "vacuum_day")),
    ("scheduler", "--vacuum-at", _default_of(scheduler.MaintenanceScheduler, "vacuum_at")),
]


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[verb]
    return chosen


def _option_help(verb: str, option: str) -> str:
    """The help of ``option`` in ``verb --help``, on one line."""
    lines = _verb_parser(verb).format_help().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if re.match(rf"\s+(-\w, )?{re.escape(option)}\b", line))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.strip() or re.match(r"\s+-", line):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize(("verb", "option", "value"), HELP_DEFAULTS,
                         ids=[f"{v} {o}" for v, o, _ in HELP_DEFAULTS])
def test_help_shows_the_default_the_library_uses(verb: str, option: str, value: Any) -> None:
    shown = _option_help(verb, option)
    assert re.search(rf"\(default: [^)]*\b{re.escape(_shown(value))}\b", shown), shown


@pytest.mark.parametrize(("verb", "option", "value"), HELP_DEFAULTS,
                         ids=[f"{v} {o}" for v, o, _ in HELP_DEFAULTS])
def test_an_option_left_out_takes_the_library_default(verb: str, option: str, value: Any) -> None:
    args = build_parser().parse_args([verb])
    parsed = resolve(getattr(args, option.lstrip("-").replace("-", "_")))
    # None: the verb passes nothing and the library resolves it (retention days, stream)
    assert parsed is None or parsed == value


def test_the_cli_months_ahead_is_the_library_default() -> None:
    assert _default_of(db.init_db, "months_ahead") == MONTHS_AHEAD
    assert _default_of(retention.cleanup, "months_ahead") == MONTHS_AHEAD


def test_copies_of_optional_extras_defaults_agree() -> None:
    metrics = pytest.importorskip("activity_logging.metrics")
    app = pytest.importorskip("activity_logging.viewer.app")
    assert _shown(metrics.DEFAULT_METRICS_HOST) in _option_help("worker", "--metrics-host")
    assert f"(default: {app.DEFAULT_PAGE_SIZE})" in _option_help("serve", "--page-size")


def test_worker_passes_on_only_the_options_given() -> None:
    from activity_logging.cli_common import given
    from activity_logging.cli_worker import _TUNING

    parser = build_parser()
    assert given(parser.parse_args(["worker"]), _TUNING) == {}
    args = parser.parse_args(["worker", "--batch-size", "7", "--stop-timeout", "2.5"])
    assert given(args, _TUNING) == {"batch_size": 7, "stop_timeout": 2.5}


# --- how the CLI modules depend on each other ----------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "activity_logging"
SHARED = {"cli_common", "cli_render"}


def _cli_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            found |= {n for n in names if n and n.startswith("cli")}
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("cli_*.py")), ids=lambda p: p.stem)
def test_cli_modules_import_only_the_shared_cli_modules(path: Path) -> None:
    allowed = set() if path.stem in SHARED else SHARED
    assert _cli_imports(path) <= allowed


def test_cli_registers_every_verb_module() -> None:
    verbs = {p.stem for p in PACKAGE.glob("cli_*.py")} - SHARED - {"cli_ops"}
    assert _cli_imports(PACKAGE / "cli.py") == verbs | {"cli_common"}


def test_building_the_parser_imports_no_database_or_redis_client() -> None:
    code = ("import sys; from activity_logging.cli import build_parser; "
            "build_parser().format_help(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'redis', 'asyncpg', 'aiosqlite', 'starlette', 'jinja2'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
