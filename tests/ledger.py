"""The ledger every fault scenario ends with: offered = stored + dead-lettered + counted.

A scenario gives every record it offers a unique key (``target_id`` = ``<tag>-<n>``), then
reads back what arrived: distinct keys stored (PostgreSQL, SQLite or a stream), rows stored
more than once, records in the dead-letter table, and the library's own drop/loss counters.
Anything else is a silent loss, which must be 0, except in a documented window, where the
loss must be *detected* (sequence gaps, see ``seq_gaps``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from activity_logging import db
from activity_logging.rows import build_activity
from activity_logging.wire import decode_entry


@dataclass
class Ledger:
    """What happened to the records a scenario offered."""

    offered: int
    stored: int  # distinct keys that arrived
    duplicates: int = 0  # extra rows beyond the first per key
    dead_lettered: int = 0
    counted: int = 0  # records the library counted under a dropped_* / lost_* / unconfirmed name
    window: int = 0  # records a documented window may lose (kill -9, os._exit): must be detected
    detected: int = 0  # records reported missing by sequence gaps

    @property
    def lost(self) -> int:
        """Records that went nowhere and were counted nowhere."""
        return self.offered - self.stored - self.dead_lettered - self.counted

    def __str__(self) -> str:
        return (f"offered={self.offered} stored={self.stored} duplicates={self.duplicates} "
                f"dead_lettered={self.dead_lettered} counted={self.counted} lost={self.lost} "
                f"window={self.window} detected={self.detected}")

    def assert_balanced(self) -> None:
        """No duplicate; no silent loss, or (inside a window) every loss detected."""
        print(f"ledger: {self}")  # shown by pytest -ra / on failure: the figures, not just a bool
        assert self.duplicates == 0, str(self)
        if self.window:
            assert 0 <= self.lost <= self.window, str(self)
            assert self.detected >= self.lost, f"undetected loss: {self}"
        else:
            assert self.lost == 0, str(self)


def counted_losses(stats: Mapping[str, int]) -> int:
    """Records a handler's ``stats()`` accounts as not delivered (drops, losses, unconfirmed)."""
    return sum(v for k, v in stats.items()
               if k.startswith(("dropped_", "lost_")) or k in ("lost", "unconfirmed"))


def keys_from_pg(pg_url: str, schema: str, tag: str) -> Counter[str]:
    """``target_id`` -> rows, for the rows of scenario ``tag`` in ``schema.activity_logs``."""

    async def fetch() -> list[Any]:
        conn = await db.connect_pg(pg_url, schema=schema)
        try:
            # a lock held by a fault scenario must fail the count, not hang the test
            await conn.execute("SET statement_timeout = '60s'")
            return list(await conn.fetch(
                "SELECT target_id FROM activity_logs WHERE target_id LIKE $1", f"{tag}-%"))
        finally:
            await conn.close()

    return Counter(str(r["target_id"]) for r in asyncio.run(fetch()))


def keys_from_sqlite(path: str, tag: str) -> Counter[str]:
    """``target_id`` -> rows in an embedded SQLite store."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT target_id FROM activity_logs WHERE target_id LIKE ?", (f"{tag}-%",)).fetchall()
    finally:
        conn.close()
    return Counter(str(r[0]) for r in rows)


def keys_from_stream(redis_url: str, stream: str, tag: str) -> Counter[str]:
    """``target_id`` -> records in a Redis stream (what a worker has not consumed yet)."""
    client = redis.Redis.from_url(redis_url)
    try:
        out: Counter[str] = Counter()
        for _, fields in client.xrange(stream) or []:
            if not fields:  # an entry deleted while pending
                continue
            meta, records = decode_entry(fields)
            for rec in records:
                target = build_activity(rec, meta).get("target_id")
                if isinstance(target, str) and target.startswith(f"{tag}-"):
                    out[target] += 1
        return out
    finally:
        client.close()


def dead_letters(pg_url: str, schema: str) -> list[Any]:
    """The records (bounded excerpts, decoded JSON) in the schema's dead-letter table, one
    dead letter per refused record (or per entry refused whole), oldest first."""
    import orjson

    async def read() -> list[Any]:
        conn = await db.connect_pg(pg_url, schema=schema)
        try:
            found = await conn.fetch("SELECT record FROM activity_log_dead_letters ORDER BY id")
        finally:
            await conn.close()
        return [orjson.loads(row["record"]) for row in found]

    return asyncio.run(read())


def ledger_of(offered: int, keys: Counter[str], **rest: int) -> Ledger:
    """A ledger from the keys that arrived (rows per key)."""
    return Ledger(offered=offered, stored=len(keys),
                  duplicates=sum(n - 1 for n in keys.values()), **rest)


def seq_gaps(rows: Iterable[tuple[str, int]]) -> int:
    """Missing sequence numbers per producer, between its first and last stored record.

    ``rows`` are (producer_id, seq) pairs; what ``verify`` reports as gaps.
    """
    by_producer: dict[str, set[int]] = {}
    for producer, seq in rows:
        by_producer.setdefault(producer, set()).add(int(seq))
    return sum(max(s) - min(s) + 1 - len(s) for s in by_producer.values())
