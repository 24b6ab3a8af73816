"""Signed trails through the lifecycles applications have, as real processes (embedded SQLite,
key from the environment): a script that logs once and exits, fork and multiprocessing
children, and ``kill -9``. Each trail that ended normally verifies closed; the killed one is
reported as an open tail (the window promise 6 describes), never as intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from activity_logging.cli import main

pytestmark = [pytest.mark.fault]

ROOT = Path(__file__).resolve().parents[2]
KEY = "life:" + "L" * 40

PRELUDE = """
import logging, os, sys
from activity_logging import ActivityHandler
log = logging.getLogger("activity")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(ActivityHandler(database_url=os.environ["DB_URL"], flush_interval=0.05))
"""


def run(tmp_path: Path, body: str, *, wait: bool = True) -> subprocess.Popen[str]:
    script = tmp_path / "app.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = {**os.environ, "DB_URL": f"sqlite:///{tmp_path / 'trail.db'}",
           "ACTIVITY_LOG_SIGNING_KEY": KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, text=True, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if wait:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    return proc


def verify(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    key = tmp_path / "key"
    key.write_text(KEY)
    code = main(["verify", "--database-url", f"sqlite:///{tmp_path / 'trail.db'}",
                 "--signing-key-file", str(key), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_a_script_that_logs_once_and_exits_leaves_a_closed_verified_trail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path, 'log.info("script_ran", extra={"actor_id": "cron"})\n')
    code, report = verify(tmp_path, capsys, "--open-grace", "0")
    assert code == 0, report
    (chain,) = report["chains"]
    assert (chain["rows"], chain["sealed"], chain["closed"]) == (2, 2, True)


def test_fork_and_multiprocessing_children_each_close_their_own_chain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path, """
        import multiprocessing
        log.info("parent_before")
        pid = os.fork()
        if pid == 0:
            log.info("forked_child")
            logging.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)

        def work(i):
            log.info("pool_child", extra={"i": i})

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            procs = [ctx.Process(target=work, args=(i,)) for i in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            log.info("parent_after")
        """)
    code, report = verify(tmp_path, capsys, "--open-grace", "0")
    assert code == 0, report
    chains = report["chains"]
    assert len(chains) == 4  # the parent, the forked child, two multiprocessing children
    assert all(c["closed"] and c["sealed"] == c["rows"] for c in chains)
    assert sorted(c["rows"] for c in chains) == [2, 2, 2, 3]


def test_kill_9_leaves_an_open_tail_that_verify_reports(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = run(tmp_path, """
        import time
        for i in range(5):
            log.info("working", extra={"i": i})
        log.handlers[0].flush(10)
        print("ready", flush=True)
        time.sleep(60)
        """, wait=False)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)  # reaps it and closes the pipes
    code, report = verify(tmp_path, capsys)  # within the grace period: still open, not wrong
    assert code == 0 and report["chains"][0]["closed"] is False
    code, report = verify(tmp_path, capsys, "--open-grace", "0")
    assert code == 1
    assert [p["kind"] for c in report["chains"] for p in c["problems"]] == ["open_tail"]
