"""Run the ``activity-logging`` command in-process, for tests."""

from __future__ import annotations

import pytest

from activity_logging.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err
