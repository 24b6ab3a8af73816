"""Fixtures for the fast unit tests."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.capture import Capture
from tests.crud_rows import make_rows, seed


@pytest.fixture
def captured() -> Capture:
    """A ``Capture`` handler on the "activity" logger (level DEBUG, not propagating)."""
    handler = Capture()
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return handler


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A fresh embedded-store URL (the CLI tests' database)."""
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def rows(db: str) -> list[dict[str, Any]]:
    """40 known rows seeded into ``db`` (see tests/crud_rows.py)."""
    data = make_rows(40)
    asyncio.run(seed(db, data))
    return data
