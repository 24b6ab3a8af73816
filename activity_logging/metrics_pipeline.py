"""Pipeline health for Prometheus: what ``activity-logging status`` checks, at scrape time.

``PipelineHealthCollector`` runs ``status.gather_status`` (cached for a few seconds) and
exports ``activity_log_pipeline_*`` gauges; ``pipeline_metrics_app`` serves it as an ASGI
app for ``serve`` or any application, running the check off the event loop. Needs
``prometheus_client``; ``activity_logging.metrics`` re-exports these names. See
docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "activity_logging.metrics needs prometheus_client: pip install 'activity_logging[metrics]'"
    ) from exc

from .config import (
    DEFAULT_GROUP,
    DEFAULT_HEARTBEAT_TTL,
    DEFAULT_SQLITE_URL,
    resolve_database_url,
    resolve_redis_url,
    resolve_schema,
    resolve_stream,
)
from .urls import redact_url

if TYPE_CHECKING:
    from .status import PipelineStatus

logger: Final = logging.getLogger("activity_logging.metrics")

#: Seconds a pipeline check is reused: scrapes from several Prometheus servers (or a
#: dashboard refreshing) cost one check.
DEFAULT_CACHE_SECONDS: Final = 5.0
#: Bound on one pipeline check, in seconds; a scrape never waits longer than this.
DEFAULT_CHECK_TIMEOUT: Final = 10.0

#: The pipeline gauges: (metric name without prefix, ``PipelineStatus`` attribute, help). A
#: value the check could not establish (no Redis configured, no group yet) is absent; so is
#: ``live_workers`` in embedded mode, where no worker is needed.
PIPELINE_GAUGES: Final = (
    ("live_workers", "live_workers", "Workers with a recent heartbeat (with Redis only)."),
    ("stream_length", "stream_length", "Entries in the stream (each carries a batch)."),
    ("undelivered", "undelivered", "Entries not yet delivered to the consumer group."),
    ("pending", "pending", "Entries delivered to a worker and not yet acknowledged."),
    ("oldest_waiting_seconds", "oldest_waiting_seconds",
     "Age of the oldest entry not yet acknowledged (how far behind the workers are)."),
    ("dead_letters", "dead_letters", "Dead letters (records or entries the worker refused) in the table."),
    ("newest_activity_age_seconds", "newest_activity_age_seconds",
     "Age of the newest stored activity."),
    ("rows_last_24h", "rows_last_24h", "Rows stored with a timestamp in the last 24 hours."),
    ("group_recreated", "group_recreated",
     "Times live workers found the consumer group gone and recreated it."),
)
_REDIS_ONLY: Final = frozenset({"live_workers", "group_recreated"})


class PipelineHealthCollector(Collector):
    """What ``activity-logging status`` checks, as ``activity_log_pipeline_*`` gauges.

    Args:
        database_url: the store; default ``DATABASE_URL``, else the embedded SQLite file.
        redis_url: the stream's Redis; default ``REDIS_URL``; None checks only the store.
        schema, stream, group, max_lag, heartbeat_ttl: as for ``status.gather_status``.
        cache_seconds: a check is reused for this long, so concurrent or frequent scrapes
            cost one check.
        timeout: bound on one check, in seconds.

    A scrape runs the check (``status.gather_status``) when the last one is older than
    ``cache_seconds``; scrapes meanwhile wait for that one check. The check runs in its own
    thread and event loop, so ``collect`` can be called from any thread, including one
    running an event loop (``make_asgi_app`` does; ``pipeline_metrics_app`` runs the check
    off the loop first). A check that fails or times out exports
    ``activity_log_pipeline_check_success 0`` and ``activity_log_pipeline_healthy 0`` and
    counts ``activity_log_pipeline_check_failures_total``. ``collect`` never raises;
    thread-safe.
    """

    def __init__(
        self,
        database_url: str | None = None,
        redis_url: str | None = None,
        *,
        schema: str | None = None,
        stream: str | None = None,
        group: str = DEFAULT_GROUP,
        max_lag: float | None = None,
        heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        timeout: float = DEFAULT_CHECK_TIMEOUT,
    ) -> None:
        from .status import DEFAULT_MAX_LAG

        url = resolve_database_url(database_url, default=DEFAULT_SQLITE_URL)
        assert url is not None  # a default was given
        self.database_url = url
        self.redis_url = resolve_redis_url(redis_url)
        self.schema = resolve_schema(schema)
        self.stream = resolve_stream(stream)
        self.group = group
        self.max_lag = DEFAULT_MAX_LAG if max_lag is None else max_lag
        self.heartbeat_ttl = heartbeat_ttl
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._checked_at: float | None = None  # time.monotonic() of the last check
        self._status: PipelineStatus | None = None
        self._duration = 0.0
        self._failures = 0

    def refresh(self, *, force: bool = False) -> PipelineStatus | None:
        """Run the check unless a recent one is cached; the status, or None when it failed.

        Blocks the calling thread for at most ``timeout`` seconds. Never raises; thread-safe.
        """
        with self._lock:
            now = time.monotonic()
            if (not force and self._checked_at is not None
                    and now - self._checked_at < self.cache_seconds):
                return self._status
            self._status = self._check()
            self._duration = time.monotonic() - now
            self._checked_at = time.monotonic()
            if self._status is None:
                self._failures += 1
            return self._status

    def _check(self) -> PipelineStatus | None:
        from .status import gather_status

        result: list[PipelineStatus] = []

        async def bounded() -> None:
            result.append(await asyncio.wait_for(gather_status(
                self.database_url, self.redis_url, schema=self.schema, stream=self.stream,
                group=self.group, max_lag=self.max_lag, heartbeat_ttl=self.heartbeat_ttl,
            ), self.timeout))

        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(bounded())
            except BaseException as exc:  # reported below, in the scraping thread
                errors.append(exc)

        # A thread of its own: the caller may be running an event loop (an ASGI server).
        thread = threading.Thread(target=run, name="activity-pipeline-check", daemon=True)
        thread.start()
        thread.join(self.timeout + 5.0)  # wait_for ends it; the margin covers its cleanup
        if result:
            return result[0]
        reason = repr(errors[0]) if errors else f"no answer within {self.timeout:g}s"
        logger.warning("pipeline check of %s failed: %s", redact_url(self.database_url), reason)
        return None

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (no check at registration)."""
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        status = self.refresh()
        yield from self._families(status, sampled=True)

    def _families(self, status: PipelineStatus | None, *, sampled: bool = False) -> Iterator[Metric]:
        labels = ("stream",)
        stream = [self.stream if self.redis_url else ""]

        def gauge(name: str, doc: str, value: float | None, *, extra: tuple[str, ...] = (),
                  values: tuple[str, ...] = ()) -> Metric:
            family = GaugeMetricFamily(f"activity_log_pipeline_{name}", doc,
                                       labels=labels + extra)
            if sampled and value is not None:
                family.add_metric(stream + list(values), value)
            return family

        yield gauge("check_success", "1 when the last pipeline check ran, 0 when it failed "
                    "(Redis or the database unreachable, timeout).", int(status is not None))
        yield gauge("healthy", "1 when the pipeline check found no problem (0 also when the "
                    "check failed).", int(status is not None and status.healthy))
        yield gauge("problems", "Problems the last check found (each makes it unhealthy).",
                    len(status.problems) if status is not None else None)
        yield gauge("warnings", "Warnings the last check found (Redis persistence, eviction).",
                    len(status.warnings) if status is not None else None)
        for name, attribute, doc in PIPELINE_GAUGES:
            known = status is not None and (self.redis_url is not None or name not in _REDIS_ONLY)
            yield gauge(name, doc, getattr(status, attribute) if known else None)
        lost = status.lost_in_transit if status is not None else None
        unit = (status.lost_in_transit_unit or "") if status is not None else ""
        yield gauge("lost_in_transit", "Loss found in transit: sequence gaps among recent rows "
                    "(unit records) or entries removed from the stream unread (unit entries).",
                    lost, extra=("unit",), values=(unit,))
        yield gauge("check_duration_seconds", "How long the last pipeline check took.",
                    self._duration if self._checked_at is not None else None)
        yield gauge("check_timestamp_seconds", "When the last pipeline check began (Unix time).",
                    status.checked_at.timestamp() if status is not None else None)
        failures = CounterMetricFamily("activity_log_pipeline_check_failures",
                                       "Pipeline checks that failed.", labels=labels)
        if sampled:
            failures.add_metric(stream, self._failures)
        yield failures


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


class PipelineMetricsApp:
    """The ASGI app ``pipeline_metrics_app`` returns; ``collector`` is its health collector."""

    def __init__(self, collector: PipelineHealthCollector, registry: CollectorRegistry) -> None:
        self.collector = collector
        self.registry = registry
        self._inner = prometheus_client.make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            return
        # The check in a worker thread, so the exposition below finds it cached and the
        # event loop never waits on Redis or the database.
        await asyncio.to_thread(self.collector.refresh)
        await self._inner(scope, receive, send)


def pipeline_metrics_app(
    database_url: str | None = None,
    redis_url: str | None = None,
    *,
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> PipelineMetricsApp:
    """An ASGI app serving the pipeline health (``PipelineHealthCollector``) for Prometheus.

    Mount it where the scraper looks, e.g. ``app.mount("/metrics", pipeline_metrics_app(url,
    redis))``; ``serve`` can expose it next to the viewer. ``options`` go to
    ``PipelineHealthCollector`` (``schema``, ``stream``, ``group``, ``max_lag``,
    ``heartbeat_ttl``, ``cache_seconds``, ``timeout``). ``registry`` (default: a new one
    holding only the pipeline health) lets the same endpoint serve more collectors; the
    pipeline collector is registered in it. The check runs in a worker thread, never on the
    event loop; the exposition is prometheus_client's ``make_asgi_app`` (content
    negotiation, gzip). Scopes other than HTTP (lifespan) are ignored. The app does no
    authorisation: put it behind the same guard as the rest of the application.
    """
    registry = CollectorRegistry() if registry is None else registry
    collector = PipelineHealthCollector(database_url, redis_url, **options)
    registry.register(collector)
    return PipelineMetricsApp(collector, registry)


__all__ = [
    "DEFAULT_CACHE_SECONDS",
    "DEFAULT_CHECK_TIMEOUT",
    "PIPELINE_GAUGES",
    "PipelineHealthCollector",
    "PipelineMetricsApp",
    "pipeline_metrics_app",
]
