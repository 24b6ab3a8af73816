"""``activity-logging worker --metrics-port``: a real worker process on the real Redis and
PostgreSQL, its metrics fetched over HTTP as Prometheus (or curl) would."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from activity_logging import db
from activity_logging.handler import ActivityHandler
from activity_logging.metrics import PipelineHealthCollector
from tests.integration.test_worker_pg import counts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N = 300


def wait_for(condition: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Poll until ``condition()`` is truthy and return it; fail (not hang) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {seconds}s")


def metrics_of(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


@pytest.fixture
def worker_process(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """A worker with ``--metrics-port 0`` (a free port, read back from its log)."""
    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    log_path = tmp_path / "worker.log"
    # stderr to a file, not a pipe: a chatty worker must never block on a full pipe.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "activity_logging", "worker", "--redis-url", redis_url,
             "--database-url", pg_url, "--schema", pg_schema, "--stream", redis_stream,
             "--max-wait", "0.1", "--heartbeat-interval", "0.5", "--batch-size", "100",
             "--metrics-port", "0"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        def url() -> str | None:
            found = re.search(r"metrics on (http://\S+/metrics)", log_path.read_text())
            if found is None and proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}: {log_path.read_text()}")
            return found.group(1) if found else None

        yield proc, wait_for(url), log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_worker_metrics_port_shows_rows_stored_and_the_batch_latency_histogram(
    worker_process: tuple[subprocess.Popen[bytes], str, Path],
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    proc, url, log_path = worker_process
    stream = (("stream", redis_stream),)
    before = metrics_of(url)
    assert before[("activity_log_worker_rows_stored_total", stream)] == 0

    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, batch_size=50)
    log = logging.getLogger("activity.metrics_it")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    for i in range(N):
        log.info("call_created", extra={"actor_id": f"agent-{i}", "target_id": f"c{i}"})
    handler.close()
    assert handler.stats()["sent"] == N

    after = wait_for(lambda: (m := metrics_of(url))[
        ("activity_log_worker_rows_stored_total", stream)] == N and m)
    batches = after[("activity_log_worker_batches_total", stream)]
    assert batches >= N / 100  # --batch-size 100
    assert after[("activity_log_worker_batch_duration_seconds_count", stream)] == batches
    assert after[("activity_log_worker_batch_duration_seconds_bucket",
                  (("le", "+Inf"), ("stream", redis_stream)))] == batches
    assert after[("activity_log_worker_batch_duration_seconds_sum", stream)] > 0
    assert after[("activity_log_worker_duplicates_skipped_total", stream)] == 0
    assert after[("activity_log_worker_dead_lettered_total", stream)] == 0
    assert after[("activity_log_worker_entries_vanished_total", stream)] == 0
    assert after[("activity_log_worker_records_read_total", stream)] == N
    # the default registry also carries the process' own metrics
    assert any(name == "process_resident_memory_bytes" for name, _ in after)
    # the group's gauges, read by the heartbeat (lag: undelivered entries, pending: unacked)
    assert ("activity_log_worker_lag", stream) in after
    assert ("activity_log_worker_pending", stream) in after
    assert asyncio.run(counts(pg_url, pg_schema)) == (N, N)

    # the same pipeline seen by the health collector (what `serve` exposes)
    registry = CollectorRegistry()
    registry.register(PipelineHealthCollector(pg_url, redis_url, schema=pg_schema,
                                              stream=redis_stream))
    health = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(generate_latest(registry).decode())
              for s in f.samples}
    assert health[("activity_log_pipeline_check_success", stream)] == 1
    assert health[("activity_log_pipeline_healthy", stream)] == 1, health
    assert health[("activity_log_pipeline_live_workers", stream)] == 1
    assert health[("activity_log_pipeline_undelivered", stream)] == 0
    assert health[("activity_log_pipeline_dead_letters", stream)] == 0
    assert health[("activity_log_pipeline_rows_last_24h", stream)] == N
    assert health[("activity_log_pipeline_lost_in_transit",
                   (("stream", redis_stream), ("unit", "")))] == 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_path.read_text()
