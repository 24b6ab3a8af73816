"""Prometheus metrics: the handler's ``stats()``, the worker's counters, the pipeline's health.

Optional: needs ``prometheus_client`` (``pip install 'activity_logging[metrics]'``); nothing
else in the package imports this module. Three collectors, each reading what the library
already counts at scrape time (no work on the logging or draining path beyond one histogram
observation per worker batch):

* ``ActivityHandlerCollector``: every key of ``ActivityHandler.stats()`` as
  ``activity_log_handler_<key>_total`` (counters) or ``activity_log_handler_<key>``
  (gauges), labelled ``producer``. ``HANDLER_STATS`` classifies every key explicitly.
* ``WorkerCollector`` and ``start_worker_metrics``: a worker's ``WorkerCounters`` as
  ``activity_log_worker_*`` plus the batch latency histogram, served over HTTP by
  prometheus_client's own server (what ``activity-logging worker --metrics-port`` runs).
* ``PipelineHealthCollector`` and ``pipeline_metrics_app``: what ``activity-logging status``
  checks, as ``activity_log_pipeline_*`` gauges, for ``serve`` or any ASGI app (defined in
  ``metrics_pipeline``, re-exported here: import them from this module).

The metric names, and an alert list built on them, are in docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final, Literal

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "activity_logging.metrics needs prometheus_client: pip install 'activity_logging[metrics]'"
    ) from exc

from .exceptions import ConfigurationError
from .metrics_pipeline import (
    DEFAULT_CACHE_SECONDS,
    DEFAULT_CHECK_TIMEOUT,
    PIPELINE_GAUGES,
    PipelineHealthCollector,
    PipelineMetricsApp,
    pipeline_metrics_app,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .handler import ActivityHandler
    from .worker import ActivityWorker

logger: Final = logging.getLogger("activity_logging.metrics")

Kind = Literal["counter", "gauge", "alias"]

#: Every key ``ActivityHandler.stats()`` returns, and what it is. A counter is exported as
#: ``activity_log_handler_<key>_total``, a gauge as ``activity_log_handler_<key>``; an alias
#: (an older name for another key) is not exported, so summing ``dropped_*`` and ``lost_*``
#: counts each record once. tests/unit/test_metrics.py fails when ``stats()`` gains a key
#: this table does not classify.
HANDLER_STATS: Final[dict[str, tuple[Kind, str]]] = {
    "enqueued": ("counter", "Records accepted into the handler's queue."),
    "sent": ("counter", "Records delivered to the sink (Redis stream or database), replays included."),
    "batches_sent": ("counter", "Batches delivered to the sink."),
    "refused": ("counter", "Records refused at the door: from this library's own or its "
                           "dependencies' loggers."),
    "dropped_queue_full": ("counter", "Records dropped because the queue was full."),
    "dropped_closed": ("counter", "Records refused because the handler was closing or closed."),
    "dropped_emit_error": ("counter", "Records refused because snapshotting them in emit failed."),
    "dropped_spool_full": ("counter", "Records dropped because the spool was full."),
    "dropped_unencodable": ("counter", "Records left out because they could not be encoded."),
    "lost": ("counter", "Accepted records lost (neither delivered nor spooled)."),
    "lost_spool_damaged": ("counter", "Spooled records lost to a damaged spool file."),
    "unconfirmed": ("counter", "Records whose send timed out unanswered (maybe delivered)."),
    "listener_errors": ("counter", "Unexpected errors in the listener thread."),
    "send_failures": ("counter", "Sends to the sink that failed."),
    "send_timeouts": ("counter", "Sends to the sink that timed out."),
    "reconnects": ("counter", "Times the sink answered again after being down."),
    "checkpoints": ("counter", "Checkpoint records written (signed trails: periodic and at close)."),
    "spooled": ("counter", "Records written to the local spool while the sink was down."),
    "spool_replayed": ("counter", "This producer's spooled records replayed to the sink."),
    "spool_adopted": ("counter", "Records replayed from other producers' spool files."),
    "spool_adopted_damaged": ("counter", "Records of other producers' spool files found lost "
                                          "to damage."),
    "spool_write_failures": ("counter", "Writes to the spool that failed."),
    "spool_damaged_bytes": ("counter", "Damaged spool bytes moved aside."),
    "spool_damaged_regions": ("counter", "Damaged spool regions moved aside."),
    "truncated": ("counter", "Records cut to the size limits (max_record_bytes)."),
    "redacted": ("counter", "Values redacted (a secret key's value or a free-text match)."),
    "sanitized": ("counter", "Records re-encoded with values orjson refused made storable."),
    "rejected": ("counter", "Direct mode: records left out because they could not become rows "
                            "or the database refused them (also counted in sent)."),
    "queue_depth": ("gauge", "Records waiting in the handler's queue."),
    "queue_size": ("gauge", "Capacity of the handler's queue, in records."),
    "queue_bytes": ("gauge", "Estimated bytes held by the queue."),
    "in_hand": ("gauge", "Records taken by the listener and not yet delivered or spooled."),
    "spool_pending": ("gauge", "Records in the spool waiting to be replayed."),
    "spool_bytes": ("gauge", "Size of the spool, in bytes."),
    "connected": ("gauge", "1 while the sink is reachable, 0 while it is down (backing off)."),
    "unaccounted": ("gauge", "Accepted records in no known place (0 when idle; see stats())."),
    "errors": ("alias", "dropped_emit_error, under its name before 0.2."),
}

#: Every field of ``worker.WorkerCounters``: (metric name without prefix, kind, help).
#: Exported as ``activity_log_worker_<name>`` (counters with ``_total``), labelled ``stream``.
WORKER_COUNTERS: Final[dict[str, tuple[str, Kind, str]]] = {
    "inserted": ("rows_stored", "counter", "Rows newly stored in the database."),
    "duplicates_skipped": ("duplicates_skipped", "counter",
                           "Rows skipped because a row with the same id was already stored."),
    "batches": ("batches", "counter", "Batches stored and acknowledged."),
    "read": ("records_read", "counter", "Records decoded from the stream."),
    "entries_read": ("entries_read", "counter", "Stream entries read (each carries a batch)."),
    "acked": ("entries_acked", "counter", "Stream entries acknowledged and deleted."),
    "claimed": ("entries_claimed", "counter", "Entries taken over from idle consumers."),
    "retried": ("retries", "counter",
                "Transient failures retried (Redis or PostgreSQL unreachable, reconnects)."),
    "dead_lettered": ("dead_lettered", "counter",
                      "Dead letters written to activity_log_dead_letters (the refused_* sum)."),
    "refused_oversized": ("refused_oversized", "counter",
                          "Entries over max_entry_records/max_entry_bytes, refused undecoded."),
    "refused_undecodable": ("refused_undecodable", "counter",
                            "Entries that could not be decoded."),
    "refused_malformed": ("refused_malformed", "counter",
                          "Records that could not be rows (no id, seq outside bigint...)."),
    "refused_out_of_window": ("refused_out_of_window", "counter",
                              "Records dated outside [now - max_age, now + max_future]."),
    "refused_by_database": ("refused_by_database", "counter",
                            "Records the database refused (isolated by bisection)."),
    "refused_signature": ("refused_signature", "counter",
                          "Entries whose signature did not check, or unsigned (with a key ring)."),
    "entries_vanished": ("entries_vanished", "counter",
                         "Entries delivered but deleted from the stream before being read "
                         "(lost in transit)."),
    "group_recreated": ("group_recreated", "counter",
                        "Times the consumer group had vanished and was recreated."),
    "partitions_created": ("partitions_created", "counter", "Monthly partitions created."),
    "lag": ("lag", "gauge", "Entries in the stream not yet delivered to the group "
                            "(XINFO GROUPS, at the last heartbeat)."),
    "pending": ("pending", "gauge", "Entries delivered to the group and not acknowledged "
                                    "(at the last heartbeat)."),
}

#: Upper bounds (seconds) of the batch latency histogram: from a light load's few records
#: (milliseconds) through full 10,000-row batches to outages retried for minutes.
BATCH_SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
DEFAULT_METRICS_HOST: Final = "127.0.0.1"


Family = CounterMetricFamily | GaugeMetricFamily


def _handler_families(kinds: Iterable[tuple[str, Kind, str]]) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for key, kind, doc in kinds:
        name = f"activity_log_handler_{key}"
        if kind == "counter":
            families[key] = CounterMetricFamily(name, doc, labels=("producer",))
        elif kind == "gauge":
            families[key] = GaugeMetricFamily(name, doc, labels=("producer",))
    return families


class ActivityHandlerCollector(Collector):
    """The ``stats()`` of one ``ActivityHandler``, or of every open one, for Prometheus.

    Args:
        handler: the handler to report; None reports every open handler of the process at
            each scrape (a handler closed since is no longer reported).

    Register it with ``prometheus_client.REGISTRY.register(ActivityHandlerCollector())``
    (or a registry of your own). Each scrape takes one ``stats()`` snapshot per handler;
    nothing is added to the logging path. ``collect`` never raises; thread-safe.
    """

    def __init__(self, handler: ActivityHandler | None = None) -> None:
        self._handler = handler

    def _handlers(self) -> list[ActivityHandler]:
        if self._handler is not None:
            return [self._handler]
        from .handler_lifecycle import live_handlers

        return sorted(live_handlers, key=lambda h: h.producer_id)

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (no ``stats()`` call at registration)."""
        yield from _handler_families((k, kind, doc) for k, (kind, doc) in HANDLER_STATS.items()
                                     ).values()
        yield GaugeMetricFamily("activity_log_handler_info", "", labels=("producer", "stream", "sink"))

    def collect(self) -> Iterator[Metric]:
        families = _handler_families((k, kind, doc) for k, (kind, doc) in HANDLER_STATS.items())
        info = GaugeMetricFamily(
            "activity_log_handler_info",
            "An open activity handler: its producer id, stream and sink (always 1).",
            labels=("producer", "stream", "sink"),
        )
        for handler in self._handlers():
            try:
                stats = handler.stats()
                producer = handler.producer_id
                sink = "redis" if handler.redis_url else "database"
                stream = handler.stream if handler.redis_url else ""
            except Exception as exc:  # a handler half torn down must not fail the scrape
                logger.debug("stats() of %r failed: %s", handler, exc)
                continue
            info.add_metric([producer, stream, sink], 1)
            for key, value in stats.items():
                family = families.get(key)
                if family is not None:  # unclassified keys: see HANDLER_STATS
                    family.add_metric([producer], value)
        yield info
        yield from families.values()


# --- the worker ---------------------------------------------------------------------------------


def _worker_families(labels: tuple[str, ...]) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for field_name, (name, kind, doc) in WORKER_COUNTERS.items():
        full = f"activity_log_worker_{name}"
        families[field_name] = (CounterMetricFamily(full, doc, labels=labels) if kind == "counter"
                                else GaugeMetricFamily(full, doc, labels=labels))
    return families


class WorkerCollector(Collector):
    """An ``ActivityWorker``'s counters (``WORKER_COUNTERS``), read at scrape time.

    Every metric is labelled ``stream``; ``activity_log_worker_info`` also names the consumer
    and group. ``lag`` and ``pending`` are the group's (every worker of the group reports the
    same values), absent until the first heartbeat read them. ``collect`` never raises;
    thread-safe (the counters are plain integers, copied in one call).
    """

    def __init__(self, worker: ActivityWorker) -> None:
        self._worker = worker

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples."""
        yield from _worker_families(("stream",)).values()
        yield GaugeMetricFamily("activity_log_worker_info", "",
                                labels=("stream", "group", "consumer"))
        yield GaugeMetricFamily("activity_log_worker_start_time_seconds", "", labels=("stream",))

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        stream = worker.stream
        info = GaugeMetricFamily(
            "activity_log_worker_info", "This worker: its stream, group and consumer (always 1).",
            labels=("stream", "group", "consumer"))
        info.add_metric([stream, worker.group, worker.consumer], 1)
        started = GaugeMetricFamily(
            "activity_log_worker_start_time_seconds", "When this worker started (Unix time).",
            labels=("stream",))
        started.add_metric([stream], worker.started_at)
        yield info
        yield started
        families = _worker_families(("stream",))
        try:
            counters = worker.stats()
        except Exception as exc:  # defensive: a scrape must answer whatever happens
            logger.debug("worker stats() failed: %s", exc)
            counters = {}
        for key, value in counters.items():
            family = families.get(key)
            if family is not None and value is not None:
                family.add_metric([stream], value)
        yield from families.values()


class WorkerMetricsServer:
    """The HTTP endpoint ``start_worker_metrics`` started: ``port`` it listens on, ``close()``."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, registry: CollectorRegistry,
                 registered: tuple[Collector, ...], worker: ActivityWorker) -> None:
        self._server = server
        self._thread = thread
        self.registry = registry
        self._registered = registered
        self._worker = worker
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        """Where the metrics are, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, free the port (takes up to half a second), take the worker's metrics
        out of the registry and its ``on_batch`` hook off; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        _unregister(self.registry, self._registered)
        self._worker.on_batch = None


def _unregister(registry: CollectorRegistry, collectors: Iterable[Collector]) -> None:
    for collector in collectors:
        with contextlib.suppress(KeyError):
            registry.unregister(collector)


def start_worker_metrics(
    worker: ActivityWorker,
    port: int,
    host: str = DEFAULT_METRICS_HOST,
    *,
    registry: CollectorRegistry | None = None,
) -> WorkerMetricsServer:
    """Serve ``worker``'s metrics on ``http://host:port/metrics`` from a daemon thread.

    Registers a ``WorkerCollector`` and the batch latency histogram
    (``activity_log_worker_batch_duration_seconds``: from a batch being read to its rows
    committed and its entries acknowledged, observed once per batch through
    ``worker.on_batch``) in ``registry``, default prometheus_client's global one (which also
    carries the process and Python metrics), and starts prometheus_client's HTTP server on
    it. ``port`` 0 picks a free port (see the returned ``port``). Call before ``worker.run``.

    Raises ``ConfigurationError`` when the address cannot be listened on (port in use, bad
    host), or when metrics for another worker are already in ``registry``.
    """
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"metrics port must be 0..65535, got {port}")
    registry = prometheus_client.REGISTRY if registry is None else registry
    collector = WorkerCollector(worker)
    try:
        registry.register(collector)
        histogram = prometheus_client.Histogram(
            "activity_log_worker_batch_duration_seconds",
            "Seconds from a batch being read from the stream to its rows committed and its "
            "entries acknowledged (queueing for a writer, retries included).",
            labelnames=("stream",), buckets=BATCH_SECONDS_BUCKETS, registry=registry,
        )
    except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
        _unregister(registry, (collector,))
        raise ConfigurationError(f"worker metrics already registered: {exc}") from exc
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except (OSError, ValueError) as exc:  # in use, no such address, unresolvable host
        _unregister(registry, (collector, histogram))
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    worker.on_batch = histogram.labels(stream=worker.stream).observe
    return WorkerMetricsServer(server, thread, registry, (collector, histogram), worker)


__all__ = [
    "BATCH_SECONDS_BUCKETS",
    "DEFAULT_CACHE_SECONDS",
    "DEFAULT_CHECK_TIMEOUT",
    "DEFAULT_METRICS_HOST",
    "HANDLER_STATS",
    "PIPELINE_GAUGES",
    "WORKER_COUNTERS",
    "ActivityHandlerCollector",
    "PipelineHealthCollector",
    "PipelineMetricsApp",
    "WorkerCollector",
    "WorkerMetricsServer",
    "pipeline_metrics_app",
    "start_worker_metrics",
]
