"""Prometheus collectors: the handler's stats(), the worker's counters, the pipeline's health.

Real handlers (fakeredis, SQLite), the exposition text parsed back with prometheus_client's
own parser, so what is checked is what a scraper reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from activity_logging import metrics
from activity_logging.handler import ActivityHandler
from activity_logging.metrics import (
    HANDLER_STATS,
    WORKER_COUNTERS,
    ActivityHandlerCollector,
    PipelineHealthCollector,
    WorkerCollector,
    pipeline_metrics_app,
    start_worker_metrics,
)
from activity_logging.sinks import RedisStreamSink
from activity_logging.worker import ActivityWorker, WorkerCounters
from tests.cli_run import run

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[Samples, dict[str, str]]:
    """(value of every sample by (name, sorted labels), type of every family)."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def registry_with(collector: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("activity.metrics")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


@pytest.fixture
def redis_handler(logger: logging.Logger, tmp_path: Path) -> Iterator[ActivityHandler]:
    """A handler shipping to a fakeredis stream, with a spool (every stats() key is live)."""
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", stream="s",
                              spool_path=str(tmp_path / "spool"), batch_size=50)
    sink = RedisStreamSink("redis://unused", "s")
    sink._client = fakeredis.FakeRedis()
    handler._sink = sink
    logger.addHandler(handler)
    yield handler
    handler.close()


@pytest.fixture
def sqlite_handler(logger: logging.Logger, tmp_path: Path) -> Iterator[ActivityHandler]:
    handler = ActivityHandler(database_url=f"sqlite:///{tmp_path / 'direct.db'}")
    logger.addHandler(handler)
    yield handler
    handler.close()


def test_every_stats_key_is_classified_as_counter_gauge_or_alias(
    redis_handler: ActivityHandler, sqlite_handler: ActivityHandler
) -> None:
    for handler in (redis_handler, sqlite_handler):
        assert set(handler.stats()) == set(HANDLER_STATS), (
            "a stats() key is missing from metrics.HANDLER_STATS (or the table names one "
            "stats() no longer returns): classify it there")


def test_every_worker_counter_is_classified() -> None:
    assert {f.name for f in dataclasses.fields(WorkerCounters)} == set(WORKER_COUNTERS)


def test_handler_stats_are_exported_as_counters_and_gauges_with_a_producer_label(
    logger: logging.Logger, redis_handler: ActivityHandler
) -> None:
    for i in range(120):
        logger.info("call_created", extra={"actor_id": f"a{i}"})
    assert redis_handler.flush(10)
    samples, types = scrape(registry_with(ActivityHandlerCollector(redis_handler)))
    producer = (("producer", redis_handler.producer_id),)
    stats = redis_handler.stats()
    for key, (kind, _) in HANDLER_STATS.items():
        if kind == "counter":
            assert types[f"activity_log_handler_{key}"] == "counter"
            assert samples[(f"activity_log_handler_{key}_total", producer)] == stats[key]
        elif kind == "gauge":
            assert types[f"activity_log_handler_{key}"] == "gauge"
            assert samples[(f"activity_log_handler_{key}", producer)] == stats[key]
        else:  # an alias would count a record twice in sum(dropped_*)
            assert not any(name.startswith(f"activity_log_handler_{key}") for name, _ in samples)
    assert samples[("activity_log_handler_enqueued_total", producer)] == 120
    assert samples[("activity_log_handler_sent_total", producer)] == 120
    assert samples[("activity_log_handler_connected", producer)] == 1
    assert samples[("activity_log_handler_queue_depth", producer)] == 0
    assert samples[("activity_log_handler_info",
                    (("producer", redis_handler.producer_id), ("sink", "redis"),
                     ("stream", "s")))] == 1


def test_records_dropped_on_a_full_queue_show_in_dropped_queue_full_total(
    logger: logging.Logger, tmp_path: Path
) -> None:
    class Stuck:
        """A sink whose send never returns until released."""

        rejected = 0

        def __init__(self) -> None:
            import threading

            self.gate = threading.Event()

        def prepare(self) -> None:
            pass

        def send(self, entries: list[Any]) -> None:
            self.gate.wait(10)

        def close(self) -> None:
            pass

    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off",
                              queue_size=20, batch_size=5)
    sink = Stuck()
    handler._sink = sink
    logger.addHandler(handler)
    try:
        for i in range(100):
            logger.info("x", extra={"i": i})
        samples, _ = scrape(registry_with(ActivityHandlerCollector(handler)))
        producer = (("producer", handler.producer_id),)
        dropped = samples[("activity_log_handler_dropped_queue_full_total", producer)]
        assert dropped == handler.stats()["dropped_queue_full"] > 0
        assert dropped + samples[("activity_log_handler_enqueued_total", producer)] == 100
    finally:
        sink.gate.set()
        handler.close()


def test_collector_without_a_handler_reports_every_open_handler_and_forgets_closed_ones(
    logger: logging.Logger, redis_handler: ActivityHandler, sqlite_handler: ActivityHandler
) -> None:
    logger.info("one")
    assert redis_handler.flush(10) and sqlite_handler.flush(10)
    registry = registry_with(ActivityHandlerCollector())
    samples, _ = scrape(registry)
    for handler in (redis_handler, sqlite_handler):
        assert samples[("activity_log_handler_sent_total",
                        (("producer", handler.producer_id),))] == 1
    assert samples[("activity_log_handler_info", (("producer", sqlite_handler.producer_id),
                                                  ("sink", "database"), ("stream", "")))] == 1
    sqlite_handler.close()
    samples, _ = scrape(registry)
    producers = {dict(labels).get("producer") for name, labels in samples
                 if name == "activity_log_handler_sent_total"}
    assert redis_handler.producer_id in producers
    assert sqlite_handler.producer_id not in producers


# --- the worker ---------------------------------------------------------------------------------


def worker_on(tmp_path: Path, **kw: Any) -> ActivityWorker:
    return ActivityWorker("redis://127.0.0.1:1/0", f"sqlite:///{tmp_path / 'w.db'}",
                          stream="s", consumer="c1", **kw)


def test_worker_counters_are_exported_and_unknown_gauges_left_out(tmp_path: Path) -> None:
    worker = worker_on(tmp_path)
    worker.counters.inserted = 7
    worker.counters.duplicates_skipped = 2
    worker.counters.dead_lettered = 1
    samples, types = scrape(registry_with(WorkerCollector(worker)))
    stream = (("stream", "s"),)
    assert samples[("activity_log_worker_rows_stored_total", stream)] == 7
    assert samples[("activity_log_worker_duplicates_skipped_total", stream)] == 2
    assert samples[("activity_log_worker_dead_lettered_total", stream)] == 1
    assert samples[("activity_log_worker_retries_total", stream)] == 0
    for field, (name, kind, _) in WORKER_COUNTERS.items():
        assert types[f"activity_log_worker_{name}"] == kind, field
    # lag and pending are unknown until a heartbeat read them: absent, not 0
    assert ("activity_log_worker_lag", stream) not in samples
    worker.counters.lag, worker.counters.pending = 5, 3
    samples, _ = scrape(registry_with(WorkerCollector(worker)))
    assert samples[("activity_log_worker_lag", stream)] == 5
    assert samples[("activity_log_worker_pending", stream)] == 3
    assert samples[("activity_log_worker_info",
                    (("consumer", "c1"), ("group", "activity_log_workers"), ("stream", "s")))] == 1


def test_worker_metrics_server_serves_counters_and_the_batch_histogram(tmp_path: Path) -> None:
    worker = worker_on(tmp_path)
    registry = CollectorRegistry()
    server = start_worker_metrics(worker, 0, registry=registry)
    try:
        assert worker.on_batch is not None
        worker.on_batch(0.03)
        worker.on_batch(2.0)
        worker.counters.inserted = 11
        body = httpx.get(server.url, timeout=10).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(body) for s in f.samples}
        stream = (("stream", "s"),)
        assert samples[("activity_log_worker_rows_stored_total", stream)] == 11
        assert samples[("activity_log_worker_batch_duration_seconds_count", stream)] == 2
        assert samples[("activity_log_worker_batch_duration_seconds_bucket",
                        (("le", "0.05"), ("stream", "s")))] == 1
        with pytest.raises(metrics.ConfigurationError, match="already registered"):
            start_worker_metrics(worker_on(tmp_path), 0, registry=registry)
    finally:
        server.close()


def test_a_busy_metrics_port_is_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        registry = CollectorRegistry()
        worker = worker_on(tmp_path)
        with pytest.raises(metrics.ConfigurationError, match=f"127.0.0.1:{port}"):
            start_worker_metrics(worker, port, registry=registry)
        assert worker.on_batch is None
        assert list(registry.collect()) == []  # nothing left registered


def test_worker_command_with_a_busy_metrics_port_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(["worker", "--redis-url", "redis://127.0.0.1:1/0",
                            "--database-url", f"sqlite:///{tmp_path / 'w.db'}",
                            "--metrics-port", str(port)], capsys)
    assert code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err


@pytest.mark.anyio
async def test_the_drain_observes_one_batch_latency_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fakeredis.aioredis
    import redis.asyncio as aioredis

    from activity_logging import db
    from activity_logging.snapshot import queued_from_record
    from activity_logging.wire import WireEncoder

    server = fakeredis.FakeServer()
    monkeypatch.setattr(aioredis.Redis, "from_url",
                        classmethod(lambda cls, *a, **k: fakeredis.aioredis.FakeRedis(server=server)))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    await db.init_db(url)
    enc = WireEncoder("p")
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    feeder = fakeredis.FakeRedis(server=server)
    for _ in range(3):
        feeder.xadd("s", enc.encode_batch([queued_from_record(rec) for _ in range(10)]))
    feeder.close()
    seen: list[float] = []
    worker = ActivityWorker("redis://127.0.0.1:1/0", url, stream="s", max_wait=0.05,
                            batch_size=10, on_batch=seen.append)
    await asyncio.wait_for(worker.run(stop_when_idle=True), 30)
    assert worker.stats()["inserted"] == 30
    assert len(seen) == worker.stats()["batches"] == 3
    assert all(s >= 0 for s in seen)
    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert conn.execute("SELECT count(DISTINCT id) FROM activity_logs").fetchone()[0] == 30
    conn.close()


@pytest.mark.anyio
async def test_a_failing_batch_hook_never_stops_the_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fakeredis.aioredis
    import redis.asyncio as aioredis

    from activity_logging import db
    from activity_logging.snapshot import queued_from_record
    from activity_logging.wire import WireEncoder

    server = fakeredis.FakeServer()
    monkeypatch.setattr(aioredis.Redis, "from_url",
                        classmethod(lambda cls, *a, **k: fakeredis.aioredis.FakeRedis(server=server)))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    await db.init_db(url)
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    feeder = fakeredis.FakeRedis(server=server)
    feeder.xadd("s", WireEncoder("p").encode_batch([queued_from_record(rec) for _ in range(5)]))
    feeder.close()

    def broken(seconds: float) -> None:
        raise RuntimeError("observer broke")

    worker = ActivityWorker("redis://127.0.0.1:1/0", url, stream="s", max_wait=0.05,
                            on_batch=broken)
    await asyncio.wait_for(worker.run(stop_when_idle=True), 30)
    assert worker.stats()["inserted"] == 5 and worker.stats()["acked"] == 1


# --- pipeline health ----------------------------------------------------------------------------


def seeded_sqlite(tmp_path: Path, logger: logging.Logger, n: int) -> str:
    url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    handler = ActivityHandler(database_url=url)
    logger.addHandler(handler)
    for i in range(n):
        logger.info("call_created", extra={"actor_id": f"a{i}"})
    handler.close()
    logger.removeHandler(handler)
    return url


def test_pipeline_health_of_an_embedded_store_is_healthy_with_its_rows(
    tmp_path: Path, logger: logging.Logger
) -> None:
    url = seeded_sqlite(tmp_path, logger, 12)
    samples, types = scrape(registry_with(PipelineHealthCollector(url)))
    none = (("stream", ""),)
    assert types["activity_log_pipeline_healthy"] == "gauge"
    assert samples[("activity_log_pipeline_check_success", none)] == 1
    assert samples[("activity_log_pipeline_healthy", none)] == 1
    assert samples[("activity_log_pipeline_rows_last_24h", none)] == 12
    assert samples[("activity_log_pipeline_lost_in_transit", (("stream", ""), ("unit", "")))] == 0
    # no Redis, so no worker is needed: no live_workers (an alert on 0 would fire forever)
    assert not any(name == "activity_log_pipeline_live_workers" for name, _ in samples)
    assert not any(name == "activity_log_pipeline_stream_length" for name, _ in samples)


def test_a_failed_pipeline_check_is_unhealthy_and_counted(tmp_path: Path, logger: logging.Logger) -> None:
    url = seeded_sqlite(tmp_path, logger, 1)
    collector = PipelineHealthCollector(url, "redis://127.0.0.1:1/0", stream="s", cache_seconds=0)
    registry = registry_with(collector)
    scrape(registry)
    samples, _ = scrape(registry)
    stream = (("stream", "s"),)
    assert samples[("activity_log_pipeline_check_success", stream)] == 0
    assert samples[("activity_log_pipeline_healthy", stream)] == 0
    assert samples[("activity_log_pipeline_check_failures_total", stream)] == 2
    assert ("activity_log_pipeline_rows_last_24h", stream) not in samples


def test_pipeline_checks_are_cached_between_scrapes(tmp_path: Path, logger: logging.Logger) -> None:
    url = seeded_sqlite(tmp_path, logger, 3)
    collector = PipelineHealthCollector(url, cache_seconds=3600)
    first = collector.refresh()
    registry = registry_with(collector)  # describe(): registering runs no check
    scrape(registry)
    assert collector.refresh() is first
    assert collector.refresh(force=True) is not first


@pytest.mark.anyio
async def test_pipeline_metrics_app_serves_the_health_over_asgi(
    tmp_path: Path, logger: logging.Logger
) -> None:
    url = seeded_sqlite(tmp_path, logger, 4)
    app = pipeline_metrics_app(url)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {s.name: s.value for f in text_string_to_metric_families(response.text)
              for s in f.samples}
    assert values["activity_log_pipeline_healthy"] == 1
    assert values["activity_log_pipeline_rows_last_24h"] == 4


def test_docs_name_every_exported_metric(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    worker = worker_on(tmp_path)
    families = [*ActivityHandlerCollector().describe(), *WorkerCollector(worker).describe(),
                *PipelineHealthCollector(f"sqlite:///{tmp_path / 'x.db'}").describe()]
    names = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    names.add("activity_log_worker_batch_duration_seconds")
    missing = sorted(name for name in names if f"`{name}`" not in docs)
    assert not missing, f"docs/metrics.md does not name {missing}"


def test_closing_the_worker_metrics_frees_the_port_and_the_registry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    worker = worker_on(tmp_path)
    server = start_worker_metrics(worker, 0, registry=registry)
    server.close()
    server.close()  # idempotent
    assert worker.on_batch is None
    assert list(registry.collect()) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, timeout=5)
    again = start_worker_metrics(worker_on(tmp_path), 0, registry=registry)  # the same names again
    again.close()


@pytest.mark.anyio
async def test_docs_fastapi_recipe_serves_handler_and_pipeline_metrics(
    tmp_path: Path, logger: logging.Logger, sqlite_handler: ActivityHandler
) -> None:
    from fastapi import FastAPI
    from prometheus_client import make_asgi_app

    url = seeded_sqlite(tmp_path, logger, 2)
    logger.info("one more")
    assert sqlite_handler.flush(10)
    registry = CollectorRegistry()  # docs/metrics.md uses the global REGISTRY
    registry.register(ActivityHandlerCollector())
    app = FastAPI()
    app.mount("/metrics", make_asgi_app(registry))
    app.mount("/pipeline-metrics", pipeline_metrics_app(url, cache_seconds=5.0, timeout=10.0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                 follow_redirects=True) as client:
        handlers = await client.get("/metrics")
        pipeline = await client.get("/pipeline-metrics/")
    assert handlers.status_code == pipeline.status_code == 200
    sent = {s.labels["producer"]: s.value for f in text_string_to_metric_families(handlers.text)
            for s in f.samples if s.name == "activity_log_handler_sent_total"}
    assert sent[sqlite_handler.producer_id] == 3  # it also saw the 2 seeded records
    healthy = [s.value for f in text_string_to_metric_families(pipeline.text) for s in f.samples
               if s.name == "activity_log_pipeline_healthy"]
    assert healthy == [1]
