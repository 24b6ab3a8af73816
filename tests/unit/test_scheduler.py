"""The maintenance scheduler: registration times, failing jobs, system_event records."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import schedule

from activity_logging.exceptions import ConfigurationError
from activity_logging.scheduler import MaintenanceScheduler
from tests.crud_rows import make_rows, seed


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def events() -> list[logging.LogRecord]:
    handler = _Collect()
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler.records


def _noop() -> None:
    return None


def test_default_jobs_are_registered_daily_at_two_and_sunday_at_three() -> None:
    sched = MaintenanceScheduler("sqlite:///unused.db", scheduler=schedule.Scheduler())
    cleanup, vacuum = sched.cleanup_entry, sched.vacuum_entry
    assert (cleanup.unit, cleanup.interval, cleanup.at_time) == ("days", 1, time(2, 0))
    assert cleanup.next_run is not None
    assert (cleanup.next_run.hour, cleanup.next_run.minute) == (2, 0)
    assert (vacuum.unit, vacuum.start_day, vacuum.at_time) == ("weeks", "sunday", time(3, 0))
    assert vacuum.next_run is not None
    assert vacuum.next_run.weekday() == 6
    assert (vacuum.next_run.hour, vacuum.next_run.minute) == (3, 0)
    assert len(sched.scheduler.get_jobs("activity-logging")) == 2
    described = sched.describe()
    assert described[0]["when"].startswith("daily at 02:00 ")  # the zone is named after it
    assert described[1]["when"].startswith("every sunday at 03:00 ")


def test_times_and_day_are_configurable() -> None:
    sched = MaintenanceScheduler(cleanup_at="23:30", vacuum_day="Wednesday", vacuum_at="04:15:30",
                                 cleanup_job=_noop, vacuum_job=_noop)
    assert sched.cleanup_entry.at_time == time(23, 30)
    assert sched.vacuum_entry.start_day == "wednesday"
    assert sched.vacuum_entry.at_time == time(4, 15, 30)
    assert sched.vacuum_entry.next_run is not None
    assert sched.vacuum_entry.next_run.weekday() == 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cleanup_at": "2am"}, "invalid schedule time"),
    ({"vacuum_at": "25:00"}, "invalid schedule time"),
    ({"vacuum_day": "someday"}, "vacuum_day"),
])
def test_bad_times_are_configuration_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MaintenanceScheduler(cleanup_job=_noop, vacuum_job=_noop, **kwargs)


def test_a_database_url_is_needed_for_the_default_jobs() -> None:
    with pytest.raises(ConfigurationError, match="database_url"):
        MaintenanceScheduler()


def test_failing_job_is_recorded_and_the_next_job_still_runs(
    events: list[logging.LogRecord],
) -> None:
    ran: list[str] = []

    def broken() -> None:
        ran.append("cleanup")
        raise RuntimeError("disk on fire")

    sched = MaintenanceScheduler(cleanup_job=broken, vacuum_job=lambda: ran.append("vacuum"))
    # Both due now: run_pending runs them in order, as on a Sunday after 03:00.
    past = datetime.now() - timedelta(seconds=1)
    sched.cleanup_entry.next_run = past
    sched.vacuum_entry.next_run = past + timedelta(microseconds=1)
    sched.run_pending()

    assert ran == ["cleanup", "vacuum"]
    assert sched.failures == {"cleanup": 1, "vacuum": 0}
    assert sched.runs == {"cleanup": 1, "vacuum": 1}
    # both rescheduled for their next regular time
    assert sched.cleanup_entry.next_run is not None
    assert sched.cleanup_entry.next_run > datetime.now()
    system = [r for r in events if getattr(r, "activity_type", None) == "system_event"]
    assert [(r.target_id, r.levelno) for r in system] == [  # type: ignore[attr-defined]
        ("cleanup", logging.ERROR), ("vacuum", logging.INFO)]
    failed = system[0]
    assert failed.actor_type == "system"  # type: ignore[attr-defined]
    assert failed.metadata["ok"] is False  # type: ignore[attr-defined]
    assert "disk on fire" in failed.metadata["error"]  # type: ignore[attr-defined]


def test_run_forever_runs_due_jobs_survives_failures_and_stops(
    events: list[logging.LogRecord],
) -> None:
    vacuumed = threading.Event()

    def broken() -> None:
        raise ValueError("nope")

    sched = MaintenanceScheduler(cleanup_job=broken, vacuum_job=vacuumed.set)
    sched.cleanup_entry.next_run = datetime.now() - timedelta(seconds=2)
    sched.vacuum_entry.next_run = datetime.now() - timedelta(seconds=1)
    thread = threading.Thread(target=sched.run_forever, kwargs={"max_sleep": 0.05})
    thread.start()
    try:
        assert vacuumed.wait(10)
    finally:
        sched.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert sched.failures["cleanup"] == 1
    assert sched.runs["vacuum"] == 1


def test_default_cleanup_job_runs_on_the_store_and_records_its_result(
    tmp_path: Path, events: list[logging.LogRecord],
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    rows = make_rows(20, start=datetime.now().astimezone() - timedelta(days=20),
                     step=timedelta(days=1))
    asyncio.run(seed(url, rows))
    sched = MaintenanceScheduler(url, retention_days=10)
    assert sched.run_job("cleanup")
    assert sched.run_job("vacuum")
    records = [r for r in events if getattr(r, "activity_type", None) == "system_event"]
    result = records[0].metadata["result"]  # type: ignore[attr-defined]
    assert result["deleted_rows"] == sum(
        1 for r in rows if r["timestamp"] < datetime.fromisoformat(result["cutoff"]))
    assert 5 <= result["deleted_rows"] <= 15
    assert records[1].metadata["result"]["statement"] == "VACUUM; ANALYZE"  # type: ignore[attr-defined]
