"""The chain in the database: its columns and cut markers' table, the rows ``verify``
reads, and the cut markers retention writes (``chain`` checks, ``signing`` defines the MACs).

Both stores, through SQLAlchemy (``db.read_connection``), except ``ensure_chain_schema_pg``
(DDL on a raw asyncpg connection, as ``db.init_db`` does its own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import ColumnElement, MetaData, Table, Text, and_, cast, func, select

from .config import DEFAULT_TABLE
from .db import has_table, quote_identifier
from .exceptions import ConfigurationError
from .schema import cuts_table_name, make_cuts_table, make_table
from .signing import SIGNING_COLUMNS, KeyRing, cut_mac, loads_exact

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.ext.asyncio import AsyncConnection

#: Rows fetched per round trip while ``verify`` streams a trail.
STREAM_BATCH: Final = 5_000


async def ensure_chain_schema_pg(conn: asyncpg.Connection, *, table: str = DEFAULT_TABLE) -> None:
    """Give an existing ``table`` the chain's columns (``ADD COLUMN IF NOT EXISTS``: nullable,
    no rewrite) and create its cut markers' table; idempotent. A table made by an older
    version is upgraded in place, its rows left unsigned."""
    for column in SIGNING_COLUMNS:
        await conn.execute(f"ALTER TABLE {quote_identifier(table)} "
                           f"ADD COLUMN IF NOT EXISTS {quote_identifier(column)} text")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(cuts_table_name(table))} ("
        "producer_id text PRIMARY KEY, seq bigint NOT NULL, link text NOT NULL, "
        "closed boolean NOT NULL DEFAULT false, "
        "cutoff timestamptz NOT NULL, cut_at timestamptz NOT NULL, key_id text NOT NULL, "
        "mac text NOT NULL)")


def _tables(table: str) -> tuple[Table, Table]:
    metadata = MetaData()
    return make_table(metadata, table), make_cuts_table(metadata, table)


async def stream_rows(conn: AsyncConnection, *, table: str = DEFAULT_TABLE,
                      producer_id: str | None = None, since: datetime | None = None,
                      through_seq: int | None = None) -> AsyncIterator[dict[str, Any]]:
    """Every row with a producer and a ``seq`` (up to ``through_seq``), in
    ``(producer_id, seq, id)`` order, each as a dict of its columns (decoded as the store
    reads them), streamed in batches."""
    t, _ = _tables(table)
    conds: list[ColumnElement[bool]] = [t.c.producer_id.is_not(None), t.c.seq.is_not(None)]
    if producer_id is not None:
        conds.append(t.c.producer_id == producer_id)
    if since is not None:
        conds.append(t.c.timestamp >= since)
    if through_seq is not None:
        conds.append(t.c.seq <= through_seq)
    # jsonb read as its text and decoded here: orjson unless a number needs reading
    # exactly (signing.loads_exact); the driver's stdlib decoder was the largest cost
    columns = [cast(c, Text).label(c.name) if c.name in _JSON_COLUMNS else c
               for c in t.columns]
    stmt = select(*columns).where(*conds).order_by(t.c.producer_id, t.c.seq, t.c.id)
    result = await conn.stream(stmt.execution_options(yield_per=STREAM_BATCH))
    loads = loads_exact
    async for partition in result.mappings().partitions():
        for mapping in partition:
            row = dict(mapping)
            for name in _JSON_COLUMNS:
                text = row[name]
                if text is not None:
                    row[name] = _json_value(text, loads)
            yield row


_JSON_COLUMNS: Final = ("changes", "metadata")


def _json_value(text: str, loads: Any) -> Any:
    try:
        return loads(text)
    except ValueError:  # not JSON (a hand-edited SQLite file): compared as text
        return text


async def load_cuts(conn: AsyncConnection, *, table: str = DEFAULT_TABLE) -> dict[str, dict[str, Any]]:
    """The retention cut markers by producer; empty when the table has none (or no
    markers' table yet: a database ``init-db`` has not upgraded)."""
    _, cuts = _tables(table)
    if not await has_table(conn, cuts.name):
        return {}
    result = await conn.execute(select(cuts))
    return {str(m["producer_id"]): dict(m) for m in result.mappings()}


async def planned_cuts(conn: AsyncConnection, cutoff: datetime, *, table: str = DEFAULT_TABLE
                       ) -> dict[str, tuple[int, str, bool]]:
    """Per producer of a chained trail, the highest ``seq`` among the rows older than
    ``cutoff``, that row's link, and whether it is the producer's closing checkpoint: what
    a cleanup at ``cutoff`` will delete."""
    from .chain import is_checkpoint

    t, _ = _tables(table)
    older = and_(t.c.timestamp < cutoff, t.c.mac.is_not(None), t.c.seq.is_not(None),
                 t.c.producer_id.is_not(None))
    last = (select(t.c.producer_id.label("p"), func.max(t.c.seq).label("s"))
            .where(older).group_by(t.c.producer_id).subquery())
    stmt = (select(t.c.producer_id, t.c.seq, t.c.mac, t.c.activity_type, t.c.logger,
                   t.c.metadata)
            .join(last, and_(t.c.producer_id == last.c.p, t.c.seq == last.c.s))
            .where(older))
    found: dict[str, tuple[int, str, bool]] = {}
    for row in (await conn.execute(stmt)).mappings():
        closed = is_checkpoint(dict(row))[1]
        found.setdefault(str(row["producer_id"]), (int(row["seq"]), str(row["mac"]), closed))
    return found


async def record_cuts(conn: AsyncConnection, cutoff: datetime, keyring: KeyRing | None, *,
                      table: str = DEFAULT_TABLE, now: datetime | None = None) -> int:
    """Write (and commit) the signed cut markers for a cleanup at ``cutoff``, before it
    deletes anything; returns how many producers' markers moved.

    A marker only moves forward (a producer's highest deleted ``seq``). Raises
    ``ConfigurationError`` when rows of a chained trail would be deleted and there is no
    key to sign the marker: ``verify`` would then read the deletion as tampering.
    """
    planned = await planned_cuts(conn, cutoff, table=table)
    if not planned:
        return 0
    if keyring is None:
        raise ConfigurationError(
            f"the trail is signed: cleanup must write a signed cut marker for {len(planned)} "
            "producer(s) and needs the signing key (ACTIVITY_LOG_SIGNING_KEY, or "
            "ACTIVITY_LOG_SIGNING_KEY_FILE naming a key file)")
    _, cuts = _tables(table)
    if not await has_table(conn, cuts.name):
        raise ConfigurationError(
            f"table {cuts.name!r} is missing: run `activity-logging init-db` to upgrade the schema")
    existing = await load_cuts(conn, table=table)
    await _verify_before_cut(conn, planned, existing, keyring, table=table)
    key = keyring.current
    cut_at = (now or datetime.now(UTC)).astimezone(UTC)
    moved = 0
    for producer, (seq, link, closed) in sorted(planned.items()):
        old = existing.get(producer)
        if old is not None and int(old["seq"]) >= seq:
            continue
        marker: dict[str, Any] = {"producer_id": producer, "seq": seq, "link": link,
                                  "closed": closed, "cutoff": cutoff, "cut_at": cut_at,
                                  "key_id": key.key_id}
        marker["mac"] = cut_mac(key, marker)
        if old is None:
            await conn.execute(cuts.insert().values(**marker))
        else:
            await conn.execute(cuts.update().where(cuts.c.producer_id == producer).values(**marker))
        moved += 1
    await conn.commit()
    return moved



#: Rows ``status`` reads to say whether the trail is signed (the newest, by timestamp).
AUTH_SAMPLE: Final = 1_000


async def recent_authentication(conn: AsyncConnection, *, table: str = DEFAULT_TABLE,
                                sample: int = AUTH_SAMPLE) -> tuple[int, int, list[str]]:
    """Of the newest ``sample`` rows: (rows read, rows sealed, the key ids that sealed
    them). One index scan on ``timestamp``; it checks no seal (``verify`` does)."""
    t, _ = _tables(table)
    newest = (select(t.c.row_mac, t.c.key_id).order_by(t.c.timestamp.desc()).limit(sample)
              .subquery())
    total, sealed = (await conn.execute(
        select(func.count(), func.count(newest.c.row_mac)))).one()
    keys = [str(k) for (k,) in await conn.execute(
        select(newest.c.key_id).where(newest.c.row_mac.is_not(None)).distinct()
        .order_by(newest.c.key_id))]
    return int(total), int(sealed), keys


async def unchained_rows(conn: AsyncConnection, *, table: str = DEFAULT_TABLE,
                         since: datetime | None = None, limit: int = 20
                         ) -> tuple[int, list[tuple[str, datetime]]]:
    """Rows without a producer or a ``seq`` (no producer of this library writes one): how
    many, and the first ``limit`` (id, timestamp) by time. On a signed trail each is a row
    made behind the library's back."""
    t, _ = _tables(table)
    cond: ColumnElement[bool] = t.c.producer_id.is_(None) | t.c.seq.is_(None)
    if since is not None:
        cond = and_(cond, t.c.timestamp >= since)
    total = int((await conn.execute(select(func.count()).where(cond))).scalar_one())
    first = [(str(i), ts) for i, ts in await conn.execute(
        select(t.c.id, t.c.timestamp).where(cond).order_by(t.c.timestamp, t.c.id).limit(limit))]
    return total, first


async def _verify_before_cut(conn: AsyncConnection, planned: dict[str, tuple[int, str, bool]],
                             existing: dict[str, dict[str, Any]], keyring: KeyRing, *,
                             table: str) -> None:
    """Refuse to sign a cut over rows that do not verify: deleting them would destroy the
    evidence (a row backdated so that retention takes it, a forged row with a far seq to
    carry the marker ahead). ``ConfigurationError`` naming the first problem."""
    from .chain import ChainVerifier

    for producer, (seq, _, _) in sorted(planned.items()):
        verifier = ChainVerifier(keyring=keyring, cuts=existing, now=datetime.now(UTC),
                                 open_grace=float("inf"), max_problems=1)
        async for row in stream_rows(conn, table=table, producer_id=producer, through_seq=seq):
            verifier.feed(row)
        problems = [p for report in verifier.finish() for p in report.problems]
        if problems:
            first = problems[0]
            raise ConfigurationError(
                f"cleanup would delete rows of producer {producer!r} that do not verify "
                f"({first.kind} at seq {first.seq}: {first.detail}); nothing was deleted: run "
                "`activity-logging verify`, and remove the tampered rows' evidence only "
                "after investigating")
