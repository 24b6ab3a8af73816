"""Scale-out, end to end: a 3-master Redis Cluster of our own, a stream in 3 shards, producers
that log and exit, two worker processes, the shared PostgreSQL.

Every record offered is stored exactly once, each producer's records all went to one shard
(so its sequence numbers verify), the shards sit on three different nodes, ``status`` is
healthy and reports each shard, and ``verify`` (with the signing key, so chains and
checkpoints are checked across shards) finds nothing wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from activity_logging import db
from activity_logging.shards import shard_streams
from tests.faults.test_status_redis_loss import wait_for
from tests.ledger import keys_from_pg, ledger_of, seq_gaps
from tests.servers import PrivateRedisCluster

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 3
PER_PRODUCER = 3_000
KEY = "k1:cluster-test-secret-0123456789abcdef"

#: A short script: one handler per shard (made until each shard has one), then one more on
#: whichever shard its id picks, each logging PER_PRODUCER records, then exit (logging's
#: atexit flush). Prints the producers as JSON: id -> (shard stream, records).
PRODUCER = textwrap.dedent("""
    import json, logging, sys
    from activity_logging import ActivityHandler
    url, stream, shards, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    handlers, seen = [], set()
    while len(seen) < shards:
        h = ActivityHandler(redis_url=url, stream=stream, stream_shards=shards)
        if h.shard_stream in seen:
            h.close()
            continue
        seen.add(h.shard_stream)
        handlers.append(h)
    handlers.append(ActivityHandler(redis_url=url, stream=stream, stream_shards=shards))
    out = {}
    for i, h in enumerate(handlers):
        log = logging.getLogger(f"activity.p{i}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(h)
        for k in range(n):
            log.info("call_created", extra={"target_type": "call", "target_id": f"{tag}-{i}-{k}",
                                            "actor_id": f"agent-{k % 7}"})
        out[h.producer_id] = [h.shard_stream, n]
    print(json.dumps(out))
""")


@pytest.fixture
def cluster() -> Iterator[PrivateRedisCluster]:
    started = PrivateRedisCluster(masters=3)
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "activity_logging", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)



def test_sharded_streams_on_a_redis_cluster_drain_with_two_workers_every_record_once(
    cluster: PrivateRedisCluster, pg_url: str, pg_schema: str, unique_name: str,
    tmp_path: Path,
) -> None:
    from redis.cluster import RedisCluster

    asyncio.run(db.init_db(pg_url, schema=pg_schema))
    stream = f"cl_{unique_name}"
    env = {**os.environ, "ACTIVITY_LOG_SIGNING_KEY": KEY, "ACTIVITY_LOG_STREAM_SHARDS": str(SHARDS)}

    # The shards live on three different nodes.
    client = RedisCluster.from_url(cluster.url.replace("redis+cluster://", "redis://"),
                                   decode_responses=True)
    names = shard_streams(stream, SHARDS)
    nodes = {client.get_node_from_key(name).name for name in names}
    assert len(nodes) == SHARDS

    # Producers first (the backlog waits in the shards), then two workers drain it.
    produced: dict[str, list[Any]] = {}
    for run in range(2):
        done = subprocess.run([sys.executable, "-c", PRODUCER, cluster.url, stream, str(SHARDS),
                               str(PER_PRODUCER), f"{unique_name}-{run}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        produced.update(json.loads(done.stdout.splitlines()[-1]))
    offered = sum(n for _, n in produced.values())
    assert {shard for shard, _ in produced.values()} == set(names)  # every shard carries records
    backlog = sum(client.xlen(name) for name in names)
    assert backlog > 0  # entries, each a batch of records

    logs = [open(tmp_path / f"w{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    workers = [subprocess.Popen(
        [sys.executable, "-m", "activity_logging", "worker", "--redis-url", cluster.url,
         "--database-url", pg_url, "--schema", pg_schema, "--stream", stream,
         "--stream-shards", str(SHARDS), "--consumer", f"w{i}", "--max-wait", "0.1",
         "--heartbeat-interval", "0.5", "--batch-size", "2000"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(2)]
    try:
        wait_for(lambda: len(keys_from_pg(pg_url, pg_schema, unique_name)) == offered,
                 "every record stored", 90)
        wait_for(lambda: all(client.xlen(name) == 0 for name in names), "shards emptied", 30)

        # Both workers took part, on more than one shard each: no coordination but the group.
        consumers = {name: {c["name"] for c in client.xinfo_consumers(name, "activity_log_workers")}
                     for name in names}
        assert set().union(*consumers.values()) == {"w0", "w1"}

        result = _cli("status", "--redis-url", cluster.url, "--database-url", pg_url,
                      "--schema", pg_schema, "--stream", stream, "--json", env=env)
        report = json.loads(result.stdout)
        assert result.returncode == 0, (report["problems"], result.stderr)
        assert report["healthy"] and report["live_workers"] == 2
        assert [s["stream"] for s in report["shards"]] == names
        assert all(s["length"] == 0 and s["pending"] == 0 and s["group_exists"]
                   for s in report["shards"])
        assert report["stream_length"] == 0 and report["lost_in_transit"] == 0
        text = _cli("status", "--redis-url", cluster.url, "--database-url", pg_url,
                    "--schema", pg_schema, "--stream", stream, env=env)
        assert "3 shards" in text.stdout and all(name in text.stdout for name in names)

        # Every primary's settings are read: AOF on one node does not hide it off on two.
        first = client.get_primaries()[0]
        client.config_set("appendonly", "yes", target_nodes=first)
        again = json.loads(_cli("status", "--redis-url", cluster.url, "--database-url", pg_url,
                                "--schema", pg_schema, "--stream", stream, "--json",
                                env=env).stdout)
        assert any("primaries differ in appendonly" in w for w in again["warnings"])
        assert any("(AOF) is off" in w for w in again["warnings"])
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in workers]
        for log in logs:
            log.close()
    assert codes == [0, 0], [(tmp_path / f"w{i}.log").read_text()[-2000:] for i in range(2)]

    # The ledger: every record offered stored once, nothing dead-lettered or counted lost.
    ledger = ledger_of(offered, keys_from_pg(pg_url, pg_schema, unique_name))
    ledger.assert_balanced()
    assert ledger.duplicates == 0 and ledger.stored == offered

    async def sequences() -> list[tuple[str, int]]:
        import asyncpg

        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch(
                f'SELECT producer_id, seq FROM "{pg_schema}".activity_logs '
                "WHERE activity_type = 'call_created'")
            return [(r["producer_id"], r["seq"]) for r in rows]
        finally:
            await conn.close()

    seqs = asyncio.run(sequences())
    assert {p for p, _ in seqs} == set(produced)  # the records (checkpoints aside)
    assert seq_gaps(seqs) == 0

    verified = _cli("verify", "--database-url", pg_url, "--schema", pg_schema, "--json", env=env)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]
    checked = json.loads(verified.stdout)
    # the handlers a producer script closed unused (a shard already taken) left their
    # closing checkpoints: trails of their own, empty but closed
    assert checked["ok"] and checked["producers"] >= len(produced)
    assert checked["rows"] >= offered and checked["missing"] == 0 == checked["duplicates"]
    chains = checked["chains"]  # signed: every record sealed, every trail closed by its exit
    assert set(produced) <= {c["producer_id"] for c in chains}
    assert all(c["ok"] and c["closed"] and c["sealed"] == c["rows"] for c in chains)
    client.close()
