"""The examples run on the embedded default, so they cannot rot; and the newcomer's path
through the README (make demo, the example, section 4) has no trip in it."""

from __future__ import annotations

import asyncio
import configparser
import importlib.metadata
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.crud_rows import make_rows, seed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
README_SECTION_4 = "<!-- README §4: executed by tests/unit/test_examples.py -->"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(extra)
    return env


def test_basic_logging_example_runs_and_stores_its_activities(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ACTIVITY_DB"] = str(tmp_path / "ex.db")
    out = subprocess.run([sys.executable, str(EXAMPLES / "basic_logging.py")], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert "system_event" in lines[0] and "[REDACTED]" in lines[0] and "never-stored" not in out
    assert "call_updated" in lines[1] and "warning" in lines[1] and "198.51.100.7" in lines[1]


def test_demo_command_runs_on_the_embedded_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "activity_logging", "demo", "--count", "50", "--seed", "7",
         "--database-url", f"sqlite:///{tmp_path / 'demo.db'}"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "By activity type:" in result.stdout
    assert "call_created                 50" in result.stdout.replace("\t", " ")


# --- make demo installs what the README's next command needs -------------------------------


def _declared(extras: tuple[str, ...]) -> list[Requirement]:
    """install_requires plus ``extras``, read from setup.cfg (the source, not a stale install)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution those requirements install here (with the extras they ask for)."""
    seen: set[str] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional dependency this machine does not have
        if key in seen and not extras:
            continue
        seen.add(key)
        for line in requires:
            req = Requirement(line)
            envs = [{"extra": e} for e in ("", *extras)]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return seen


def _modules_outside(allowed: set[str]) -> set[str]:
    """Top-level modules installed here by a distribution outside ``allowed``."""
    blocked = set()
    for module, dists in importlib.metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or module == "activity_logging":
            continue
        if not any(canonicalize_name(d) in allowed for d in dists):
            blocked.add(module)
    return blocked


_ONLY_DECLARED = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Undeclared(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not declared)", name=name)
        return None
sys.meta_path.insert(0, Undeclared())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_with_only(extras: tuple[str, ...], argv: list[str], tmp_path: Path
                   ) -> subprocess.CompletedProcess[str]:
    """Run a script in a process where only what setup.cfg declares can be imported."""
    blocked = _modules_outside(_closure(_declared(extras)))
    boot = tmp_path / "only_declared.py"
    boot.write_text(_ONLY_DECLARED)
    return subprocess.run([sys.executable, str(boot), ",".join(sorted(blocked)), *argv],
                          env=_env(), capture_output=True, text=True, timeout=120, check=False)


def test_callcenter_selftest_needs_nothing_beyond_the_examples_extra(tmp_path: Path) -> None:
    done = _run_with_only(("examples",), [str(EXAMPLES / "callcenter_app.py"), "--selftest",
                                          "--db", str(tmp_path / "cc.db")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "selftest: ok" in done.stdout


def test_without_the_examples_extra_the_callcenter_example_cannot_import(tmp_path: Path) -> None:
    """The control: what a bare `pip install -e .` gave the README's next command."""
    done = _run_with_only((), [str(EXAMPLES / "callcenter_app.py"), "--help"], tmp_path)
    assert done.returncode != 0
    assert "No module named 'fastapi'" in done.stderr


def test_make_demo_installs_the_examples_extra() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True).stdout.splitlines()
    installs = [i for i, line in enumerate(plan) if "pip install" in line
                and re.search(r"""-e ['"]?\.\[examples\]""", line)]
    runs = [i for i, line in enumerate(plan) if line.rstrip().endswith("activity-logging demo")]
    assert installs and runs and installs[0] < runs[0], plan


# --- the example server tells you where it is ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_callcenter_server_prints_its_url_and_serves_there(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "callcenter_app.py"), "--port", str(port),
         "--db", str(tmp_path / "served.db")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read_stdout() -> None:  # readline blocks: a thread, so the wait below has a bound
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        first = lines.get(timeout=60)
        match = re.search(r"(http://127\.0\.0\.1:\d+)", first)
        assert match, first
        assert match.group(1) == f"http://127.0.0.1:{port}"
        assert "served.db" in first
        deadline = time.monotonic() + 60
        while True:  # the URL is printed just before uvicorn binds: a bound, not a timing assert
            try:
                if httpx.get(f"{match.group(1)}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


# --- README section 4 runs as written --------------------------------------------------------


def _readme_section_4() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(README_SECTION_4, 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    assert match, "the marked block must be the python block right after the marker"
    return match.group(1)


def test_readme_section_4_runs_as_written(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'readme.db'}"
    now = datetime.now(UTC)
    rows = make_rows(24, start=now - timedelta(days=3), step=timedelta(hours=2))
    asyncio.run(seed(db, rows))
    script = tmp_path / "readme_section_4.py"
    script.write_text(_readme_section_4())
    done = subprocess.run([sys.executable, str(script)], env=_env(DATABASE_URL=db), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    created = sum(1 for r in rows if r["activity_type"] == "call_created")
    assert lines[-1] == f"{created} calls created in 7 days; {len(rows)} activities in 30 days"
    assert len(lines) == 6
    assert not (tmp_path / "activity_logs.db").exists()  # it used DATABASE_URL
