"""Seed data with known answers for the query, export, retention and verify tests.

Holds no tests of its own: the rows, a reference filter in plain Python, seeding through the
library's own writer for each store (``store.make_store``), and the query contract that
``tests/unit/test_crud_sqlite.py`` and ``tests/integration/test_crud_pg.py`` run on each store.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from activity_logging.crud import ActivityCursor, ActivityFilter, activity_log_crud
from activity_logging.db import create_async_engine_for, init_db, read_connection
from activity_logging.exceptions import ConfigurationError
from activity_logging.levels import level_to_severity
from activity_logging.schema import COLUMNS
from activity_logging.store import make_store

BASE = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
TYPES = ("call_created", "call_ended", "agent_login", "lead_created")
ACTORS = (("agent", "a1"), ("agent", "a2"), ("user", "u1"), (None, None))
TARGETS = (("call", "c1"), ("call", "c2"), ("lead", "l1"))
LEVELS = (10, 20, 20, 30, 40, 50)


def make_rows(
    n: int,
    *,
    start: datetime = BASE,
    step: timedelta = timedelta(minutes=17),
    producer_id: str = "prod-a",
    first_seq: int = 1,
    skip_seqs: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """``n`` deterministic rows, oldest first; every third pair shares a timestamp (tie-break).

    ``skip_seqs`` leaves those sequence numbers out (simulated loss); ``n`` counts rows kept.
    """
    rows: list[dict[str, Any]] = []
    seq = first_seq - 1
    i = 0
    while len(rows) < n:
        seq += 1
        if seq in skip_seqs:
            continue
        ts = start + step * (i - (i % 3 == 2))  # rows 1 and 2 of each triple share a time
        level = LEVELS[i % len(LEVELS)]
        actor = ACTORS[i % len(ACTORS)]
        target = TARGETS[i % len(TARGETS)]
        rows.append({
            "id": uuid.uuid4(),
            "timestamp": ts,
            "activity_type": TYPES[i % len(TYPES)],
            "description": f"event {i} {'Needle' if i % 5 == 0 else 'hay'} 100%_done",
            "severity": level_to_severity(level),
            "level": level,
            "actor_type": actor[0],
            "actor_id": actor[1],
            "target_type": target[0],
            "target_id": target[1],
            "changes": {"status": [None, f"s{i}"]} if i % 2 else None,
            "metadata": {"i": i},
            "ip_address": "10.0.0.1" if i % 4 == 0 else None,
            "user_agent": "pytest",
            "request_id": f"req-{i // 4}",
            "http_method": "POST",
            "path": "/calls",
            "logger": "activity",
            "hostname": "host1",
            "process_id": 42,
            "producer_id": producer_id,
            "seq": seq,
            "key_id": None, "prev_mac": None, "mac": None, "row_mac": None,
        })
        i += 1
    return rows


def reference(
    rows: Sequence[dict[str, Any]], *, desc: bool = True, **filters: Any
) -> list[dict[str, Any]]:
    """What a query with ``filters`` must return, computed in Python."""
    def keep(r: dict[str, Any]) -> bool:
        for key, want in filters.items():
            if key == "start" and r["timestamp"] < want:
                return False
            if key == "end" and r["timestamp"] >= want:
                return False
            if key == "text" and want.lower() not in (r["description"] or "").lower():
                return False
            if key in ("severity", "activity_type"):
                wanted = (want,) if isinstance(want, str) else tuple(want)
                if r[key] not in wanted:
                    return False
            elif key not in ("start", "end", "text") and r[key] != want:
                return False
        return True

    out = [r for r in rows if keep(r)]
    out.sort(key=lambda r: (r["timestamp"], r["id"]), reverse=desc)
    return out


async def seed(url: str, rows: Sequence[dict[str, Any]], *, schema: str | None = None,
               partitioned: bool = False) -> None:
    """Create the table (``db.init_db``) and insert ``rows`` through the store's writer."""
    await init_db(url, schema=schema, partitioned=partitioned)
    if not rows:
        return
    store = make_store(url, schema=schema)
    try:
        for i in range(0, len(rows), 10_000):
            await store.insert_activities(rows[i:i + 10_000])
    finally:
        await store.close()


def ids(items: Sequence[Any]) -> list[uuid.UUID]:
    """The ids of rows (dicts) or records (objects with ``.id``), in order."""
    return [r["id"] if isinstance(r, dict) else r.id for r in items]


assert tuple(make_rows(1)[0]) == COLUMNS


# --- the query contract, run against each store ----------------------------------------------


@dataclass
class Store:
    """Where a contract test runs: a database URL and, for PostgreSQL, a private schema."""

    url: str
    schema: str | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ``AsyncSession``, as an application passes one (docs/queries.md)."""
        engine = create_async_engine_for(self.url, schema=self.schema)
        try:
            async with AsyncSession(engine) as db:
                yield db
        finally:
            await engine.dispose()


class CrudContract:
    """Every query and filter on seeded data with known answers. Subclasses give ``store``."""

    N = 60

    async def _seeded(self, store: Store, rows: Sequence[dict[str, Any]] | None = None
                      ) -> list[dict[str, Any]]:
        data = list(rows) if rows is not None else make_rows(self.N)
        await seed(store.url, data, schema=store.schema)
        return data

    @pytest.mark.anyio
    async def test_iter_activities_streams_every_matching_row_once(self, store: Store) -> None:
        rows = make_rows(45)
        await seed(store.url, rows, schema=store.schema)
        async with read_connection(store.url, schema=store.schema) as conn:
            got = [r async for r in activity_log_crud.iter_activities(
                conn, ActivityFilter.build(actor_type="agent"), batch_size=4)]
        assert ids(got) == ids(reference(rows, desc=False, actor_type="agent"))

    @pytest.mark.anyio
    async def test_iter_batches_are_bounded_rows_in_table_column_order(self, store: Store) -> None:
        rows = make_rows(23)
        await seed(store.url, rows, schema=store.schema)
        async with read_connection(store.url, schema=store.schema) as conn:
            batches = [list(b) async for b in activity_log_crud.iter_batches(conn, batch_size=5)]
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert all(tuple(row._fields) == COLUMNS for batch in batches for row in batch)
        assert [row.id for batch in batches for row in batch] == ids(reference(rows, desc=False))


    @pytest.mark.anyio
    async def test_recent_activities_newest_first(self, store: Store) -> None:
        rows = await self._seeded(store)
        async with store.session() as db:
            activities = await activity_log_crud.get_recent_activities(db, limit=100)
            top = await activity_log_crud.get_recent_activities(db, limit=10)
        assert ids(activities) == ids(reference(rows))
        assert ids(top) == ids(reference(rows))[:10]

    @pytest.mark.anyio
    @pytest.mark.parametrize("filters", [
        {"actor_type": "agent", "actor_id": "a1"},
        {"actor_id": "u1"},
        {"target_type": "call", "target_id": "c2"},
        {"request_id": "req-3"},
        {"severity": "error"},
        {"severity": ["warning", "critical"]},
        {"text": "NEEDLE"},
        {"text": "100%_done"},
        {"text": "0%x"},
        {"activity_type": "lead_created", "severity": "info"},
    ])
    async def test_each_filter_returns_exactly_the_matching_rows(
        self, store: Store, filters: dict[str, Any]
    ) -> None:
        rows = await self._seeded(store)
        async with store.session() as db:
            got = await activity_log_crud.get_recent_activities(db, limit=1000, **filters)
        want = reference(rows, **filters)
        assert ids(got) == ids(want)
        if filters != {"text": "0%x"}:
            assert want, "seed data must hold matching rows, or the test proves nothing"

    @pytest.mark.anyio
    async def test_date_range_with_activity_type_as_operators_call_it(self, store: Store) -> None:
        rows = await self._seeded(store)
        start_date = BASE + timedelta(hours=1)
        end_date = BASE + timedelta(hours=5)
        async with store.session() as db:
            activities = await activity_log_crud.get_activities_by_date_range(
                db, start_date, end_date, activity_type="call_created")
            ascending = await activity_log_crud.get_activities_by_date_range(
                db, start_date, end_date, order="asc", actor_id="a1")
            whole_day = await activity_log_crud.get_activities_by_date_range(
                db, date(2026, 3, 10), date(2026, 3, 10))
        want = reference(rows, start=start_date, end=end_date, activity_type="call_created")
        assert want
        assert ids(activities) == ids(want)
        assert all(start_date <= a.timestamp < end_date for a in activities)
        want_asc = reference(rows, desc=False, start=start_date, end=end_date, actor_id="a1")
        assert want_asc
        assert ids(ascending) == ids(want_asc)
        midnight = BASE.replace(hour=0)
        day = reference(rows, start=midnight, end=midnight + timedelta(days=1))
        assert ids(whole_day) == ids(day)
        assert 0 < len(day) < len(rows)

    @pytest.mark.anyio
    @pytest.mark.parametrize("order", ["desc", "asc"])
    async def test_keyset_pages_return_each_row_exactly_once(
        self, store: Store, order: str
    ) -> None:
        rows = await self._seeded(store)
        seen: list[Any] = []
        cursor: str | None = None
        pages = 0
        async with store.session() as db:
            while True:
                page = await activity_log_crud.get_page(
                    db, ActivityFilter(), limit=7, cursor=cursor, order=order)  # type: ignore[arg-type]
                seen.extend(page.items)
                pages += 1
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            # the list API pages the same way, through record.cursor
            first = await activity_log_crud.get_recent_activities(db, limit=5, actor_type="agent")
            second = await activity_log_crud.get_recent_activities(
                db, limit=5, actor_type="agent", cursor=first[-1].cursor)
        assert ids(seen) == ids(reference(rows, desc=order == "desc"))
        assert len(set(ids(seen))) == len(rows)
        assert pages == -(-len(rows) // 7)
        assert ids(first) + ids(second) == ids(reference(rows, actor_type="agent"))[:10]

    @pytest.mark.anyio
    async def test_summary_counts_by_type_severity_and_day(self, store: Store) -> None:
        old = make_rows(5, start=BASE - timedelta(days=40), producer_id="old")
        rows = await self._seeded(store, make_rows(self.N) + old)
        now = BASE + timedelta(days=1)
        async with store.session() as db:
            summary = await activity_log_crud.get_activity_summary(db, days=30, now=now)
        window = [r for r in rows if r["timestamp"] >= BASE - timedelta(days=28, hours=12)]
        assert summary.total == len(window) == self.N
        for key, counts in (("activity_type", summary.by_type), ("severity", summary.by_severity)):
            want: dict[str, int] = {}
            for r in window:
                want[r[key]] = want.get(r[key], 0) + 1
            assert counts == want
        assert len(summary.by_day) == 30
        assert summary.by_day["2026-03-10"] == sum(
            1 for r in window if r["timestamp"].date() == date(2026, 3, 10))
        assert sum(summary.by_day.values()) == self.N
        assert orjson.loads(orjson.dumps(summary.to_dict()))["total"] == self.N

    @pytest.mark.anyio
    async def test_records_are_typed_and_serialize_to_json(self, store: Store) -> None:
        rows = await self._seeded(store)
        async with store.session() as db:
            found = await activity_log_crud.get_recent_activities(db, limit=1, request_id="req-0")
        rec = found[0]
        src = next(r for r in rows if r["id"] == rec.id)
        assert rec.timestamp == src["timestamp"]
        assert rec.timestamp.tzinfo is not None
        data = orjson.loads(rec.to_json())
        assert data["id"] == str(src["id"])
        assert data["metadata"] == src["metadata"]
        assert data["changes"] == src["changes"]
        assert data["ip_address"] == src["ip_address"]
        assert ActivityCursor.decode(rec.cursor) == ActivityCursor(rec.timestamp, rec.id)

    @pytest.mark.anyio
    async def test_sequence_report_finds_gaps_and_duplicates(self, store: Store) -> None:
        clean = make_rows(20, producer_id="clean")
        lossy = make_rows(20, producer_id="lossy", skip_seqs=(5, 6, 7, 15))
        dup = make_rows(3, producer_id="lossy", first_seq=2)  # seq 2,3,4 again, other ids
        await self._seeded(store, clean + lossy + dup)
        async with store.session() as db:
            report = {r.producer_id: r for r in await activity_log_crud.get_sequence_report(db)}
        assert report["clean"].missing == 0
        assert report["clean"].gaps == []
        assert report["clean"].rows == 20
        assert report["lossy"].gaps == [(5, 7), (15, 15)]
        assert report["lossy"].missing == 4
        assert report["lossy"].duplicates == 3
        assert report["lossy"].rows == 23

    @pytest.mark.anyio
    async def test_bad_arguments_raise_configuration_error(self, store: Store) -> None:
        await self._seeded(store, [])
        async with store.session() as db:
            with pytest.raises(ConfigurationError, match="limit"):
                await activity_log_crud.get_recent_activities(db, limit=0)
            with pytest.raises(ConfigurationError, match="severity"):
                await activity_log_crud.get_recent_activities(db, severity="loud")
            with pytest.raises(ConfigurationError, match="cursor"):
                await activity_log_crud.get_recent_activities(db, cursor="not-a-cursor")
            with pytest.raises(ConfigurationError, match="before start"):
                await activity_log_crud.get_activities_by_date_range(db, BASE, BASE - timedelta(1))
            assert await activity_log_crud.get_recent_activities(db) == []
            assert await activity_log_crud.get_newest_timestamp(db) is None


# --- bulk seeding in SQL (export tests, benchmarks) ---------------------------------------------

SEED_SQL = """
INSERT INTO activity_logs (id, "timestamp", activity_type, description, severity, level,
    actor_type, actor_id, target_type, target_id, changes, metadata, ip_address, user_agent,
    request_id, http_method, path, logger, hostname, process_id, producer_id, seq)
SELECT gen_random_uuid(), $1::timestamptz + g * $2::interval,
    (ARRAY['call_created','call_ended','agent_login','lead_created'])[1 + g % 4],
    'event ' || g || CASE WHEN g % 97 = 0 THEN ' refund requested' ELSE '' END,
    (ARRAY['debug','info','info','warning','error','critical'])[1 + g % 6],
    (ARRAY[10,20,20,30,40,50])[1 + g % 6],
    'agent', 'agent-' || (g % $3), 'call', 'call-' || (g % 50000),
    CASE WHEN g % 2 = 0 THEN jsonb_build_object('status', jsonb_build_array(NULL, 's' || g)) END,
    jsonb_build_object('i', g, 'queue', 'sales'),
    CASE WHEN g % 4 = 0 THEN '10.0.0.1'::inet END,
    'bench/1.0', 'req-' || (g / 4), 'POST', '/calls', 'activity', 'host1', 42,
    'seed-producer', g
FROM generate_series($5::bigint, $5::bigint + $4::bigint - 1) AS g
"""


async def seed_sql(conn: Any, n: int, *, start: datetime = BASE,
                   step: timedelta = timedelta(seconds=1), actors: int = 500, first: int = 1,
                   chunk: int = 200_000) -> None:
    """Insert ``n`` synthetic rows with ``generate_series`` on the asyncpg ``conn`` (fast)."""
    for offset in range(0, n, chunk):
        await conn.execute(SEED_SQL, start, step, actors, min(chunk, n - offset), first + offset)

