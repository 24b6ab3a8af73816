"""The query contract on the real PostgreSQL (asyncpg), in a private schema."""

from __future__ import annotations

import pytest

from tests.crud_rows import CrudContract, Store

pytestmark = pytest.mark.integration


class TestCrudPostgres(CrudContract):
    @pytest.fixture
    def store(self, pg_url: str, pg_schema: str) -> Store:
        return Store(pg_url, pg_schema)
