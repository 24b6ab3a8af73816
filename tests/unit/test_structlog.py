"""structlog's standard-library integration into a real ActivityHandler on the embedded store.

The structlog configuration is the block docs/configuration.md shows, executed from the
page itself, so the documented recipe cannot rot.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from activity_logging import activity_context
from tests.sqlite_rows import Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented_configuration() -> str:
    """The first python block of the page's structlog section."""
    section = DOC.read_text().split("\n## structlog\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/configuration.md lost its structlog recipe"
    return match.group(1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "structlog.db")
    log = logging.getLogger("activity")
    log.addHandler(store.handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    exec(documented_configuration(), {})  # the page's own code, on purpose
    try:
        yield store
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def test_the_documented_recipe_uses_the_stdlib_integration() -> None:
    code = documented_configuration()
    for name in ("structlog.stdlib.LoggerFactory()", "structlog.stdlib.render_to_log_kwargs",
                 "structlog.contextvars.merge_contextvars"):
        assert name in code


def test_structlog_fields_map_to_columns_and_metadata(store: Store) -> None:
    log = structlog.get_logger("activity")
    log.info("call_created", actor_type="agent", actor_id="agent-7", target_type="call",
             target_id="c-1", changes={"status": {"old": None, "new": "ringing"}}, queue="sales")
    (row,) = store.rows()
    assert (row["activity_type"], row["description"], row["severity"]) == (
        "call_created", "call_created", "info")
    assert (row["actor_type"], row["actor_id"], row["target_type"], row["target_id"]) == (
        "agent", "agent-7", "call", "c-1")
    assert row["changes"] == {"status": {"old": None, "new": "ringing"}}
    assert row["metadata"] == {"queue": "sales"}


def test_structlog_bound_contextvars_arrive(store: Store) -> None:
    structlog.contextvars.bind_contextvars(request_id="req-42", tenant="acme")
    structlog.get_logger("activity").bind(actor_id="u-1").warning("user_login")
    structlog.contextvars.clear_contextvars()
    structlog.get_logger("activity").info("after_clear")
    first, second = store.rows()
    assert (first["request_id"], first["actor_id"], first["severity"]) == ("req-42", "u-1", "warning")
    assert first["metadata"] == {"tenant": "acme"}
    assert second["request_id"] is None and second["metadata"] == {}


def test_structlog_records_get_the_library_context_under_their_own_fields(store: Store) -> None:
    structlog.contextvars.bind_contextvars(request_id="from-structlog")
    with activity_context(request_id="from-middleware", ip_address="192.0.2.7", actor_id="ctx-user"):
        structlog.get_logger("activity").info("lead_updated", actor_id="explicit")
    (row,) = store.rows()
    assert row["request_id"] == "from-structlog"  # set on the event: extra wins over context
    assert row["actor_id"] == "explicit"
    assert row["ip_address"] == "192.0.2.7"  # filled in from the context


def test_structlog_positional_arguments_and_exceptions(store: Store) -> None:
    log = structlog.get_logger("activity")
    log.info("agent %s paused", "agent-7")
    try:
        1 / 0  # noqa: B018 - the exception is the point
    except ZeroDivisionError:
        log.exception("call_failed", target_id="c-9")
    paused, failed = store.rows()
    assert paused["activity_type"] == "agent agent-7 paused"
    assert (failed["activity_type"], failed["severity"], failed["target_id"]) == (
        "call_failed", "error", "c-9")
    assert "ZeroDivisionError: division by zero" in failed["metadata"]["exception"]
