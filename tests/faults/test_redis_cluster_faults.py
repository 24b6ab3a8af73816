"""A Redis Cluster master killed (-9) and restarted under a running pipeline.

With its default ``cluster-require-full-coverage yes`` the whole cluster answers
CLUSTERDOWN once the master is seen failed: producers spool, workers wait (they must not
die on it), and when the master is back (AOF, ``appendfsync always``: nothing acknowledged
is lost with it) everything offered is stored once, the spool replayed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from activity_logging import db
from tests.ledger import keys_from_pg, ledger_of
from tests.servers import PrivateRedisCluster

ROOT = Path(__file__).resolve().parents[2]

#: Logs ``n`` records over about ``seconds``, then exits; prints its handler's stats.
PRODUCER = textwrap.dedent("""
    import json, logging, sys, time
    from activity_logging import ActivityHandler
    url, stream, n, seconds, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    h = ActivityHandler(redis_url=url, stream=stream, stream_shards=3, close_timeout=20)
    log = logging.getLogger("activity")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(h)
    for k in range(n):
        log.info("call_created", extra={"target_id": f"{tag}-{k}"})
        if k % 100 == 99:
            time.sleep(seconds * 100 / n)
    h.close()
    print(json.dumps(h.stats()))
""")


def test_a_master_killed_and_restarted_loses_nothing_and_no_worker_dies(
    pg_url: str, pg_schema: str, unique_name: str, tmp_path: Path,
) -> None:
    cluster = PrivateRedisCluster(masters=3)
    for node in cluster.nodes:
        node.appendonly = True
        node.options += ("--appendfsync", "always")
    workers: list[subprocess.Popen[bytes]] = []
    producers: list[subprocess.Popen[str]] = []
    try:
        cluster.start()
        asyncio.run(db.init_db(pg_url, schema=pg_schema))
        stream = f"cf_{unique_name}"
        env = {**os.environ, "ACTIVITY_LOG_STREAM_SHARDS": "3"}
        logs = [open(tmp_path / f"w{i}.log", "wb") for i in range(2)]  # noqa: SIM115
        workers += [subprocess.Popen(
            [sys.executable, "-m", "activity_logging", "worker", "--redis-url", cluster.url,
             "--database-url", pg_url, "--schema", pg_schema, "--stream", stream,
             "--consumer", f"w{i}", "--max-wait", "0.1", "--claim-idle", "2"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(2)]
        n = 6_000
        producers += [subprocess.Popen(
            [sys.executable, "-c", PRODUCER, cluster.url, stream, str(n), "8", f"{unique_name}-{p}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for p in range(3)]
        time.sleep(3.0)  # the workers are reading by now
        victim = cluster.nodes[2]
        victim.stop(kill=True)
        time.sleep(4.0)  # past cluster-node-timeout: the cluster is down
        assert all(w.poll() is None for w in workers), "a worker died while the cluster was down"
        victim.start()
        results = [p.communicate(timeout=120) for p in producers]
        assert all(p.returncode == 0 for p in producers), [err[-2000:] for _, err in results]
        stats = [json.loads(out.splitlines()[-1]) for out, _ in results]
        # A producer that closed while the cluster was still down spooled what it held (one
        # last try, then the spool: docs/reliability.md); the next start on this host adopts
        # and replays it, as a restarted service would.
        adopter = subprocess.run(
            [sys.executable, "-c", PRODUCER, cluster.url, stream, "100", "2",
             f"{unique_name}-adopter"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120)
        assert adopter.returncode == 0, adopter.stderr[-2000:]
        adopted = json.loads(adopter.stdout.splitlines()[-1])
        assert adopted["spool_adopted"] == sum(s["spool_pending"] for s in stats)
        stats.append(adopted)
        offered = 3 * n + 100

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            stored = len(keys_from_pg(pg_url, pg_schema, unique_name))
            if stored >= offered:
                break
            time.sleep(0.5)
        assert all(w.poll() is None for w in workers), "a worker died"
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=30) for w in workers]
        for log in logs:
            log.close()
        worker_logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
        assert codes == [0, 0], [text[-2000:] for text in worker_logs]
        assert all("Traceback" not in text for text in worker_logs)

        counted = sum(sum(v for k, v in s.items() if k.startswith(("dropped_", "lost")))
                      + s["unconfirmed"] for s in stats)
        ledger = ledger_of(offered, keys_from_pg(pg_url, pg_schema, unique_name), counted=counted)
        ledger.assert_balanced()
        assert ledger.duplicates == 0 and ledger.stored == offered  # nothing lost or twice
        assert sum(s["spooled"] for s in stats) > 0  # the producers did see the outage
    finally:
        for proc in [*workers, *producers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        cluster.cleanup()
