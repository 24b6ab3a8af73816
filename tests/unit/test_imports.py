"""Imports keep the promises the package makes: a Redis handler pulls in no database stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "asyncpg", "aiosqlite", "starlette", "jinja2", "prometheus_client")


def _modules_after(code: str) -> set[str]:
    probe = (f"{code}\nimport sys\n"
             f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True)
    return set(out.stdout.split())


def test_importing_the_package_imports_no_database_or_web_stack() -> None:
    assert _modules_after("import activity_logging") == set()


def test_building_and_closing_a_redis_handler_imports_no_database_stack() -> None:
    # Redis need not answer: the handler builds its client without connecting
    code = ("from activity_logging import ActivityHandler\n"
            "h = ActivityHandler(redis_url='redis://127.0.0.1:1/0', stream='import-probe',"
            " spool_path='off', close_timeout=0.5)\n"
            "import logging\nlogging.getLogger('probe').addHandler(h)\n"
            "logging.getLogger('probe').warning('x', extra={'actor_id': 'a'})\n"
            "h.close()")
    assert _modules_after(code) == set()


@pytest.mark.parametrize("name", ["ContextFilter", "activity_context", "log_activity",
                                  "severity_to_level", "flush_handlers"])
def test_the_light_public_names_stay_light(name: str) -> None:
    assert _modules_after(f"from activity_logging import {name}") == set()
