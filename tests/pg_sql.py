"""Plain SQL on a PostgreSQL URL for tests: a connection per call, closed afterwards."""

from __future__ import annotations

from typing import Any

import asyncpg


async def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in order on one connection (each in its own transaction)."""
    conn = await asyncpg.connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one query."""
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
