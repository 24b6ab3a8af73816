"""The query contract on the embedded SQLite store (aiosqlite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crud_rows import CrudContract, Store


class TestCrudSqlite(CrudContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return Store(f"sqlite:///{tmp_path / 'activity.db'}")
