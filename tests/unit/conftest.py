"""Fixtures for the fast unit tests."""

from __future__ import annotations

import logging

import pytest

from tests.capture import Capture


@pytest.fixture
def captured() -> Capture:
    """A ``Capture`` handler on the "activity" logger (level DEBUG, not propagating)."""
    handler = Capture()
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return handler
