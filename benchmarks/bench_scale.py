"""Scaling benchmark: 1 vs 2 worker processes draining one backlog, and CPU per record per tier.

    .venv/bin/python benchmarks/bench_scale.py [--records 400000] [--pairs 3] [--json out.json]

Each run fills a fresh stream with ``--records`` records logged through the real
``ActivityHandler`` (a producer subprocess; default settings, logged in chunks with a flush
between them so nothing is dropped), into a fresh ``activity_logs`` table in a throwaway
schema. Then 1 or 2 ``activity-logging worker --exit-when-idle`` processes (the CLI, one
consumer group) drain it. Runs alternate 1, 2, 1, 2, ... so the ratio is measured side by side.

Measured in the same runs:

- drain time: from the first entry read to the group having read every entry with nothing
  pending (``XINFO GROUPS``, polled every 20 ms); then the table is checked: ``count(*)`` and
  ``count(DISTINCT id)`` equal the records, nothing pending, no dead letters.
- handler CPU: ``os.times()`` (user + sys, every thread: caller and listener) of the producer
  around the ActivityHandler loop, minus the same loop through a ``NullHandler`` in the same
  process (``logging`` itself).
- worker CPU: ``os.wait4`` rusage of each worker process, minus the CPU of a worker that
  starts, finds an empty stream and exits (its fixed start-up cost, measured up front).
- PostgreSQL CPU: utime + stime (``/proc``) of the backends serving the workers (found by
  the ``application_name`` put in the workers' database URL, read every 20 ms while they
  live), plus the WAL writer, checkpointer and background writer over the drain
  (``postgres_aux``; shared with other users). For reference, every ``postgres`` process
  (exited backends land in the postmaster's cutime) net of the idle background.
- Redis CPU: ``INFO cpu`` ``used_cpu_user + used_cpu_sys`` (and the main thread's) over the
  fill and over the drain.
- bytes per record: the stream's ``MEMORY USAGE``, the WAL the server wrote during the drain,
  the table with its indexes on disk.

``--handler-batch-size 10`` makes the stream entries small (as a producer logging ~200
records/s ships them), which separates the per-entry cost from the per-record one.

The servers are shared: before each run their CPU is sampled over an idle window and that
background rate, times the window measured, is subtracted (both figures are reported).
Needs the real Redis and PostgreSQL (TEST_REDIS_URL / TEST_DATABASE_URL). Run on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from activity_logging import db  # noqa: E402  (after the path insert, as the other benchmarks)
from activity_logging.config import dead_stream_for, heartbeat_pattern  # noqa: E402
from activity_logging.urls import asyncpg_dsn  # noqa: E402
from benchmarks.bench_handler import EXTRA, make_logger  # noqa: E402  (the same records)

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
GROUP = "activity_log_workers"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the producer (run as `bench_scale.py produce ...` in its own process) ---------------------


def cpu_self() -> float:
    t = os.times()
    return t.user + t.system




def produce(stream: str, records: int, chunk: int, batch_size: int) -> dict[str, Any]:
    """Log ``records`` through a NullHandler, then through an ActivityHandler; CPU of each."""
    from activity_logging.handler import ActivityHandler

    null_log = make_logger("bench.scale.null", logging.NullHandler())
    start, wall = cpu_self(), time.perf_counter()
    for _ in range(records):
        null_log.info("call_created", extra=EXTRA)
    null_cpu, null_wall = cpu_self() - start, time.perf_counter() - wall

    handler = (ActivityHandler(redis_url=REDIS_URL, stream=stream, batch_size=batch_size)
               if batch_size else ActivityHandler(redis_url=REDIS_URL, stream=stream))
    log = make_logger("bench.scale.activity", handler)
    start, wall = cpu_self(), time.perf_counter()
    flushed = True
    for first in range(0, records, chunk):
        for _ in range(min(chunk, records - first)):
            log.info("call_created", extra=EXTRA)
        flushed = handler.flush(120) and flushed  # the listener's work is inside the window
    activity_cpu, activity_wall = cpu_self() - start, time.perf_counter() - wall
    stats = handler.stats()
    handler.close()
    lost = {k: v for k, v in stats.items() if k.startswith(("dropped_", "lost_")) and v}
    return {"records": records, "flushed": flushed, "sent": stats["sent"], "lost": lost,
            "null_cpu_s": null_cpu, "null_wall_s": null_wall,
            "activity_cpu_s": activity_cpu, "activity_wall_s": activity_wall}


# --- CPU counters of the servers ---------------------------------------------------------------


def proc_cpu(pid: int) -> float | None:
    """utime + stime of process ``pid`` in seconds, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def each_process(name: str) -> Iterator[tuple[int, str]]:
    """(pid, text of ``/proc/<pid>/<name>``) for every process still there when read (one
    gone meanwhile is skipped: its time is in its parent's cutime by then)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        yield int(pid), text


def cpu_postgres() -> float:
    """CPU seconds of every process named ``postgres`` (own time + reaped children's)."""
    total = 0
    for _, stat in each_process("stat"):
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if comm != "postgres":
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


AUX = ("walwriter", "checkpointer", "background writer")


def cpu_postgres_aux() -> float:
    """CPU seconds of PostgreSQL's WAL writer, checkpointer and background writer."""
    total = 0.0
    for pid, cmdline in each_process("cmdline"):
        if cmdline.startswith("postgres:") and cmdline.rstrip("\0 ").endswith(AUX):
            total += proc_cpu(pid) or 0.0
    return total


def cpu_redis(client: redis.Redis) -> tuple[float, float]:
    """(all threads, main thread) CPU seconds of the Redis server."""
    info: dict[str, Any] = client.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"]))


@dataclass
class Servers:
    """A reading of the servers' CPU counters, and when it was taken."""

    pg: float
    pg_aux: float
    rds: float
    rds_main: float
    at: float

    @classmethod
    def read(cls, client: redis.Redis) -> Servers:
        r, main = cpu_redis(client)
        return cls(cpu_postgres(), cpu_postgres_aux(), r, main, time.perf_counter())


@dataclass
class Background:
    """The servers' idle CPU rate (CPU s per s), from other users of the shared servers."""

    pg: float
    rds: float

    @classmethod
    def sample(cls, client: redis.Redis, seconds: float) -> Background:
        a = Servers.read(client)
        time.sleep(seconds)
        b = Servers.read(client)
        span = b.at - a.at
        return cls((b.pg - a.pg) / span, (b.rds - a.rds) / span)


# --- workers ------------------------------------------------------------------------------------


def worker_cmd(stream: str, schema: str, consumer: str, database_url: str = PG_URL) -> list[str]:
    return [sys.executable, "-m", "activity_logging", "--log-level", "WARNING", "worker",
            "--redis-url", REDIS_URL, "--database-url", database_url, "--schema", schema,
            "--stream", stream, "--group", GROUP, "--consumer", consumer, "--exit-when-idle"]


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ACTIVITY_LOG_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env["PYTHONPATH"] = ROOT
    return env


def reap(proc: subprocess.Popen[bytes], *, block: bool = True) -> float | None:
    """Reap ``proc`` (``os.wait4``: Popen.poll would reap it and lose its rusage); its CPU
    seconds (user + sys), or None when ``block`` is false and it is still running. Raises if
    it failed."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def startup_cpu(client: redis.Redis, schema: str, repeat: int) -> tuple[float, float]:
    """Median (CPU s, wall s) of a worker that starts, finds an empty stream and exits."""
    cpus, walls = [], []
    for i in range(repeat):
        stream = f"bench_scale:{schema}:empty{i}"
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(worker_cmd(stream, schema, "empty"), env=worker_env())
            cpu = reap(proc)
            assert cpu is not None
            cpus.append(cpu)
            walls.append(time.perf_counter() - start)
        finally:
            cleanup_stream(client, stream)
    return statistics.median(cpus), statistics.median(walls)


def group_state(client: redis.Redis, stream: str) -> dict[str, Any] | None:
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    return next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)


def drain(client: redis.Redis, stream: str, schema: str, workers: int, entries: int,
          limit_s: float) -> dict[str, Any]:
    """Start ``workers`` CLI workers on the backlog; time it and return their CPU and that of
    the PostgreSQL backends serving them (found by application_name, read from /proc every
    20 ms while they live: a backend's last few ms before it exits are missed)."""
    app = f"bench_scale_{uuid.uuid4().hex[:8]}"
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}application_name={app}"
    spawned = time.perf_counter()
    procs = [subprocess.Popen(worker_cmd(stream, schema, f"bench-{i}", url), env=worker_env())
             for i in range(workers)]
    cpus: dict[int, float] = {}
    try:
        watched = asyncio.run(watch(client, stream, procs, cpus, app, entries, spawned + limit_s))
        for p in procs:
            if p.pid not in cpus:
                cpus[p.pid] = reap(p) or 0.0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
    return {**watched, "spawn_to_exit_s": time.perf_counter() - spawned,
            "worker_cpu_s": sum(cpus.values()),
            "worker_cpu_each_s": [round(cpus[p.pid], 2) for p in procs]}


async def watch(client: redis.Redis, stream: str, procs: list[subprocess.Popen[bytes]],
                cpus: dict[int, float], app: str, entries: int, deadline: float) -> dict[str, float]:
    """Poll until the group has read every entry and has nothing pending; reap the workers
    that exit meanwhile into ``cpus``. The drain time and the backends' CPU."""
    monitor = await asyncpg.connect(asyncpg_dsn(PG_URL))
    first_read = done = nothing_read = None
    backends: dict[int, float] = {}
    discovered = 0.0
    try:
        while done is None:
            for p in procs:
                if p.pid not in cpus and (cpu := reap(p, block=False)) is not None:
                    cpus[p.pid] = cpu
            now = time.perf_counter()
            if now - discovered > 0.2:
                discovered = now
                for row in await monitor.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app):
                    backends.setdefault(int(row["pid"]), 0.0)
            for pid in backends:
                backends[pid] = proc_cpu(pid) or backends[pid]
            state = group_state(client, stream)
            now = time.perf_counter()
            if state is not None:
                read = int(state.get("entries-read") or 0)
                if read == 0:
                    nothing_read = now  # the drain began after this poll
                if first_read is None and read > 0:
                    first_read = now
                if read >= entries and int(state["pending"]) == 0:
                    done = now
            if done is None and (len(cpus) == len(procs) or now > deadline):
                raise RuntimeError(f"drain not finished ({len(cpus)} workers exited): {state}")
            await asyncio.sleep(0.02)
        for pid in backends:
            backends[pid] = proc_cpu(pid) or backends[pid]
    finally:
        await monitor.close()
    assert first_read is not None
    # From the last poll that saw nothing read (an upper bound, by one poll interval at most):
    # a drain that began and ended between two polls still takes a time above zero.
    start = nothing_read if nothing_read is not None else first_read - 0.02
    return {"drain_s": done - start, "backend_cpu_s": sum(backends.values()),
            "backends": len(backends)}


# --- one run --------------------------------------------------------------------------------------


async def pg_execute(sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def table_counts(schema: str) -> tuple[int, int, int]:
    """Rows, distinct ids, and bytes on disk of the table with its indexes."""
    conn = await db.connect_pg(PG_URL, schema=schema)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT id) AS d, "
            "pg_total_relation_size('activity_logs') AS b FROM activity_logs")
        return int(row["n"]), int(row["d"]), int(row["b"])
    finally:
        await conn.close()


async def wal_lsn() -> str:
    conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
    try:
        return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
    finally:
        await conn.close()


async def wal_bytes_since(lsn: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(PG_URL))
    try:
        return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn))
    finally:
        await conn.close()


def cleanup_stream(client: redis.Redis, stream: str) -> None:
    keys = [stream, dead_stream_for(stream), *client.scan_iter(match=heartbeat_pattern(stream))]
    client.delete(*keys)


@dataclass
class Run:
    workers: int
    records: int
    entries: int = 0
    stream_bytes_per_record: float = 0.0  # MEMORY USAGE of the filled stream / records
    wal_bytes_per_record: float = 0.0  # WAL written by the server during the drain / records
    table_bytes_per_record: float = 0.0  # table + indexes on disk / records
    fill_wall_s: float = 0.0
    drain_s: float = 0.0
    spawn_to_exit_s: float = 0.0
    rows_per_s: float = 0.0
    worker_cpu_each_s: list[float] = field(default_factory=list)  # start-up included
    cores_busy: float = 0.0  # worker + PostgreSQL + Redis CPU during the drain / drain time
    us: dict[str, float] = field(default_factory=dict)       # CPU µs per record, net
    us_raw: dict[str, float] = field(default_factory=dict)   # before subtracting background
    background: dict[str, float] = field(default_factory=dict)


def one_run(client: redis.Redis, workers: int, records: int, chunk: int, startup: float,
            idle: float, handler_batch: int) -> Run:
    schema = f"bench_scale_{uuid.uuid4().hex[:8]}"
    stream = f"bench_scale:{schema}"
    run = Run(workers, records)
    asyncio.run(pg_execute(f'CREATE SCHEMA "{schema}"'))
    try:
        asyncio.run(db.init_db(PG_URL, schema=schema))
        bg = Background.sample(client, idle)
        run.background = {"pg_cpu_per_s": bg.pg, "redis_cpu_per_s": bg.rds}
        s0 = Servers.read(client)
        out = subprocess.run(
            [sys.executable, __file__, "produce", "--stream", stream, "--records", str(records),
             "--chunk", str(chunk), "--batch-size", str(handler_batch)],
            env=worker_env(), check=True, capture_output=True)
        fill = json.loads(out.stdout)
        s1 = Servers.read(client)
        if fill["sent"] != records or fill["lost"] or not fill["flushed"]:
            raise RuntimeError(f"producer did not ship everything: {fill}")
        run.entries = int(client.xlen(stream))
        run.stream_bytes_per_record = int(client.memory_usage(stream, samples=0) or 0) / records
        run.fill_wall_s = fill["activity_wall_s"]
        lsn = asyncio.run(wal_lsn())
        d = drain(client, stream, schema, workers, run.entries, limit_s=600)
        run.wal_bytes_per_record = asyncio.run(wal_bytes_since(lsn)) / records  # the whole server's
        s2 = Servers.read(client)
        run.drain_s, run.spawn_to_exit_s = d["drain_s"], d["spawn_to_exit_s"]
        run.rows_per_s = records / run.drain_s
        run.worker_cpu_each_s = d["worker_cpu_each_s"]
        # Correctness: every record stored exactly once, nothing pending, nothing dead-lettered.
        rows, distinct, size = asyncio.run(table_counts(schema))
        run.table_bytes_per_record = size / records
        pending = int(client.xpending(stream, GROUP)["pending"])
        dead = int(client.xlen(dead_stream_for(stream)))
        if (rows, distinct, pending, dead) != (records, records, 0, 0):
            raise RuntimeError(f"drain incomplete: rows={rows} distinct={distinct} "
                               f"pending={pending} dead={dead} of {records}")
        per = 1e6 / records
        raw = {
            "handler": (fill["activity_cpu_s"] - fill["null_cpu_s"]) * per,
            "handler_with_logging": fill["activity_cpu_s"] * per,
            "logging_null": fill["null_cpu_s"] * per,
            "worker": (d["worker_cpu_s"] - workers * startup) * per,
            "postgres": d["backend_cpu_s"] * per,
            "postgres_aux": (s2.pg_aux - s1.pg_aux) * per,
            "postgres_all_processes": (s2.pg - s1.pg) * per,
            "redis_fill": (s1.rds - s0.rds) * per,
            "redis_drain": (s2.rds - s1.rds) * per,
            "redis_main_thread": (s2.rds_main - s0.rds_main) * per,
            "postgres_during_fill": (s1.pg - s0.pg) * per,
        }
        run.us_raw = raw
        net = dict(raw)
        net["postgres_all_processes"] -= bg.pg * (s2.at - s1.at) * per
        net["postgres_during_fill"] -= bg.pg * (s1.at - s0.at) * per
        net["redis_fill"] -= bg.rds * (s1.at - s0.at) * per
        net["redis_drain"] -= bg.rds * (s2.at - s1.at) * per
        net["redis_main_thread"] -= bg.rds * (s2.at - s0.at) * per
        run.us = net
        busy = net["worker"] + net["postgres"] + net["postgres_aux"] + net["redis_drain"]
        run.cores_busy = busy * run.rows_per_s / 1e6
        return run
    finally:
        cleanup_stream(client, stream)
        asyncio.run(pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


# --- report -------------------------------------------------------------------------------------


TIERS = ("handler", "handler_with_logging", "logging_null", "worker", "postgres", "postgres_aux",
         "postgres_all_processes", "redis_fill", "redis_drain", "redis_main_thread",
         "postgres_during_fill")


def summarise(runs: list[Run], startup: tuple[float, float]) -> dict[str, Any]:
    ones = [r for r in runs if r.workers == 1]
    twos = [r for r in runs if r.workers == 2]
    # Each 2-worker run against the 1-worker run just before it (side by side).
    ratios = [b.rows_per_s / a.rows_per_s for a, b in zip(ones, twos, strict=False)]
    tiers: dict[str, dict[str, float]] = {}
    for k in (1, 2):
        group = [r for r in runs if r.workers == k]
        if group:
            tiers[str(k)] = {t: statistics.median(r.us[t] for r in group) for t in TIERS}
    return {
        "records": runs[0].records, "entries": runs[0].entries,
        "stream_bytes_per_record": round(runs[0].stream_bytes_per_record, 1),
        "wal_bytes_per_record": round(statistics.median(r.wal_bytes_per_record for r in runs)),
        "table_bytes_per_record": round(statistics.median(r.table_bytes_per_record for r in runs)),
        "worker_startup_cpu_s": startup[0], "worker_startup_wall_s": startup[1],
        "rows_per_s": {"1": [round(r.rows_per_s) for r in ones],
                       "2": [round(r.rows_per_s) for r in twos]},
        "ratio_2_vs_1": [round(x, 3) for x in ratios],
        "ratio_2_vs_1_median": round(statistics.median(ratios), 3) if ratios else None,
        "cores_busy_median": {str(k): round(statistics.median(r.cores_busy for r in runs
                                                              if r.workers == k), 2)
                              for k in (1, 2) if any(r.workers == k for r in runs)},
        "cpu_us_per_record_median": tiers,
        "runs": [asdict(r) for r in runs],
    }


def print_table(runs: list[Run], summary: dict[str, Any]) -> None:
    print(f"# {summary['records']} records in {summary['entries']} stream entries per run "
          f"(bytes per record: {summary['stream_bytes_per_record']} of stream, "
          f"{summary['wal_bytes_per_record']} of WAL, {summary['table_bytes_per_record']} of table "
          f"and indexes); "
          f"worker start-up {summary['worker_startup_cpu_s'] * 1e3:.0f} ms CPU "
          f"(subtracted per process)")
    print(f"{'run':>3} {'wk':>2} {'drain s':>8} {'spawn-exit':>10} {'rows/s':>9} {'cores':>5} "
          f"{'handler':>8} {'+logging':>8} "
          f"{'worker':>7} {'pg':>6} {'redis-f':>7} {'redis-d':>7} {'bg pg%':>6} {'bg rd%':>6}")
    for i, r in enumerate(runs):
        u = r.us
        print(f"{i:3} {r.workers:2} {r.drain_s:8.2f} {r.spawn_to_exit_s:10.2f} {r.rows_per_s:9,.0f} "
              f"{r.cores_busy:5.2f} {u['handler']:8.1f} "
              f"{u['handler_with_logging']:8.1f} {u['worker']:7.1f} {u['postgres']:6.1f} "
              f"{u['redis_fill']:7.2f} {u['redis_drain']:7.2f} "
              f"{r.background['pg_cpu_per_s'] * 100:6.1f} {r.background['redis_cpu_per_s'] * 100:6.1f}")
    print("(cores: CPU of the workers, their PostgreSQL backends, the WAL writer etc. and Redis "
          "during the drain / drain time; other columns: CPU µs per record, Redis net of the "
          "server's idle background)")
    print(f"2 workers / 1 worker, rows/s, pair by pair: {summary['ratio_2_vs_1']}; "
          f"median {summary['ratio_2_vs_1_median']}")
    print(f"cores busy during the drain (median): {summary['cores_busy_median']}")
    print(f"{'tier (median µs/record)':28} {'1 worker':>9} {'2 workers':>9} {'records/s per core':>19}")
    for t in TIERS:
        one = summary["cpu_us_per_record_median"].get("1", {}).get(t, float("nan"))
        two = summary["cpu_us_per_record_median"].get("2", {}).get(t, float("nan"))
        both = statistics.median([one, two])
        rate = f"{1e6 / both:19,.0f}" if both > 0 else f"{'-':>19}"
        print(f"{t:28} {one:9.2f} {two:9.2f} {rate}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what")
    p = sub.add_parser("produce", help="(internal) the producer process")
    p.add_argument("--stream", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--pairs", type=int, default=3, help="1-worker/2-worker pairs, alternated")
    parser.add_argument("--chunk", type=int, default=50_000,
                        help="records logged between two flushes (below the handler's queue_size)")
    parser.add_argument("--handler-batch-size", type=int, default=0,
                        help="the handler's batch_size: records per stream entry at most "
                             "(default: the handler's own)")
    parser.add_argument("--idle", type=float, default=2.0,
                        help="seconds of the servers' background CPU sampled before each run")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.what == "produce":
        print(json.dumps(produce(args.stream, args.records, args.chunk, args.batch_size)))
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        probe = f"bench_scale_{uuid.uuid4().hex[:8]}"
        asyncio.run(pg_execute(f'CREATE SCHEMA "{probe}"'))
        try:
            asyncio.run(db.init_db(PG_URL, schema=probe))
            startup = startup_cpu(client, probe, 3)
        finally:
            asyncio.run(pg_execute(f'DROP SCHEMA IF EXISTS "{probe}" CASCADE'))
        runs = []
        for i in range(2 * args.pairs):
            run = one_run(client, 1 + i % 2, args.records, args.chunk, startup[0], args.idle,
                          args.handler_batch_size)
            print(f"run {i}: {run.workers} worker(s), {run.rows_per_s:,.0f} rows/s "
                  f"({run.drain_s:.2f} s)", flush=True)
            runs.append(run)
    finally:
        client.close()
    summary = summarise(runs, startup)
    print_table(runs, summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
