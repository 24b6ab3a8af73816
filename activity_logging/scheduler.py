"""The maintenance scheduler: cleanup daily, vacuum weekly, on the ``schedule`` package.

A long-running, single-threaded process (``activity-logging scheduler``) or an object you
drive yourself. Defaults: ``cleanup`` every day at 02:00 and ``vacuum`` every Sunday at
03:00, in the process's *local* time zone. ``schedule`` has no time-zone support without
pytz, so the zone is made explicit instead: it is logged at start and shown by
``describe()``, and the CLI's ``--tz`` sets the process zone (``TZ``) before scheduling.

Contracts: a failing job is logged (with its traceback, on our own logger) and the next
jobs still run; the loop never dies of a job. Every run, good or bad, is recorded as a
``system_event`` activity through the standard logger ``"activity"``, which whatever
``ActivityHandler`` the application attached there ships like any other record.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import schedule

from .config import require_positive
from .exceptions import ConfigurationError
from .retention import DEFAULT_BATCH_SIZE, run_cleanup, run_vacuum

logger: Final = logging.getLogger("activity_logging.scheduler")

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ACTIVITY_LOGGER: Final = "activity"
SYSTEM_EVENT: Final = "system_event"
SCHEDULER_ACTOR: Final = "activity-logging-scheduler"

Job = Callable[[], Any]


def local_timezone_name() -> str:
    """The name of the process's local time zone as the scheduler uses it (``"CET"``, ``"UTC"``)."""
    return dt.datetime.now().astimezone().tzname() or time.tzname[0]


class MaintenanceScheduler:
    """Runs ``cleanup`` daily and ``vacuum`` weekly at local wall-clock times.

    Args:
        database_url: the store to maintain (``DATABASE_URL`` form).
        schema: PostgreSQL schema holding the table, if not the default ``search_path``.
        retention_days: passed to ``cleanup`` (else ``ACTIVITY_LOG_RETENTION_DAYS``, else 90).
        cleanup_at: ``"HH:MM"`` or ``"HH:MM:SS"``, local time, every day.
        vacuum_day: weekday name for the vacuum (``"sunday"``).
        vacuum_at: ``"HH:MM"`` local time on ``vacuum_day``.
        batch_size / detach / months_ahead: passed to ``cleanup`` (``retention.cleanup``).
        cleanup_job / vacuum_job: replace the default jobs (callables without arguments).
        scheduler: a ``schedule.Scheduler`` to register on (a private one by default).

    Raises ``ConfigurationError`` for a malformed time or weekday. Not thread-safe, except
    ``stop()``, which any thread (or a signal handler) may call.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        schema: str | None = None,
        retention_days: int | None = None,
        cleanup_at: str = "02:00",
        vacuum_day: str = "sunday",
        vacuum_at: str = "03:00",
        batch_size: int = DEFAULT_BATCH_SIZE,
        detach: bool = False,
        months_ahead: int = 3,
        cleanup_job: Job | None = None,
        vacuum_job: Job | None = None,
        scheduler: schedule.Scheduler | None = None,
    ) -> None:
        if (cleanup_job is None or vacuum_job is None) and not database_url:
            raise ConfigurationError("database_url is required for the default jobs")
        day = vacuum_day.strip().lower()
        if day not in WEEKDAYS:
            raise ConfigurationError(f"vacuum_day must be a weekday name, got {vacuum_day!r}")
        self.database_url = database_url
        self.schema = schema
        self.retention_days = retention_days
        self.batch_size = batch_size
        self.detach = detach
        self.months_ahead = months_ahead
        self.scheduler = scheduler if scheduler is not None else schedule.Scheduler()
        self._stop = threading.Event()
        self.runs: dict[str, int] = {"cleanup": 0, "vacuum": 0}
        self.failures: dict[str, int] = {"cleanup": 0, "vacuum": 0}
        self._jobs: dict[str, Job] = {
            "cleanup": cleanup_job or self._cleanup,
            "vacuum": vacuum_job or self._vacuum,
        }
        try:
            self.cleanup_entry = (
                self.scheduler.every().day.at(cleanup_at).do(self.run_job, "cleanup")
            )
            self.vacuum_entry = (
                getattr(self.scheduler.every(), day).at(vacuum_at).do(self.run_job, "vacuum")
            )
        except (schedule.ScheduleValueError, TypeError) as exc:
            self.scheduler.clear()
            raise ConfigurationError(f"invalid schedule time: {exc}") from None
        self.cleanup_entry.tag("activity-logging", "cleanup")
        self.vacuum_entry.tag("activity-logging", "vacuum")
        self.cleanup_at = cleanup_at
        self.vacuum_day = day
        self.vacuum_at = vacuum_at

    # --- the default jobs --------------------------------------------------------------

    def _cleanup(self) -> Any:
        assert self.database_url is not None
        return run_cleanup(
            self.database_url, schema=self.schema, retention_days=self.retention_days,
            batch_size=self.batch_size, detach=self.detach, months_ahead=self.months_ahead,
        )

    def _vacuum(self) -> Any:
        assert self.database_url is not None
        return run_vacuum(self.database_url, schema=self.schema)

    # --- running -----------------------------------------------------------------------

    def run_job(self, name: str) -> bool:
        """Run job ``name`` now and record it; returns success. Never raises (bar ``KeyError``
        for an unknown name), so one failing job cannot stop the ones after it."""
        job = self._jobs[name]
        started = time.monotonic()
        self.runs[name] += 1
        try:
            result = job()
        except Exception as exc:
            self.failures[name] += 1
            seconds = time.monotonic() - started
            logger.exception("maintenance job %s failed after %.1f s", name, seconds)
            self._record(name, ok=False, seconds=seconds, error=f"{type(exc).__name__}: {exc}")
            return False
        seconds = time.monotonic() - started
        logger.info("maintenance job %s done in %.1f s", name, seconds)
        self._record(name, ok=True, seconds=seconds, result=result)
        return True

    def _record(self, name: str, *, ok: bool, seconds: float, result: Any = None,
                error: str | None = None) -> None:
        details: dict[str, Any] = {"job": name, "ok": ok, "seconds": round(seconds, 3)}
        to_dict = getattr(result, "to_dict", None)
        if callable(to_dict):
            details["result"] = to_dict()
        if error is not None:
            details["error"] = error[:2000]
        try:
            logging.getLogger(ACTIVITY_LOGGER).log(
                logging.INFO if ok else logging.ERROR,
                SYSTEM_EVENT,
                extra={
                    "activity_type": SYSTEM_EVENT,
                    "description": f"maintenance job {name} {'succeeded' if ok else 'failed'}",
                    "actor_type": "system",
                    "actor_id": SCHEDULER_ACTOR,
                    "target_type": "maintenance_job",
                    "target_id": name,
                    "metadata": details,
                },
            )
        except Exception:  # recording must never take the scheduler down
            logger.exception("could not record the %s run", name)

    def describe(self) -> list[dict[str, str]]:
        """The registered jobs: name, when (local time, zone named) and next run (ISO)."""
        zone = local_timezone_name()
        out = []
        for name, entry, when in (
            ("cleanup", self.cleanup_entry, f"daily at {self.cleanup_at}"),
            ("vacuum", self.vacuum_entry, f"every {self.vacuum_day} at {self.vacuum_at}"),
        ):
            nxt = entry.next_run
            out.append({
                "job": name, "when": f"{when} {zone}",
                "next_run": nxt.astimezone().isoformat() if nxt else "",
            })
        return out

    def run_pending(self) -> None:
        """Run the jobs that are due (what the loop calls)."""
        self.scheduler.run_pending()

    def run_forever(self, *, max_sleep: float = 60.0) -> None:
        """Loop until ``stop()``: run due jobs, then sleep until the next one (at most
        ``max_sleep`` s, so a changed wall clock is noticed)."""
        require_positive("max_sleep", max_sleep)
        for job in self.describe():
            logger.info("scheduled %s %s (next run %s)", job["job"], job["when"], job["next_run"])
        while not self._stop.is_set():
            self.run_pending()
            idle = self.scheduler.idle_seconds
            wait = max_sleep if idle is None else min(max(idle, 0.0), max_sleep)
            self._stop.wait(max(wait, 0.05))
        logger.info("scheduler stopped")

    def stop(self) -> None:
        """Ask ``run_forever`` to return; safe from any thread or a signal handler."""
        self._stop.set()


__all__ = ["WEEKDAYS", "MaintenanceScheduler", "local_timezone_name"]
