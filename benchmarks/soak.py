"""Soak with chaos: the whole pipeline for a while, things killed at random, then the ledger.

    .venv/bin/python benchmarks/soak.py [--duration 600] [--rate 5000] [--chaos-every 30]
                                        [--producers 2] [--workers 2] [--seed N]
                                        [--database-url postgresql://postgres@127.0.0.1:5432/test]
                                        [--actions ACTION,...] [--redis-aof always|everysec|no]
                                        [--keep] [--json]

What runs, all on this machine:

* a private ``redis-server`` (AOF on, ``appendfsync always``) on a free port, in its own
  directory; the shared Redis is never touched;
* a ``TcpProxy`` in front of PostgreSQL: the workers connect through it, so their database
  can be cut without touching the shared server;
* ``--producers`` processes, each logging through a real ``ActivityHandler`` built by
  ``dictConfig`` with the default spool (``ACTIVITY_LOG_SPOOL_PATH`` points into the soak's
  own directory), at ``rate / producers`` records/s, every record with a unique
  ``target_id`` ``p<k>-<n>``; on SIGTERM a producer stops, calls ``logging.shutdown()`` and
  writes its ``stats()`` and the number of records it offered to a JSON file;
* ``--workers`` ``python -m activity_logging worker`` processes into a private schema
  ``soak_<random>`` (created, ``init-db``'d, dropped at the end unless ``--keep``);
* a chaos loop: every ``--chaos-every`` seconds (x0.5 to x1.5, at random) one action drawn
  from ``--actions``, logged with its time:

  - ``kill-worker``: SIGKILL a worker, restart it at once under the same consumer name;
  - ``term-worker``: SIGTERM a worker (warm stop, must exit 0), restart it;
  - ``replace-worker``: SIGKILL a worker and start a new consumer in its place (a host lost:
    its pending entries come back only through ``XAUTOCLAIM``);
  - ``kill-redis``: SIGKILL Redis, restart it 0.5-3 s later from its AOF;
  - ``kill-redis-backlog``: cut PostgreSQL 3-6 s so entries wait in the stream, SIGKILL Redis,
    restart it, restore PostgreSQL (the AOF must keep the backlog and the pending list);
  - ``cut-db``: cut the PostgreSQL proxy for 2-6 s (connections reset, new ones refused);
  - ``pause-redis``: ``DEBUG SLEEP`` 2 s or 4 s (under and over the handler's 2.5 s send
    timeout: the longer one makes sends unconfirmed, spooled and sent again).

At the end the producers are stopped (SIGTERM), a spool they left is replayed by a fresh
handler, the workers drain the stream, ``activity-logging status`` gives its verdict (it
must agree with the ledger), and PostgreSQL is counted: the ledger
``offered = stored + dead_lettered + counted + lost`` (tests/ledger.py) plus duplicates and
per-producer sequence gaps. Exit status 0 only when lost == 0 and duplicates == 0.
How to read the result, and a dated run: docs/reliability.md.

Everything started is stopped and removed on the way out, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import logging.config
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.engine import make_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from activity_logging import ActivityHandler, config, db  # noqa: E402
from activity_logging.exceptions import ActivityLoggingError  # noqa: E402
from tests.ledger import Ledger, counted_losses  # noqa: E402
from tests.servers import TcpProxy, free_port, wait_port  # noqa: E402

GROUP = config.DEFAULT_GROUP
STREAM = config.DEFAULT_STREAM
DEAD_STREAM = config.dead_stream_for(STREAM)
# A restarted worker keeps its consumer name and re-reads its own pending entries first;
# claiming after 15 s (not the default 60) also moves entries between live workers while one
# is stuck behind a cut database, which the id must make harmless.
WORKER_ARGS = ("--claim-idle", "15", "--heartbeat-interval", "2")
PRODUCER_BURST = 1000  # records logged per turn at most when catching up, so SIGTERM is seen
DRAIN_STALL = 120.0  # seconds without progress before the drain gives up
PROGRESS_EVERY = 30.0


def now_iso() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def say(msg: str) -> None:
    print(f"{now_iso()} {msg}", file=sys.stderr, flush=True)


# --- the producer process ----------------------------------------------------------------

def configured_handler() -> ActivityHandler:
    """The README's configuration: dictConfig, ``REDIS_URL`` and the spool from the environment."""
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"activity": {"()": "activity_logging.ActivityHandler"}},
        "loggers": {"activity": {"handlers": ["activity"], "level": "INFO", "propagate": False}},
    })
    handler = logging.getLogger("activity").handlers[0]
    assert isinstance(handler, ActivityHandler)
    return handler


def produce(index: int, rate: float, stats_out: str) -> int:
    """A producer: logs ``rate`` records/s until SIGTERM, then closes logging and reports.

    The schedule is absolute (record n is due at n / rate seconds after the start): a
    producer that fell behind (a busy core) catches up in bursts instead of losing rate.
    """
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True  # only a flag: an exception here could cut a log call in half

    signal.signal(signal.SIGTERM, on_term)
    handler = configured_handler()
    log = logging.getLogger("activity")
    write_json(f"{stats_out}.ready", {})  # the soak's clock starts when every producer is here
    offered, behind_max = 0, 0.0
    start = time.monotonic()
    while not stopping:
        elapsed = time.monotonic() - start
        due = int(elapsed * rate)
        if offered >= due:
            time.sleep(min(0.01, max(0.0, (offered + 1) / rate - elapsed)))
            continue
        behind_max = max(behind_max, (due - offered) / rate)
        for _ in range(min(due - offered, PRODUCER_BURST)):
            log.info("soak_record", extra={
                "actor_type": "agent", "actor_id": f"a{offered % 50}", "target_type": "soak",
                "target_id": f"p{index}-{offered}",
                "changes": {"n": {"old": offered - 1, "new": offered}}})
            offered += 1
    elapsed = time.monotonic() - start
    logging.shutdown()
    write_json(stats_out, {"producer": f"p{index}", "producer_id": handler.producer_id,
                           "offered": offered, "elapsed": elapsed, "behind_max_s": behind_max,
                           "stats": handler.stats()})
    return 0


def replay_orphans(stats_out: str, limit: float) -> int:
    """A fresh handler on the spool directory, alive until no orphaned spool file is left."""
    handler = configured_handler()
    own = f"{handler.producer_id}.spool"
    spool_dir = Path(os.environ["ACTIVITY_LOG_SPOOL_PATH"])
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(p.name != own for p in spool_files(spool_dir)):
        time.sleep(0.2)
    logging.shutdown()
    write_json(stats_out, {"producer": "replayer", "offered": 0, "stats": handler.stats()})
    return 0


def write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out)
    os.replace(tmp, path)


def spool_files(directory: Path) -> list[Path]:
    """Spool files that hold something (a live producer's empty file is not a backlog)."""
    out = []
    for p in directory.rglob("*.spool"):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_size > 0:
                out.append(p)
    return out


# --- the servers and processes the soak owns ---------------------------------------------

class SoakRedis:
    """A private redis-server with AOF, restartable on the same port and directory.

    ``appendfsync always`` (the default): Redis writes and fsyncs the AOF before it answers,
    so a SIGKILL loses nothing it acknowledged. With ``everysec``, while a background fsync
    is slow Redis postpones its AOF write (up to 2 s) yet still answers; a SIGKILL then loses
    acknowledged XADDs, a loss the handler cannot see and this soak would blame on the
    library. ``no`` runs without AOF: the negative control.
    """

    def __init__(self, directory: str, appendfsync: str = "always") -> None:
        self.port = free_port()
        self.dir = directory
        self.appendfsync = appendfsync  # "no": no AOF at all (the soak's negative control)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(("--appendonly", "no") if self.appendfsync == "no"
               else ("--appendonly", "yes", "--appendfsync", self.appendfsync)), "--dir", self.dir,
             "--maxmemory-policy", "noeviction", "--enable-debug-command", "local",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_port(self.port, timeout=30)
        client = self.client()
        try:  # loading a big AOF answers LOADING until done
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except redis.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
            wait_port(self.port, open_=False)

    def client(self, timeout: float = 10.0) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)


@dataclass
class Child:
    """A process the soak started: how to start it again, where its stderr goes."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    noted: bool = False  # an unexpected exit already reported

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)  # Ctrl-C reaches the soak only, which stops us in order
        self.starts += 1

    @property
    def consumer(self) -> str:
        """The ``--consumer`` a worker runs as (empty for other children)."""
        return self.argv[self.argv.index("--consumer") + 1] if "--consumer" in self.argv else ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig`` and wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@dataclass
class Event:
    t: float  # seconds since the producers started, when the action began
    at: str  # wall clock, when the action began
    took: float  # seconds the action lasted
    action: str
    detail: str


@dataclass
class Soak:
    args: argparse.Namespace
    rng: random.Random
    work: str = ""
    schema: str = ""
    redis: SoakRedis | None = None
    proxy: TcpProxy | None = None
    workers: list[Child] = field(default_factory=list)
    producers: list[Child] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    odd: list[str] = field(default_factory=list)
    started: float = 0.0
    schema_made: bool = False
    _began: tuple[float, str] | None = None

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        self.work = tempfile.mkdtemp(prefix="al-soak-")
        for sub in ("redis", "spool", "logs", "stats"):
            os.makedirs(os.path.join(self.work, sub), mode=0o700)  # the spool refuses to be readable
        self.schema = f"soak_{secrets.token_hex(4)}"
        pg = self.args.database_url
        run_pg(pg, None, f'CREATE SCHEMA "{self.schema}"')
        self.schema_made = True
        subprocess.run([sys.executable, "-m", "activity_logging", "--log-level", "WARNING", "init-db",
                        "--database-url", pg, "--schema", self.schema], cwd=ROOT, check=True)
        self.redis = SoakRedis(os.path.join(self.work, "redis"), self.args.redis_aof)
        self.redis.start()
        url = make_url(pg)
        self.proxy = TcpProxy(url.port or 5432, url.host or "127.0.0.1").start()
        via_proxy = url.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False)
        env = {**os.environ, "PYTHONPATH": ROOT}
        for k in range(self.args.workers):
            name = f"w{k}"
            self.workers.append(Child(name, [
                sys.executable, "-m", "activity_logging", "worker", "--redis-url", self.redis.url,
                "--database-url", via_proxy, "--schema", self.schema, "--stream", STREAM,
                "--consumer", name, *WORKER_ARGS], env, self.log(name)))
        producer_env = {**env, "REDIS_URL": self.redis.url, "ACTIVITY_LOG_STREAM": STREAM,
                        "ACTIVITY_LOG_SPOOL_PATH": os.path.join(self.work, "spool")}
        per = self.args.rate / self.args.producers
        for k in range(self.args.producers):
            name = f"p{k}"
            self.producers.append(Child(name, [
                sys.executable, os.path.abspath(__file__), "--produce", str(k), "--rate", str(per),
                "--stats-out", self.stats_path(name)], producer_env, self.log(name)))
        say(f"soak: schema {self.schema}, redis {self.redis.url} (dir {self.redis.dir}), "
            f"pg proxy :{self.proxy.port} -> {url.host}:{url.port}, work dir {self.work}, "
            f"seed {self.args.seed}")
        for w in self.workers:
            w.start()
        for p in self.producers:
            p.start()
        deadline = time.monotonic() + 60
        while not all(os.path.exists(f"{self.stats_path(p.name)}.ready") for p in self.producers):
            if time.monotonic() > deadline or not all(p.alive() for p in self.producers):
                raise RuntimeError(f"producers did not start; see {self.work}/logs")
            time.sleep(0.05)
        self.started = time.monotonic()

    def log(self, name: str) -> str:
        return os.path.join(self.work, "logs", f"{name}.log")

    def stats_path(self, name: str) -> str:
        return os.path.join(self.work, "stats", f"{name}.json")

    def event(self, action: str, detail: str) -> None:
        """Log what an action did; times count from ``begin()`` (else from now)."""
        t0, at = self._began or (time.monotonic(), now_iso())
        self._began = None
        e = Event(round(t0 - self.started, 1), at, round(time.monotonic() - t0, 1), action, detail)
        self.events.append(e)
        say(f"[t+{e.t:7.1f}s] {action} ({e.took:.1f}s): {detail}")

    def begin(self) -> None:
        self._began = (time.monotonic(), now_iso())

    def note_odd(self, what: str) -> None:
        self.odd.append(f"t+{time.monotonic() - self.started:.1f}s {what}")
        say(f"[t+{time.monotonic() - self.started:7.1f}s] ODD: {what}")

    # --- chaos -----------------------------------------------------------------------------

    def actions(self) -> dict[str, Callable[[], None]]:
        return {"kill-worker": self.kill_worker, "term-worker": self.term_worker,
                "replace-worker": self.replace_worker,
                "kill-redis": self.kill_redis, "kill-redis-backlog": self.kill_redis_backlog,
                "cut-db": self.cut_db,
                "pause-redis": self.pause_redis}

    def chaos(self) -> None:
        table = self.actions()
        chosen = [a for a in self.args.actions.split(",") if a]
        end = self.started + self.args.duration
        next_action = self.started + self.args.chaos_every * self.rng.uniform(0.5, 1.5)
        next_progress = self.started + PROGRESS_EVERY
        deck: list[str] = []  # every action once per round, in random order: all get drawn
        while (now := time.monotonic()) < end:
            self.watchdog()
            if now >= next_progress:
                self.progress()
                next_progress = now + PROGRESS_EVERY
            if now >= next_action:
                if not deck:
                    deck = list(chosen)
                    self.rng.shuffle(deck)
                self.begin()
                table[deck.pop()]()
                next_action = time.monotonic() + self.args.chaos_every * self.rng.uniform(0.5, 1.5)
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))

    def watchdog(self) -> None:
        """Workers that died by themselves are restarted (and noted); producers are noted."""
        for w in self.workers:
            if not w.alive():
                rc = w.proc.returncode if w.proc is not None else None
                self.note_odd(f"worker {w.name} (pid {w.pid}) exited by itself, rc {rc}; restarting")
                w.start()
        for p in self.producers:
            if p.proc is not None and p.proc.poll() is not None and not p.noted:
                self.note_odd(f"producer {p.name} exited by itself, rc {p.proc.returncode}")
                p.noted = True

    def pending_of(self, consumer: str) -> int | str:
        assert self.redis is not None
        client = self.redis.client(2.0)
        try:
            for info in client.xinfo_consumers(STREAM, GROUP):
                name = info["name"]
                if (name.decode() if isinstance(name, bytes) else name) == consumer:
                    return int(info["pending"])
            return 0
        except redis.RedisError as exc:
            return f"? ({type(exc).__name__})"
        finally:
            client.close()

    def kill_worker(self) -> None:
        w = self.rng.choice(self.workers)
        pending = self.pending_of(w.consumer)
        old = w.pid
        w.stop(signal.SIGKILL, timeout=10)
        w.start()
        self.event("kill-worker", f"SIGKILL {w.consumer} (pid {old}, {pending} entries pending); "
                   f"restarted as pid {w.pid}, same consumer name")

    def replace_worker(self) -> None:
        """A host lost for good: its pending entries can only come back through XAUTOCLAIM."""
        w = self.rng.choice(self.workers)
        pending = self.pending_of(w.consumer)
        old, old_name = w.pid, w.consumer
        w.stop(signal.SIGKILL, timeout=10)
        w.argv[w.argv.index("--consumer") + 1] = f"{w.name}-{w.starts}"
        w.start()
        self.event("replace-worker", f"SIGKILL {old_name} (pid {old}, {pending} entries pending), "
                   f"never restarted; a new consumer {w.consumer} (pid {w.pid}) takes its place, "
                   f"the entries wait for a claim ({WORKER_ARGS[1]} s idle)")

    def term_worker(self) -> None:
        w = self.rng.choice(self.workers)
        pending = self.pending_of(w.consumer)
        old = w.pid
        t0 = time.monotonic()
        rc = w.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - t0
        w.start()
        self.event("term-worker", f"SIGTERM {w.consumer} (pid {old}, {pending} entries pending): "
                   f"exit {rc} after {took:.2f}s; restarted as pid {w.pid}")
        if rc != 0:
            self.note_odd(f"worker {w.consumer} warm stop exited {rc}, expected 0")

    def kill_redis(self) -> None:
        self.event("kill-redis", self.restart_redis())

    def kill_redis_backlog(self) -> None:
        """PostgreSQL away long enough for entries to wait in the stream, then Redis killed:
        the AOF must keep the backlog and the group's pending list, not just an empty stream."""
        assert self.proxy is not None
        cut = self.rng.uniform(3.0, 6.0)
        self.proxy.cut()
        time.sleep(cut)
        xlen, pending = self.stream_state()
        detail = self.restart_redis()
        self.proxy.restore()
        self.event("kill-redis-backlog", f"PostgreSQL proxy cut; after {cut:.1f}s the stream held "
                   f"{xlen} entries ({pending} pending): {detail}; proxy restored")

    def restart_redis(self) -> str:
        """SIGKILL Redis, restart it on the same port and directory; what came back."""
        assert self.redis is not None
        down = self.rng.uniform(0.5, 3.0)
        old = self.redis.proc.pid if self.redis.proc is not None else 0
        self.redis.kill()
        time.sleep(down)
        self.redis.start()
        client = self.redis.client()
        try:
            length = client.xlen(STREAM)
            groups = [g["name"] for g in client.xinfo_groups(STREAM)]
        except redis.RedisError as exc:  # no stream at all: nothing kept it
            length, groups = -1, [f"? {exc}"]
        finally:
            client.close()
        if GROUP.encode() not in groups and GROUP not in groups:
            self.note_odd(f"consumer group missing after the Redis restart: {groups}")
        return (f"SIGKILL redis (pid {old}), down {down:.1f}s, restarted (appendfsync "
                f"{self.redis.appendfsync}): stream length {length}, groups {groups}")

    def cut_db(self) -> None:
        assert self.proxy is not None
        down = self.rng.uniform(2.0, 6.0)
        self.proxy.cut()
        time.sleep(down)
        self.proxy.restore()
        self.event("cut-db", f"PostgreSQL proxy cut for {down:.1f}s (connections reset, new ones "
                   "refused), then restored")

    def pause_redis(self) -> None:
        assert self.redis is not None
        # 2 s is under the handler's send timeout (2.5 s with the default close_timeout), 4 s
        # over it: those sends time out, are spooled as unconfirmed and sent again later.
        seconds = self.rng.choice((2, 4))
        client = self.redis.client(seconds + 10.0)
        try:
            client.execute_command("DEBUG", "SLEEP", seconds)  # type: ignore[no-untyped-call]
            detail = f"DEBUG SLEEP {seconds} (Redis answers nothing for {seconds}s)"
        except redis.RedisError as exc:
            detail = f"DEBUG SLEEP {seconds} failed: {exc}"
        finally:
            client.close()
        self.event("pause-redis", detail)

    def progress(self) -> None:
        rows = count_rows(self.args.database_url, self.schema)
        xlen, pending = self.stream_state()
        spooled = sum(p.stat().st_size for p in spool_files(Path(self.work, "spool")))
        say(f"[t+{time.monotonic() - self.started:7.1f}s] progress: {rows} rows stored, stream "
            f"{xlen} entries ({pending} pending), spool {spooled} bytes on disk")

    def stream_state(self) -> tuple[int, int]:
        """(stream length, entries pending in the group); (-1, -1) when Redis does not answer."""
        assert self.redis is not None
        client = self.redis.client(5.0)
        try:
            xlen = int(client.xlen(STREAM))
            try:
                pending = int(client.xpending(STREAM, GROUP)["pending"])
            except redis.ResponseError:
                pending = 0
            return xlen, pending
        except redis.RedisError:
            return -1, -1
        finally:
            client.close()

    # --- the end -------------------------------------------------------------------------

    def drain(self) -> dict[str, Any]:
        """Stop producers, replay orphans, wait until the stream is empty, stop the workers."""
        t0 = time.monotonic()
        self.begin()
        for p in self.producers:
            if p.alive():
                assert p.proc is not None
                p.proc.send_signal(signal.SIGTERM)
        for p in self.producers:
            # one SIGTERM only: a second one can land while the interpreter finalises (handlers
            # back to SIG_DFL) and end a producer that has already written its stats
            rc = wait_exit(p, 60) if p.proc is not None else None
            if rc != 0:
                self.note_odd(f"producer {p.name} exited {rc} at its stop")
        self.event("stop-producers", f"SIGTERM to the producers, all exited after "
                   f"{time.monotonic() - t0:.1f}s")
        orphans = spool_files(Path(self.work, "spool"))
        replayed: dict[str, Any] = {}
        if orphans:
            self.begin()
            size = sum(p.stat().st_size for p in orphans)
            replayer = Child("replayer", [sys.executable, os.path.abspath(__file__),
                                          "--replay-orphans", "--stats-out", self.stats_path("replayer")],
                             self.producers[0].env, self.log("replayer"))
            replayer.start()
            rc = wait_exit(replayer, 150)
            replayed = read_json(self.stats_path("replayer")) or {}
            left = spool_files(Path(self.work, "spool"))
            self.event("replay-orphans", f"{len(orphans)} spool file(s), {size} bytes, left by the "
                       f"producers; a fresh handler adopted "
                       f"{replayed.get('stats', {}).get('spool_adopted', '?')} records (exit {rc}); "
                       f"{len(left)} file(s) left")
        t1 = time.monotonic()
        self.begin()
        last: tuple[int, int] | None = None
        last_change, stalled = time.monotonic(), False
        while True:
            for w in self.workers:  # a worker dying here must not stall the drain
                if not w.alive():
                    self.note_odd(f"worker {w.name} found dead while draining; restarting")
                    w.start()
            state = self.stream_state()
            if state == (0, 0):
                break
            if state != last:
                last, last_change = state, time.monotonic()
            elif time.monotonic() - last_change > DRAIN_STALL:
                self.note_odd(f"drain made no progress for {DRAIN_STALL:.0f}s: stream, pending = {state}")
                stalled = True
                break
            time.sleep(0.5)
        drained = time.monotonic() - t1
        self.event("drained", f"{'stalled' if stalled else 'stream empty'} after {drained:.1f}s")
        health = self.status()
        codes = []
        self.begin()
        for w in self.workers:
            codes.append(w.stop(signal.SIGTERM, timeout=30))
        self.event("stop-workers", f"SIGTERM to the workers: exit codes {codes}")
        if any(c != 0 for c in codes):
            self.note_odd(f"worker exit codes at the end: {codes}")
        return {"drain_s": round(drained, 1), "replayer": replayed, "status": health}

    def status(self) -> dict[str, Any]:
        """``activity-logging status`` once the stream is drained, the workers still live: it
        must not see a loss the ledger does not (nor miss one it does)."""
        assert self.redis is not None
        self.begin()
        proc = subprocess.run(
            [sys.executable, "-m", "activity_logging", "--log-level", "WARNING", "status", "--json",
             "--redis-url", self.redis.url, "--database-url", self.args.database_url,
             "--schema", self.schema, "--stream", STREAM],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            report = {}
        health = {"exit": proc.returncode, "healthy": report.get("healthy"),
                  "problems": report.get("problems", [proc.stderr.strip()[-500:]]),
                  "warnings": report.get("warnings", []),
                  "group": {k: report.get(k) for k in (
                      "stream_length", "entries_added", "entries_read", "lag", "undelivered",
                      "stream_entries_lost", "last_delivered_id")}}
        verdict = "HEALTHY" if health["healthy"] else "UNHEALTHY"
        self.event("status", f"{verdict} (exit {proc.returncode}); problems {health['problems']}; "
                   f"group {health['group']}")
        if not health["healthy"]:
            self.note_odd(f"`activity-logging status` says UNHEALTHY after the drain: "
                          f"{health['problems']}")
        return health

    def cleanup(self) -> None:
        for child in [*self.producers, *self.workers]:
            with contextlib.suppress(Exception):
                if child.alive():
                    child.stop(signal.SIGKILL, timeout=10)
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.kill()
        if self.schema_made and not self.args.keep:
            try:
                run_pg(self.args.database_url, None, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            except Exception as exc:
                say(f"soak: could not drop schema {self.schema}: {exc}")
        if self.work:
            if self.args.keep:
                say(f"soak: kept schema {self.schema} and work dir {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)


def wait_exit(child: Child, timeout: float) -> int | None:
    """Wait for a child to exit by itself; SIGKILL after ``timeout``."""
    assert child.proc is not None
    try:
        return child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return child.stop(signal.SIGKILL, timeout=10)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --- PostgreSQL --------------------------------------------------------------------------

def run_pg(url: str, schema: str | None, sql: str) -> None:
    async def go() -> None:
        conn = await db.connect_pg(url, schema=schema)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(go())


def fetch_pg(url: str, schema: str, sql: str, *params: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await db.connect_pg(url, schema=schema)
        try:
            return list(await conn.fetch(sql, *params))
        finally:
            await conn.close()
    return asyncio.run(go())


def count_rows(url: str, schema: str) -> int:
    return int(fetch_pg(url, schema, "SELECT count(*) AS n FROM activity_logs")[0]["n"])


def missing_ranges(url: str, schema: str, producer: str, offered: int, limit: int = 20) -> list[str]:
    """The record numbers of ``producer`` that are not stored, as ranges (first ``limit``)."""
    rows = fetch_pg(url, schema, """
        SELECT n FROM generate_series(0, $1::int - 1) AS n
        EXCEPT SELECT split_part(target_id, '-', 2)::int FROM activity_logs
               WHERE target_id LIKE $2
        ORDER BY 1""", offered, f"{producer}-%")
    spans: list[list[int]] = []
    for (n,) in rows:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    out = [f"{a}-{b}" if a != b else str(a) for a, b in spans]
    return out[:limit] + ([f"... {len(out) - limit} more ranges"] if len(out) > limit else [])


# --- the ledger --------------------------------------------------------------------------

def ledger(soak: Soak, end: dict[str, Any]) -> dict[str, Any]:
    url, schema = soak.args.database_url, soak.schema
    reports = {p.name: read_json(soak.stats_path(p.name)) for p in soak.producers}
    by_producer = {str(r["producer"]): (int(r["rows"]), int(r["distinct"])) for r in fetch_pg(url, schema, """
        SELECT split_part(target_id, '-', 1) AS producer, count(*) AS rows,
               count(DISTINCT target_id) AS distinct
        FROM activity_logs GROUP BY 1""")}
    # the count tests.ledger.seq_gaps makes, done in SQL rather than over millions of rows
    seqs = fetch_pg(url, schema, """
        SELECT split_part(target_id, '-', 1) AS producer, producer_id, min(seq) AS first,
               max(seq) AS last, count(DISTINCT seq) AS seqs
        FROM activity_logs GROUP BY 1, 2 ORDER BY 1, 2""")
    assert soak.redis is not None
    client = soak.redis.client()
    try:
        dead = int(client.xlen(DEAD_STREAM))
    finally:
        client.close()
    producers: list[dict[str, Any]] = []
    missing_reports = []
    totals = Ledger(offered=0, stored=0, dead_lettered=dead)
    chaos_counters: dict[str, int] = {}
    for p in soak.producers:
        rep = reports[p.name]
        rows, distinct = by_producer.get(p.name, (0, 0))
        if rep is None:
            missing_reports.append(p.name)
            producers.append({"producer": p.name, "report": "missing", "rows": rows, "stored": distinct})
            continue
        stats = rep["stats"]
        for k in ("send_failures", "send_timeouts", "reconnects", "spooled", "spool_replayed",
                  "spool_adopted", "unaccounted", "enqueued", "sent"):
            chaos_counters[k] = chaos_counters.get(k, 0) + int(stats.get(k, 0))
        mine = [s for s in seqs if s["producer"] == p.name]
        gaps = sum(int(s["last"]) - int(s["first"]) + 1 - int(s["seqs"]) for s in mine)
        own = [s for s in mine if s["producer_id"] == rep.get("producer_id")]
        last_seq = int(own[0]["last"]) if own else 0
        entry = {
            "producer": p.name, "producer_id": rep.get("producer_id"), "offered": rep["offered"],
            "rate": round(rep["offered"] / max(rep["elapsed"], 1e-9), 1),
            "behind_max_s": round(rep["behind_max_s"], 3),
            "stored": distinct, "duplicates": rows - distinct, "counted": counted_losses(stats),
            "enqueued": stats.get("enqueued"), "first_seq": int(own[0]["first"]) if own else None,
            "last_seq": last_seq, "seq_gaps": gaps,
            "tail_missing": int(stats.get("enqueued", 0)) - last_seq,
            "producer_ids_seen": len(mine),
            "spool_pending_at_exit": stats.get("spool_pending"), "unaccounted": stats.get("unaccounted"),
        }
        lost_here = rep["offered"] - distinct - entry["counted"]
        entry["lost"] = lost_here  # dead letters are not attributed per producer
        if lost_here > 0:
            entry["missing"] = missing_ranges(url, schema, p.name, rep["offered"])
        producers.append(entry)
        totals.offered += rep["offered"]
        totals.stored += distinct
        totals.duplicates += rows - distinct
        totals.counted += entry["counted"]
    # records of one producer lost to damage in a spool another handler adopted: counted by
    # the adopter, not attributable to a producer here
    adopters = [r for r in reports.values() if r] + ([end["replayer"]] if end.get("replayer") else [])
    by_adopters = sum(int(r["stats"].get("spool_adopted_damaged", 0)) for r in adopters)
    totals.counted += by_adopters
    unknown = {k: v for k, v in by_producer.items() if k not in {p.name for p in soak.producers}}
    balanced = (not missing_reports and totals.lost == 0 and totals.duplicates == 0)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: getattr(soak.args, k) for k in (
            "duration", "rate", "chaos_every", "producers", "workers", "seed", "actions",
            "redis_aof")},
        "offered": totals.offered, "stored": totals.stored, "duplicates": totals.duplicates,
        "dead_lettered": totals.dead_lettered, "counted": totals.counted, "lost": totals.lost,
        "counted_by_adopters": by_adopters,
        "balanced": balanced, "missing_reports": missing_reports, "unknown_rows": unknown,
        "producers": producers, "producer_counters": chaos_counters,
        "worker_counters": worker_counters(soak),
        "chaos": [asdict(e) for e in soak.events], "odd": soak.odd, **end,
    }


def worker_counters(soak: Soak) -> dict[str, int]:
    """Sums of the counters each worker logged when it stopped (a SIGKILLed run logs none)."""
    import ast

    out: dict[str, int] = {"runs_reported": 0, "tracebacks": 0}
    for w in soak.workers:
        with contextlib.suppress(OSError), open(w.log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "Traceback" in line:
                    out["tracebacks"] += 1
                found = re.search(r"worker \S+ stopped: (\{.*\})$", line)
                if found:
                    with contextlib.suppress(ValueError, SyntaxError):
                        counters = ast.literal_eval(found.group(1))
                        out["runs_reported"] += 1
                        for k, v in counters.items():
                            if isinstance(v, int) and k not in ("lag", "pending"):
                                out[k] = out.get(k, 0) + v
    return out


def print_ledger(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(f"soak {s['duration']}s at {s['rate']}/s, {s['producers']} producers, {s['workers']} "
          f"workers, chaos every ~{s['chaos_every']}s, seed {s['seed']}")
    print("chaos:")
    for e in result["chaos"]:
        print(f"  t+{e['t']:7.1f}s  {e['at']}  {e['action']} ({e['took']:.1f}s): {e['detail']}")
    print(f"ledger: offered={result['offered']} stored={result['stored']} "
          f"duplicates={result['duplicates']} dead_lettered={result['dead_lettered']} "
          f"counted={result['counted']} lost={result['lost']}")
    for p in result["producers"]:
        print("  " + " ".join(f"{k}={v}" for k, v in p.items()))
    left = sum(int(p.get("spool_pending_at_exit") or 0) for p in result["producers"])
    print(f"left in the producers' spools at exit: {left} records (replayed by a fresh handler)")
    print(f"producer counters: {result['producer_counters']}")
    print(f"worker counters (runs that stopped warm): {result['worker_counters']}")
    adopted = result["replayer"].get("stats", {}).get("spool_adopted", 0)
    print(f"drain: {result['drain_s']}s; replayer: {adopted} records adopted")
    health = result.get("status") or {}
    print(f"status after the drain: {'HEALTHY' if health.get('healthy') else 'UNHEALTHY'} "
          f"{health.get('problems', [])}")
    if result["odd"]:
        print("odd:")
        for o in result["odd"]:
            print(f"  {o}")
    if result["missing_reports"]:
        print(f"no stats from: {result['missing_reports']}")
    print("BALANCED" if result["balanced"] else "NOT BALANCED")


# --- entry point -------------------------------------------------------------------------

ACTIONS = ("kill-worker,term-worker,replace-worker,kill-redis,kill-redis-backlog,cut-db,"
           "pause-redis")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of logging (600)")
    parser.add_argument("--rate", type=float, default=5000.0, help="records/s over all producers (5000)")
    parser.add_argument("--chaos-every", type=float, default=30.0,
                        help="mean seconds between chaos actions, jittered x0.5-1.5 (30)")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None, help="seed of the chaos (default: random)")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL; the soak works in its own schema soak_<random> only")
    parser.add_argument("--actions", default=ACTIONS, help=f"comma-separated chaos actions ({ACTIONS})")
    parser.add_argument("--redis-aof", default="always", choices=["always", "everysec", "no"],
                        help="appendfsync of the private Redis; 'no' turns AOF off: a control, "
                             "kill-redis-backlog must then lose records and the ledger fail (always)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the schema and the work dir (logs, AOF, stats)")
    parser.add_argument("--json", action="store_true", help="print the ledger as JSON")
    parser.add_argument("--produce", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--replay-orphans", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stats-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.produce is not None:
        return produce(args.produce, args.rate, args.stats_out)
    if args.replay_orphans:
        return replay_orphans(args.stats_out, 120.0)
    unknown = set(args.actions.split(",")) - set(ACTIONS.split(","))
    if unknown or args.producers < 1 or args.workers < 1 or args.rate <= 0:
        parser.error(f"bad settings (unknown actions: {sorted(unknown)})")
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    soak = Soak(args, random.Random(args.seed))

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the same orderly cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        soak.setup()
        soak.chaos()
        end = soak.drain()
        result = ledger(soak, end)
    except KeyboardInterrupt:
        say("soak: interrupted, cleaning up")
        return 130
    except (ActivityLoggingError, OSError, subprocess.SubprocessError, RuntimeError) as exc:
        say(f"soak: {type(exc).__name__}: {exc}; cleaning up")  # no ledger to count
        return 2
    finally:
        soak.cleanup()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_ledger(result)
    return 0 if result["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
