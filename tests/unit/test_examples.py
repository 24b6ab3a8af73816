"""The examples run on the embedded default, so they cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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
