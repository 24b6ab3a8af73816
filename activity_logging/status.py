"""Pipeline health: what ``activity-logging status`` reports, gathered in one pass.

Replaces the checks operators did by hand (stream length, grepping worker logs, counting
recent rows). Healthy means: at least one live worker (when a Redis stream is in use), no
dead letters, no record waiting in the stream longer than ``max_lag`` seconds, nothing lost
in transit, and the table reachable. Redis settings that can lose the stream (no AOF, an
evicting ``maxmemory-policy``) are warnings, not failures (see DESIGN.md).

"Waiting" is measured from the stream itself: entry ids carry their creation time in
milliseconds, so the age of the oldest entry not yet acknowledged (pending with a consumer,
or not yet delivered) is exactly how far behind the worker is, whatever the traffic.

"Lost in transit" is read from what the stores themselves report:

* The stream. Redis 7 counts, per consumer group, the entries it has read
  (``entries-read``) against those ever added (``entries-added``); the difference is the
  group's ``lag``. The worker deletes an entry only once it was delivered and stored, so
  every entry the group has not read is still in the stream: a ``lag`` above the stream's
  length means entries went before anyone read them (``XTRIM``, ``XADD MAXLEN``). An
  ``XDEL`` ahead of the group shows as a ``max-deleted-entry-id`` past its
  ``last-delivered-id``. Both are read in one ``MULTI``, so the worker cannot move between.
* Redis restarts. A worker that finds its group gone recreates it and says so in its
  heartbeat (``group_recreated``); ``INFO server`` says when Redis last started.
* The stored rows. Each handler numbers its records (``producer_id``, ``seq``), so a seq
  missing between two stored ones of a producer is a lost record. ``recent_sequence_gaps``
  counts them among the newest rows (the last hour, at most ``GAP_MAX_ROWS``), which also
  counts what a restart took once the producers log again.

Four modules, one job each: this one (``PipelineStatus``, the database half and
``gather_status``, which runs the rest in order), ``status_redis`` (reading Redis),
``status_findings`` (what the Redis readings mean) and ``status_render`` (the text
report); the public names are importable from here. SQLAlchemy and redis are imported
inside the functions that talk to the stores: the constants here (``DEFAULT_MAX_LAG``)
are read by modules that must stay light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from .config import DEFAULT_GROUP, DEFAULT_HEARTBEAT_TTL, DEFAULT_STREAM, dead_stream_for
from .shards import resolve_shards
from .status_findings import judge_redis
from .status_redis import ConsumerInfo, WorkerInfo, entry_ms, gather_redis, plural
from .status_render import render_status, window_text
from .status_shards import shard_summaries
from .urls import redact_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

DEFAULT_MAX_LAG: Final = 300.0
#: How far back the sequence check reads stored rows (seconds) ...
GAP_WINDOW: Final = 3600.0
#: ... and at most how many of the newest, so it stays cheap on a busy table.
GAP_MAX_ROWS: Final = 100_000
#: Only rows older than this (seconds, before the oldest entry still in the stream) may
#: close a gap: a record that left its handler later can still be in flight behind one
#: stored out of order (two workers, a claimed entry), which is not a loss.
DEFAULT_GAP_SETTLE: Final = 5.0
#: Rows this close to the window's lower edge (seconds, at most a quarter of the window)
#: only fill gaps, never open them: a record created just before the edge can carry a
#: later seq than one created just after it (threads enqueue in their own order).
GAP_EDGE: Final = 60.0


@dataclass(frozen=True, slots=True)
class SequenceGaps:
    """What the sequence check found among the newest stored rows.

    ``rows`` rows were read, going back ``window_seconds`` (less than asked when ``capped``
    by the row limit); ``producers`` of their producers had a range to compare, and
    ``gap_producers`` of those miss ``missing`` seq numbers in total.
    """

    rows: int
    producers: int
    missing: int
    gap_producers: int
    window_seconds: float
    capped: bool


@dataclass(slots=True)
class PipelineStatus:
    """Everything ``status`` shows. ``problems`` make it unhealthy; ``warnings`` do not.

    ``lost_in_transit`` is the loss found, in ``lost_in_transit_unit``: ``"records"``
    (sequence gaps among recent rows) when the rows show it, else ``"entries"`` (stream
    entries removed unread: how many records they carried is gone with them); 0 when the
    checks that could run found nothing, None when none could run.
    """

    checked_at: datetime
    database_url: str
    redis_url: str | None = None
    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    dead_stream: str = ""
    #: ``stream_shards`` the check was given; with more than one, ``shards`` holds each
    #: shard's readings and findings (``status_shards``) and the stream fields are totals
    stream_shards: int = 1
    shards: list[PipelineStatus] = field(default_factory=list)
    stream_length: int | None = None
    group_exists: bool | None = None
    undelivered: int | None = None
    pending: int | None = None
    oldest_waiting_seconds: float | None = None
    consumers: list[ConsumerInfo] = field(default_factory=list)
    #: Rows of ``activity_log_dead_letters`` (what the worker refused), and of the last 24 h.
    dead_letters: int | None = None
    dead_letters_last_24h: int | None = None
    workers: list[WorkerInfo] = field(default_factory=list)
    redis_settings: dict[str, str] = field(default_factory=dict)
    newest_activity: datetime | None = None
    newest_activity_age_seconds: float | None = None
    rows_last_24h: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    redis_run_id: str | None = None
    redis_uptime_seconds: int | None = None
    redis_version: str | None = None
    redis_keys_loaded_at_start: int | None = None
    last_generated_id: str | None = None
    entries_added: int | None = None
    entries_read: int | None = None
    lag: int | None = None
    last_delivered_id: str | None = None
    max_deleted_entry_id: str | None = None
    first_entry_id: str | None = None
    stream_entries_lost: int | None = None
    group_recreated: int = 0
    recent_sequence: SequenceGaps | None = None
    lost_in_transit: int | None = None
    lost_in_transit_unit: str | None = None
    #: Of the newest rows (``chain_store.AUTH_SAMPLE``): how many were read, how many are
    #: sealed, and by which key ids. None when the table could not say (an older table).
    auth_rows: int | None = None
    auth_sealed: int | None = None
    auth_keys: list[str] = field(default_factory=list)

    @property
    def authentication(self) -> str:
        """``"signed"``, ``"unauthenticated"``, ``"partly signed"``, or ``"unknown"``."""
        if self.auth_rows is None:
            return "unknown"
        if not self.auth_rows or not self.auth_sealed:
            return "unauthenticated"
        return "signed" if self.auth_sealed == self.auth_rows else "partly signed"

    @property
    def healthy(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def live_workers(self) -> int:
        """How many workers have a recent heartbeat."""
        return sum(1 for w in self.workers if w.live)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``--json``)."""
        out = asdict(self)
        out["shards"] = shard_summaries(self)
        out["checked_at"] = self.checked_at.isoformat()
        out["newest_activity"] = self.newest_activity.isoformat() if self.newest_activity else None
        out["healthy"] = self.healthy
        out["live_workers"] = self.live_workers
        out["authentication"] = self.authentication
        return out


# --- the store ---------------------------------------------------------------------------------


async def recent_sequence_gaps(
    conn: AsyncConnection,
    *,
    now: datetime,
    settled_before: datetime,
    window: float = GAP_WINDOW,
    max_rows: int = GAP_MAX_ROWS,
) -> SequenceGaps:
    """Count seq numbers missing per producer among the newest stored rows.

    Reads the rows of the last ``window`` seconds, at most the ``max_rows`` newest (the
    timestamp index serves both bounds, so the cost follows ``max_rows``, not the table).
    Per producer, seqs are compared only inside a range the rows themselves vouch for: from
    its lowest seq away from the window's lower edge (``GAP_EDGE``) to its highest seq
    created before ``settled_before``. Rows outside that range still fill gaps inside it.
    One aggregate pass settles every producer without a gap anywhere in the window; only
    the others are counted exactly, in a second query. Works on PostgreSQL and SQLite;
    raises what the database raises.
    """
    from sqlalchemy import case, func, select

    from .crud import as_utc
    from .schema import activity_logs as t

    since = now - timedelta(seconds=window)
    newest = (select(t.c.timestamp.label("ts")).where(t.c.timestamp >= since)
              .order_by(t.c.timestamp.desc()).limit(max_rows).subquery())
    oldest, rows = (await conn.execute(
        select(func.min(newest.c.ts), func.count()).select_from(newest))).one()
    if not rows:
        return SequenceGaps(0, 0, 0, 0, window, False)
    capped = rows >= max_rows
    start = as_utc(oldest) if capped and isinstance(oldest, datetime) else since
    span = max((now - start).total_seconds(), 0.0)
    core_from = start + timedelta(seconds=min(GAP_EDGE, span / 4))
    in_window = (t.c.timestamp >= start, t.c.producer_id.is_not(None), t.c.seq.is_not(None))
    per_producer = await conn.execute(
        select(t.c.producer_id,
               func.min(case((t.c.timestamp >= core_from, t.c.seq))),
               func.max(case((t.c.timestamp < settled_before, t.c.seq))),
               func.max(t.c.seq) - func.min(t.c.seq) + 1 - func.count(t.c.seq.distinct()))
        .where(*in_window).group_by(t.c.producer_id))
    ranges: dict[str, tuple[int, int]] = {}
    gapped: list[str] = []
    for producer, lo, hi, missing_anywhere in per_producer:
        if lo is None or hi is None or lo > hi:
            continue  # no seq both away from the edge and settled: nothing to compare
        ranges[producer] = (int(lo), int(hi))
        if missing_anywhere and int(hi) - int(lo) > 1:
            gapped.append(producer)
    missing = await _missing_in_ranges(conn, in_window, {p: ranges[p] for p in gapped})
    return SequenceGaps(rows=int(rows), producers=len(ranges), missing=sum(missing.values()),
                        gap_producers=sum(1 for m in missing.values() if m > 0),
                        window_seconds=round(span, 3), capped=capped)


async def _missing_in_ranges(
    conn: AsyncConnection, in_window: tuple[Any, ...], ranges: dict[str, tuple[int, int]],
    chunk: int = 100,
) -> dict[str, int]:
    """Exact missing seqs per producer inside its (lo, hi), a few producers per query."""
    from sqlalchemy import and_, func, or_, select

    from .schema import activity_logs as t

    out: dict[str, int] = {}
    items = list(ranges.items())
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        present = await conn.execute(
            select(t.c.producer_id, func.count(t.c.seq.distinct()))
            .where(*in_window, or_(*(and_(t.c.producer_id == p, t.c.seq.between(lo, hi))
                                     for p, (lo, hi) in part)))
            .group_by(t.c.producer_id))
        counts = {p: int(n) for p, n in present}
        for p, (lo, hi) in part:
            out[p] = hi - lo + 1 - counts.get(p, 0)
    return out


def _settled_before(status: PipelineStatus, settle: float) -> datetime:
    """Rows created before this may close a gap: ``settle`` seconds before the check began,
    or before the oldest entry still in the stream (what is in it can still arrive)."""
    base = status.checked_at
    if status.first_entry_id is not None:
        base = min(base, datetime.fromtimestamp(entry_ms(status.first_entry_id) / 1000, UTC))
    return base - timedelta(seconds=settle)


async def gather_database(
    status: PipelineStatus, url: str, *, schema: str | None,
    gap_settle: float = DEFAULT_GAP_SETTLE,
) -> None:
    """Fill the newest-activity, its age, the rows of the last 24 hours and the sequence check.

    Raises ``StoreUnavailableError`` when the database cannot be reached; a missing table
    (SQLSTATE 42P01, SQLite "no such table") is a problem, not an error. Any other database
    error (a missing database, schema or column) is raised, to be reported as it is.
    """
    from sqlalchemy.exc import DBAPIError

    from .crud import ActivityFilter, activity_log_crud
    from .db import is_missing_table, read_connection

    try:
        async with read_connection(url, schema=schema) as conn:
            newest = await activity_log_crud.get_newest_timestamp(conn)
            day = ActivityFilter(start=status.checked_at - timedelta(days=1))
            status.rows_last_24h = await activity_log_crud.count(conn, day)
            status.recent_sequence = await recent_sequence_gaps(
                conn, now=status.checked_at, settled_before=_settled_before(status, gap_settle))
            await _gather_dead_letters(status, conn)
            await _gather_authentication(status, conn)
    except DBAPIError as exc:
        if is_missing_table(exc):
            status.problems.append(
                "table activity_logs does not exist: run `activity-logging init-db`")
            return
        raise
    status.newest_activity = newest
    if newest is not None:
        status.newest_activity_age_seconds = round(
            (status.checked_at - newest).total_seconds(), 3)
    _sequence_problem(status)


async def _gather_dead_letters(status: PipelineStatus, conn: Any) -> None:
    """Count the dead letters (the table the worker writes; none yet before its first).
    One written in the last 24 hours is a problem: records were refused recently; older
    ones are a warning until they are purged (``dead-letters purge``)."""
    from sqlalchemy import func, select

    from .db import has_table
    from .dead_letters import dead_letters

    if not await has_table(conn, dead_letters.name):
        return
    recent = status.checked_at - timedelta(days=1)
    total, last_day = (await conn.execute(select(
        func.count(), func.count().filter(dead_letters.c.dead_at >= recent)))).one()
    status.dead_letters, status.dead_letters_last_24h = int(total), int(last_day)
    if last_day:
        status.problems.append(
            f"{last_day} dead letter(s) in the last 24 h ({total} in all): records the worker "
            "refused or could not store (`activity-logging dead-letters list`)")
    elif total:
        status.warnings.append(
            f"{total} dead letter(s), none in the last 24 h: look at them with "
            "`activity-logging dead-letters list`, then `dead-letters purge`")


async def _gather_authentication(status: PipelineStatus, conn: Any) -> None:
    """Whether the newest rows are sealed (signing.py). A table made before the chain
    columns existed says nothing (``unknown``, and a warning naming the fix)."""
    from sqlalchemy.exc import DBAPIError

    from .chain_store import recent_authentication

    try:  # the block's last statement: a failure here leaves nothing else undone
        rows, sealed, keys = await recent_authentication(conn)
    except DBAPIError:
        status.warnings.append("the table has no chain columns (made by an older version): "
                               "run `activity-logging init-db` to add them")
        return
    status.auth_rows, status.auth_sealed, status.auth_keys = rows, sealed, keys
    if sealed and sealed < rows:
        status.warnings.append(
            f"{rows - sealed} of the newest {rows} rows are not sealed: a producer or a worker "
            "runs without the signing key (`activity-logging verify` names them)")


def _sequence_problem(status: PipelineStatus) -> None:
    gaps = status.recent_sequence
    if gaps is None or not gaps.missing:
        return
    hints = []
    if status.group_recreated:
        hints.append("a worker recreated the consumer group: Redis lost the stream")
    if status.dead_letters:
        hints.append("dead-lettered records are counted here too")
    status.problems.append(
        f"{plural(gaps.missing, 'record', 'records')} missing in transit from "
        f"{plural(gaps.gap_producers, 'producer', 'producers')} in {window_text(gaps)}"
        + (f" ({'; '.join(hints)})" if hints else "") + ": run `activity-logging verify`"
    )


def _summarize_loss(status: PipelineStatus) -> None:
    gaps = status.recent_sequence
    if gaps is not None and gaps.missing:
        status.lost_in_transit, status.lost_in_transit_unit = gaps.missing, "records"
    elif status.stream_entries_lost:
        status.lost_in_transit, status.lost_in_transit_unit = status.stream_entries_lost, "entries"
    elif gaps is not None or status.stream_entries_lost is not None:
        status.lost_in_transit = 0


async def gather_status(
    database_url: str,
    redis_url: str | None = None,
    *,
    schema: str | None = None,
    stream: str = DEFAULT_STREAM,
    stream_shards: int | None = None,
    group: str = DEFAULT_GROUP,
    max_lag: float = DEFAULT_MAX_LAG,
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL,
    gap_settle: float = DEFAULT_GAP_SETTLE,
) -> PipelineStatus:
    """Check the whole pipeline once. Without ``redis_url`` (embedded mode) only the store.

    Redis is read before the database, so the sequence check knows what may still be in
    flight (``gap_settle``: see ``DEFAULT_GAP_SETTLE``). Raises ``StoreUnavailableError``
    when Redis or the database cannot be reached. ``stream_shards`` is what the producers
    and workers were given (default ``ACTIVITY_LOG_STREAM_SHARDS``, else 1): each shard is
    read and judged, and the stream fields hold the totals.
    """
    status = PipelineStatus(
        checked_at=datetime.now(UTC), database_url=redact_url(database_url),
        redis_url=redact_url(redis_url) if redis_url else None, stream=stream, group=group,
        dead_stream=dead_stream_for(stream), stream_shards=resolve_shards(stream_shards),
    )
    if redis_url:
        await gather_redis(status, redis_url, heartbeat_ttl=heartbeat_ttl)
        judge_redis(status, heartbeat_ttl=heartbeat_ttl, max_lag=max_lag)
    await gather_database(status, database_url, schema=schema, gap_settle=gap_settle)
    _summarize_loss(status)
    return status


__all__ = [
    "DEFAULT_GAP_SETTLE",
    "DEFAULT_MAX_LAG",
    "GAP_MAX_ROWS",
    "GAP_WINDOW",
    "ConsumerInfo",
    "PipelineStatus",
    "SequenceGaps",
    "WorkerInfo",
    "gather_status",
    "recent_sequence_gaps",
    "render_status",
]
