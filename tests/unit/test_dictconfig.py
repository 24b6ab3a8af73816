"""The configuration paths users take: dictConfig '()' and "class", 3.12's queue path, reconfiguring."""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import queue
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from activity_logging.handler import ActivityHandler


def config_for(db: Path, form: str, **handler: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"database_url": f"sqlite:///{db}", "direct": True, "queue_size": 5000,
                            "batch_size": 50, "flush_interval": 0.01, **handler}
    if form == "()":
        spec["()"] = "activity_logging.ActivityHandler"
    else:  # "handlers": [] as docs/configuration.md says: Python 3.12 refuses the form without
        spec["class"] = "activity_logging.handler.ActivityHandler"
        spec["handlers"] = []
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "activity_logging.ContextFilter"}},
        "handlers": {"activity": {**spec, "level": "INFO", "filters": ["context"]}},
        "loggers": {"activity": {"handlers": ["activity"], "level": "INFO", "propagate": False}},
    }


def stored(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "select activity_type, actor_type, actor_id, target_type, target_id, changes, metadata,"
            " ip_address, user_agent, request_id, http_method, path, severity, level, description"
            " from activity_logs order by seq").fetchall()
    finally:
        conn.close()


def handler_of(name: str = "activity") -> ActivityHandler:
    (handler,) = logging.getLogger(name).handlers
    assert isinstance(handler, ActivityHandler)
    return handler


@pytest.mark.parametrize("form", ["()", "class"])
def test_dictconfig_alone_delivers_every_field(form: str, tmp_path: Path) -> None:
    from activity_logging import activity_context

    db = tmp_path / "a.db"
    logging.config.dictConfig(config_for(db, form))
    with activity_context(ip_address="203.0.113.9", user_agent="ua/1", request_id="req-1",
                          http_method="POST", path="/calls"):
        logging.getLogger("activity").warning(
            "call_created", extra={"actor_type": "agent", "actor_id": "a-1", "target_type": "call",
                                   "target_id": "c-1", "changes": {"status": {"old": None, "new": "ringing"}},
                                   "campaign": "spring", "description": "New call record created"})
    assert handler_of().flush(10)
    (row,) = stored(db)
    row = (*row[:5], json.loads(row[5]), json.loads(row[6]), *row[7:])
    assert row == (
        "call_created", "agent", "a-1", "call", "c-1", {"status": {"old": None, "new": "ringing"}},
        {"campaign": "spring"}, "203.0.113.9", "ua/1", "req-1", "POST", "/calls", "warning", 30,
        "New call record created",
    )


def test_python312_class_path_queue_and_listener_are_ignored(tmp_path: Path) -> None:
    """3.12+ dictConfig calls klass(queue.Queue(), **kwargs) then sets .listener: stay bounded."""
    unbounded: queue.Queue[Any] = queue.Queue()
    handler = ActivityHandler(unbounded, database_url=f"sqlite:///{tmp_path / 'b.db'}", direct=True,
                              queue_size=10)
    handler.listener = logging.handlers.QueueListener(unbounded)  # type: ignore[assignment]
    assert handler.queue.maxsize == 10
    assert handler.listener.__class__.__name__ == "ActivityListener"
    handler.listener.start()  # the cookbook's call: idempotent on our own listener
    log = logging.getLogger("activity.q312")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    log.info("one")
    assert handler.flush(10)
    assert unbounded.qsize() == 0
    handler.listener.stop()
    handler.close()
    assert len(stored(tmp_path / "b.db")) == 1


def test_second_dictconfig_loses_nothing_queued(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    logging.config.dictConfig(config_for(db, "()", flush_interval=5.0, batch_size=5000))
    log = logging.getLogger("activity")
    for i in range(2000):
        log.info("before", extra={"i": i})
    old = handler_of()
    # closes the old handler while holding the logging lock: it finishes shipping by itself
    logging.config.dictConfig(config_for(db, "class"))
    old.close()  # outside the lock: waits (bounded) for that finish
    stats = old.stats()
    assert (stats["sent"], stats["unaccounted"], stats["queue_depth"]) == (2000, 0, 0)
    for i in range(10):
        log.info("after", extra={"i": i})
    assert handler_of().flush(10)
    rows = stored(db)
    assert [r[0] for r in rows].count("before") == 2000
    assert [r[0] for r in rows].count("after") == 10


def test_logging_shutdown_flushes_everything(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    logging.config.dictConfig(config_for(db, "()", flush_interval=5.0, batch_size=5000))
    for i in range(500):
        logging.getLogger("activity").info("x", extra={"i": i})
    handler = handler_of()
    logging.shutdown([lambda: handler])  # type: ignore[list-item]
    assert len(stored(db)) == 500


def test_interpreter_exit_ships_what_was_queued(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "e.db"
    config = json.dumps(config_for(db, "()", flush_interval=5.0, batch_size=100000))
    code = (
        "import logging, logging.config, json\n"
        f"logging.config.dictConfig(json.loads({config!r}))\n"
        "log = logging.getLogger('activity')\n"
        "[log.info('exit_test', extra={'i': i}) for i in range(3000)]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert len(stored(db)) == 3000
