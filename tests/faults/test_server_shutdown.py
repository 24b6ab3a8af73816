"""A real uvicorn process stopped with a real SIGTERM: the records it logged all arrive.

uvicorn re-raises SIGTERM once its lifespan shutdown has completed, so the process dies by
the signal: ``logging.shutdown()`` (atexit) never runs, and what the ``ActivityHandler``
still holds dies with it. The app is configured as the README says (``dictConfig`` with an
``ActivityHandler`` shipping to Redis), logs one record per HTTP request and
``system_shutdown`` in its lifespan shutdown. The handler's ``flush_interval`` is far
longer than the test, so a record reaches the stream before the process ends only if a
shutdown flush ships it:

- with ``ActivityContextMiddleware`` (``app.add_middleware``): every record arrives;
- with the middleware around an ASGI app without lifespan support: every record arrives;
- without the middleware, with the documented ``flush_handlers()`` recipe: every record arrives;
- without either (the control): ``system_shutdown`` is missing. This is the window the
  middleware closes, and it proves the other scenarios depend on the shutdown flush.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.ledger import keys_from_stream, ledger_of

pytestmark = [pytest.mark.fault, pytest.mark.integration]

REQUESTS = 5
ROOT = Path(__file__).resolve().parents[2]

APP_MODULE = textwrap.dedent('''
    """The app under test; the scenario comes from SHUTDOWN_VARIANT."""

    import logging
    import logging.config
    import os
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from activity_logging import ActivityContextMiddleware, flush_handlers

    TAG = os.environ["SHUTDOWN_TAG"]
    VARIANT = os.environ["SHUTDOWN_VARIANT"]

    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"activity": {
            "()": "activity_logging.ActivityHandler",
            "redis_url": os.environ["SHUTDOWN_REDIS_URL"],
            "stream": os.environ["SHUTDOWN_STREAM"],
            # longer than the whole test: nothing ships by itself before the shutdown
            "flush_interval": 120.0,
        }},
        "loggers": {"activity": {"handlers": ["activity"], "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("activity")


    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
            log.info("system_shutdown", extra={"target_type": "service",
                                               "target_id": f"{TAG}-shutdown"})
        finally:
            if VARIANT == "recipe":
                flush_handlers()  # docs/web.md: the recipe for apps without the middleware


    fastapi_app = FastAPI(lifespan=lifespan)
    if VARIANT == "middleware":
        fastapi_app.add_middleware(ActivityContextMiddleware)


    @fastapi_app.get("/ready")
    async def ready():
        return {"ok": True}


    @fastapi_app.get("/log/{n}")
    async def log_one(n: int):
        log.info("request_handled", extra={"target_type": "request", "target_id": f"{TAG}-{n}"})
        return {"n": n}


    async def no_lifespan_app(scope, receive, send):
        """A bare ASGI app without lifespan support (uvicorn's "auto" mode: it raises)."""
        if scope["type"] != "http":
            raise ValueError(f"no {scope['type']} support")
        path = scope["path"]
        if path.startswith("/log/"):
            log.info("request_handled",
                     extra={"target_type": "request", "target_id": f"{TAG}-{path[5:]}"})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


    if VARIANT == "no_lifespan":
        app = ActivityContextMiddleware(no_lifespan_app)
    else:
        app = fastapi_app
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_log_and_terminate(tmp_path: Path, variant: str, redis_url: str, stream: str,
                            tag: str) -> tuple[int, Counter[str]]:
    """Start uvicorn on the app, make REQUESTS logging requests, SIGTERM it, read the stream.

    Returns the process's exit status and the keys that reached the stream.
    """
    (tmp_path / "shutdown_app.py").write_text(APP_MODULE)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "SHUTDOWN_TAG": tag, "SHUTDOWN_VARIANT": variant,
        "SHUTDOWN_REDIS_URL": redis_url, "SHUTDOWN_STREAM": stream,
    }
    output = tmp_path / "uvicorn.log"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "shutdown_app:app", "--host", "127.0.0.1",
             "--port", str(port), "--lifespan", "auto", "--no-access-log"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"uvicorn did not start:\n{output.read_text()}")
                    time.sleep(0.1)
                for n in range(REQUESTS):
                    assert client.get(f"/log/{n}").status_code == 200
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(output.read_text())  # shown on failure: uvicorn's own account of the shutdown
    return returncode, keys_from_stream(redis_url, stream, tag)


@pytest.mark.parametrize("variant", [
    pytest.param("middleware", id="fastapi-with-middleware"),
    pytest.param("no_lifespan", id="middleware-around-an-app-without-lifespan"),
    pytest.param("recipe", id="fastapi-with-flush_handlers-in-lifespan"),
])
def test_sigterm_of_uvicorn_loses_no_record(
    variant: str, tmp_path: Path, redis_url: str, redis_stream: str, unique_name: str
) -> None:
    returncode, keys = serve_log_and_terminate(tmp_path, variant, redis_url, redis_stream,
                                               unique_name)
    # died by the re-raised signal: atexit (logging.shutdown) did not run, the flush did it
    assert returncode == -signal.SIGTERM
    expected = {f"{unique_name}-{n}" for n in range(REQUESTS)}
    if variant != "no_lifespan":  # that app has no lifespan to log system_shutdown in
        expected.add(f"{unique_name}-shutdown")
    ledger_of(len(expected), keys).assert_balanced()
    assert set(keys) == expected


def test_control_without_middleware_or_recipe_the_shutdown_record_is_lost(
    tmp_path: Path, redis_url: str, redis_stream: str, unique_name: str
) -> None:
    returncode, keys = serve_log_and_terminate(tmp_path, "plain", redis_url, redis_stream,
                                               unique_name)
    assert returncode == -signal.SIGTERM
    # the window this file is about: without a shutdown flush the last record dies with
    # the process (if this starts to pass, something else now flushes at SIGTERM)
    assert f"{unique_name}-shutdown" not in keys
