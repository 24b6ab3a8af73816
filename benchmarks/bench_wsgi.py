"""Overhead of ActivityWSGIMiddleware per request, side by side with the bare WSGI app.

Like bench_middleware.py (whose ``report`` it uses), each measurement interleaves the
variants round by round in one run so the shared machine's noise hits all of them alike:

1. raw WSGI: a trivial app (``[b"ok"]``) called directly with a prepared environ, its body
   iterated and closed as a server does: the middleware's own cost, most sensitively;
2. raw WSGI, a Flask app with one route: the same cost next to a realistic baseline;
3. ``wsgiref`` on loopback (one connection per request: it speaks HTTP/1.0) with httpx,
   both variants served by one server process, dispatched by path.

Variants: ``bare``, ``mw`` (defaults: context + request id, no request activity),
``mw+log`` (``log_requests=True`` into an ``ActivityHandler`` writing to a temporary
SQLite file), the last in 1. and 2. only.

    .venv/bin/python benchmarks/bench_wsgi.py            # all three
    .venv/bin/python benchmarks/bench_wsgi.py --quick    # fewer rounds
    .venv/bin/python benchmarks/bench_wsgi.py --rounds 2 # the smoke test's run
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activity_logging import ActivityHandler, ActivityWSGIMiddleware
from benchmarks.bench_middleware import _free_port, report


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def flask_hello() -> WSGIApplication:
    import flask

    app = flask.Flask("bench")

    @app.get("/hello")
    def index() -> str:
        return "ok"

    return app


def wrap(app: WSGIApplication, variant: str) -> WSGIApplication:
    if variant == "bare":
        return app
    return ActivityWSGIMiddleware(app, log_requests=(variant == "mw+log"))


# --- 1. and 2. raw WSGI --------------------------------------------------------------------------


def bench_raw(apps: dict[str, WSGIApplication], rounds: int, per_round: int) -> dict[str, list[float]]:
    environ_base: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/hello", "QUERY_STRING": "",
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.5", "HTTP_HOST": "bench", "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        return len

    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                body = app(dict(environ_base), start_response)
                for _chunk in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    return samples


# --- 3. wsgiref on loopback ----------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(port: int) -> None:
    apps = {f"/{v}/hello": wrap(hello, v) for v in ("bare", "mw")}

    def dispatch(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return apps[environ["PATH_INFO"]](environ, start_response)

    server = make_server("127.0.0.1", port, dispatch, handler_class=QuietHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()


def bench_wsgiref(variants: list[str], rounds: int, per_round: int) -> dict[str, list[float]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port)])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"User-Agent": "bench/1.0"}) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/bare/hello")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("wsgiref did not start") from None
                    time.sleep(0.1)
            samples: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(rounds):
                for variant in variants:
                    url = f"/{variant}/hello"
                    start = time.perf_counter()
                    for _ in range(per_round):
                        client.get(url)
                    samples[variant].append((time.perf_counter() - start) / per_round * 1e6)
            return samples
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (8)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds, at least 2 (default 60, or 8 with --quick)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port)
        return 0

    rounds = args.rounds if args.rounds is not None else 8 if args.quick else 60
    if rounds < 2:
        parser.error("--rounds must be at least 2 (the overhead's quartiles need two rounds)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-wsgi-"))
    handler = ActivityHandler(database_url=f"sqlite:///{tmp / 'bench.db'}")
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    variants = ("bare", "mw", "mw+log")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {rounds} interleaved rounds")
    try:
        report(f"1. raw WSGI call, trivial app ({rounds} rounds x 2000 requests per variant)",
               bench_raw({v: wrap(hello, v) for v in variants}, rounds, 2000))
        flask_app = flask_hello()
        report(f"2. raw WSGI call, Flask app ({rounds} rounds x 500 requests per variant)",
               bench_raw({v: wrap(flask_app, v) for v in variants}, rounds, 500))
        handler.flush(30.0)
        stats = handler.stats()
        print(f"  (mw+log activities: enqueued {stats['enqueued']}, sent {stats['sent']}, "
              f"dropped {stats['dropped_queue_full']})")
    finally:
        handler.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report(f"3. wsgiref on loopback, a connection per request ({rounds} rounds x 100 requests)",
           bench_wsgiref(["bare", "mw"], rounds, 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
