"""Every benchmark still runs: each script as a real subprocess, at the smallest sizes its CLI
allows, against the shared Redis and PostgreSQL (``TEST_REDIS_URL`` / ``TEST_DATABASE_URL``).

A refactor that renames an API a benchmark calls fails here (mypy checks them too). The
figures are not looked at: only the exit code, and that a run leaves no schema or Redis key
behind. A benchmark added to ``benchmarks/`` must be listed in ``CASES`` or ``NOT_RUN``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.pg_sql import fetch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
#: A run that takes longer than this is broken (the whole file takes ~40 s here).
TIMEOUT = 120.0

#: id -> (script, arguments). ``{redis_url}`` is replaced by the shared Redis' URL.
CASES: dict[str, tuple[str, list[str]]] = {
    "end_to_end": ("bench_end_to_end.py", ["--records", "200", "--naive-records", "20",
                                           "--rate", "100", "--seconds", "0.5"]),
    "export": ("bench_export.py", ["--rows", "100", "--repeat", "1"]),
    "handler": ("bench_handler.py", ["--redis-url", "{redis_url}", "--rounds", "1",
                                     "--per-round", "100", "--records", "200"]),
    "middleware": ("bench_middleware.py", ["--rounds", "2"]),
    "queries": ("bench_queries.py", ["--rows", "200", "--runs", "1"]),
    "queries_text_search": ("bench_queries.py", ["--text-search", "--text-rows", "100",
                                                 "--insert-rows", "100", "--runs", "1"]),
    "rollup": ("bench_rollup.py", ["--batches", "1", "--batch-size", "100", "--rounds", "1"]),
    "rollup_partitioned": ("bench_rollup.py", ["--batches", "1", "--batch-size", "100",
                                               "--rounds", "1", "--partitioned"]),
    # 2,000 records, not fewer: bench_scale polls the group every 20 ms, and a drain that ends
    # between two polls measures 0 s (ZeroDivisionError; 200 records did, now and then).
    "scale": ("bench_scale.py", ["--records", "2000", "--pairs", "1", "--chunk", "1000",
                                 "--idle", "0.1"]),
    "signing": ("bench_signing.py", ["--rounds", "1", "--per-round", "100", "--rows", "100",
                                     "--worker-entries", "10"]),
    "spool": ("bench_spool.py", ["--frames", "1", "--replay-frames", "1", "--rounds", "1"]),
    "viewer": ("bench_viewer.py", ["--rows", "200", "--runs", "1"]),
    "worker_inserts": ("bench_worker.py", ["inserts", "--rows", "200", "--batch", "100",
                                           "--repeat", "1"]),
    # The drain with signed entries and a sealing worker; `backlog` is the unsigned drain.
    "worker_drain_signed": ("bench_worker.py", ["drain", "--records", "200", "--per-entry", "50",
                                                "--batch-size", "100",
                                                "--signing-key", "bench:" + "k" * 40]),
    "worker_backlog": ("bench_worker.py", ["backlog", "--entries", "10", "--per-entry", "1",
                                           "--batch-size", "10"]),
    "worker_metrics": ("bench_worker_metrics.py", ["--records", "100", "--per-entry", "50",
                                                   "--rounds", "1", "--scrape-interval", "0.1"]),
    "wsgi": ("bench_wsgi.py", ["--rounds", "2"]),
}

#: Files in benchmarks/ the smoke test does not run, and why.
NOT_RUN = {
    "__init__.py": "not a benchmark",
    "run_all.py": "runs every benchmark at its default (full) sizes: minutes",
    "soak.py": "a chaos soak that restarts private servers over minutes (run on demand)",
}


def test_every_benchmark_is_run_or_named_as_not_run() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    covered = {script for script, _ in CASES.values()} | set(NOT_RUN)
    assert scripts - covered == set(), "add the new benchmark to CASES (or NOT_RUN, with why)"
    assert covered - scripts == set(), "a benchmark listed here no longer exists"


def _schemas(pg_url: str) -> set[str]:
    rows = asyncio.run(fetch(pg_url, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench%'"))
    return {str(r["nspname"]) for r in rows}


def _keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match="*bench*", count=1000))


@pytest.mark.parametrize("case", sorted(CASES))
def test_benchmark_runs(case: str, redis_url: str, pg_url: str, tmp_path: Path) -> None:
    script, template = CASES[case]
    args = [a.replace("{redis_url}", redis_url) for a in template]
    env = {**os.environ, "TEST_REDIS_URL": redis_url, "TEST_DATABASE_URL": pg_url,
           "TMPDIR": str(tmp_path)}  # a temporary file left behind stays in pytest's tmp
    client = redis.Redis.from_url(redis_url)
    try:
        schemas_before, keys_before = _schemas(pg_url), _keys(client)
        proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
        assert proc.returncode == 0, (
            f"{script} {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr (end)\n{proc.stderr[-5000:]}")
        assert proc.stdout.strip(), f"{script} printed no results"
        # Names made (and not removed) during the run. Another process making bench* names on
        # the same servers at the same moment would show here too: nothing does in CI.
        assert _schemas(pg_url) - schemas_before == set(), f"{script} left schemas behind"
        assert _keys(client) - keys_before == set(), f"{script} left Redis keys behind"
    finally:
        client.close()
