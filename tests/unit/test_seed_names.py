"""The design's names are importable from the package as the same objects, and documented."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest

import activity_logging
from tests.capture import Capture

DOCS = Path(__file__).resolve().parents[2] / "docs"

ALIASES = [
    ("AsyncActivityLogger", "helpers", "ActivityLogger"),
    ("ActivityLogWorker", "worker", "ActivityWorker"),
    ("CleanupTasks", "scheduler", "MaintenanceScheduler"),
]


@pytest.mark.parametrize(("alias", "module", "name"), ALIASES)
def test_design_name_is_the_same_object(alias: str, module: str, name: str) -> None:
    target = getattr(importlib.import_module(f"activity_logging.{module}"), name)
    assert getattr(activity_logging, alias) is target
    namespace: dict[str, object] = {}
    exec(f"from activity_logging import {alias}", namespace)  # the import users write
    assert namespace[alias] is target


@pytest.mark.parametrize(("alias", "module", "name"), ALIASES)
def test_design_name_is_public_and_documented(alias: str, module: str, name: str) -> None:
    assert alias in activity_logging.__all__
    assert alias in dir(activity_logging)
    page = (DOCS / "configuration.md").read_text()
    (line,) = [row for row in page.splitlines() if row.startswith(f"| `{alias}` |")]
    assert f"`{name}`" in line or f"`activity_logging.{module}.{name}`" in line


def test_async_activity_logger_logs_like_activity_logger(captured: Capture) -> None:
    from activity_logging import AsyncActivityLogger

    assert AsyncActivityLogger().log("call_created", target_type="call", target_id="c-1")
    (row,) = captured.rows()
    assert (row["activity_type"], row["target_type"], row["target_id"]) == ("call_created", "call", "c-1")
    assert captured.records[0].levelno == logging.INFO
