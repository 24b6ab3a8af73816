"""The smallest useful setup: dictConfig, a few activities, read them back.

Runs on the embedded default (no servers): records go to SQLite at ``ACTIVITY_DB`` (default
``./example_activity_logs.db``). Set REDIS_URL to ship to Redis instead (then run
``activity-logging worker`` to move them into the database).

    python examples/basic_logging.py
"""

from __future__ import annotations

import logging
import logging.config
import os
import sqlite3

from activity_logging import activity_context

DB_PATH = os.environ.get("ACTIVITY_DB", "example_activity_logs.db")

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "activity": {
            "()": "activity_logging.ActivityHandler",
            "database_url": f"sqlite:///{DB_PATH}",
            "direct": True,
        },
    },
    "loggers": {"activity": {"handlers": ["activity"], "level": "INFO", "propagate": False}},
})

log = logging.getLogger("activity")

with activity_context(actor_type="agent", actor_id="agent-7", request_id="req-42", ip_address="198.51.100.7"):
    log.info("call_created", extra={"target_type": "call", "target_id": "call-1001",
                                    "changes": {"status": {"old": None, "new": "ringing"}}})
    log.warning("call_updated", extra={"target_type": "call", "target_id": "call-1001",
                                       "description": "Customer put on hold for 4 minutes"})
log.info("system_event", extra={"actor_type": "system", "description": "Nightly export finished",
                                "rows": 1234, "api_token": "never-stored"})

logging.shutdown()  # flushes the handler: everything logged above is now stored

conn = sqlite3.connect(DB_PATH)
for row in conn.execute(
    "SELECT activity_type, severity, actor_id, target_id, ip_address, metadata FROM activity_logs "
    "ORDER BY timestamp DESC, id DESC LIMIT 3"
):
    print(row)
conn.close()
