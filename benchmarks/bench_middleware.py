"""Overhead of ActivityContextMiddleware on a trivial Starlette endpoint, side by side.

Three measurements, each interleaving the variants round by round in one run so the shared
machine's noise hits all of them alike; each reports the median per-request time over rounds
and the overhead against the bare app:

1. raw ASGI: the app called directly with a prepared scope (no HTTP client): the most
   sensitive measure, the middleware's own cost against the cheapest possible baseline;
2. httpx.AsyncClient + ASGITransport: an in-process HTTP client;
3. uvicorn on loopback with a keep-alive httpx client: a real server; both variants are
   served by one process (dispatched by path) so they share its scheduling;
4. ``@log_activity`` on a trivial function, logger off and on (the decorator's own cost).

Variants: ``bare`` (no middleware), ``mw`` (defaults: context + request id, no request
activity), ``mw+log`` (``log_requests=True`` into an ``ActivityHandler`` writing to a
temporary SQLite file), the last in 1. and 2. only.

    .venv/bin/python benchmarks/bench_middleware.py            # all three
    .venv/bin/python benchmarks/bench_middleware.py --quick    # fewer rounds
    .venv/bin/python benchmarks/bench_middleware.py --rounds 2 # the smoke test's run
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from activity_logging import ActivityContextMiddleware, ActivityHandler

App = Callable[[Any, Any, Any], Awaitable[None]]


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(variant: str) -> App:
    app = Starlette(routes=[Route("/hello", hello)])
    if variant == "bare":
        return app
    return ActivityContextMiddleware(app, log_requests=(variant == "mw+log"))


def report(title: str, samples: dict[str, list[float]], unit: str = "request") -> None:
    """Print median µs/request per variant and its overhead versus ``bare``.

    The overhead is the median over rounds of (variant / bare - 1) within the same round,
    so a noisy stretch of the shared machine shifts both sides of a ratio together; the
    inter-quartile range of those per-round overheads shows how far to trust it. The best
    (fastest) rounds compare the two when the machine was quietest: the CPU cost itself.
    """
    print(f"\n{title}")
    for name, values in samples.items():
        med = statistics.median(values)
        if name == "bare":
            print(f"  {name:<7} {med:9.2f} µs/{unit}")
            continue
        ratios = [(v / b - 1.0) * 100.0 for v, b in zip(values, samples["bare"], strict=True)]
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        deltas = [v - b for v, b in zip(values, samples["bare"], strict=True)]
        best = (min(values) / min(samples["bare"]) - 1.0) * 100.0
        print(f"  {name:<7} {med:9.2f} µs/{unit}  overhead {q2:+6.2f}% "
              f"(IQR {q1:+.2f}..{q3:+.2f}%), +{statistics.median(deltas):.2f} µs; "
              f"best rounds {min(values):.2f} vs {min(samples['bare']):.2f} µs ({best:+.2f}%)")


# --- 1. raw ASGI -------------------------------------------------------------------------------


async def bench_raw(apps: dict[str, App], rounds: int, per_round: int) -> dict[str, list[float]]:
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/hello", "raw_path": b"/hello", "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 8000), "client": ("203.0.113.5", 40000),
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                await app(dict(scope_base), receive, send)
            samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    return samples


# --- 2. httpx + ASGITransport --------------------------------------------------------------------


async def bench_asgi_transport(apps: dict[str, App], rounds: int,
                               per_round: int) -> dict[str, list[float]]:
    clients = {
        name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.5", 1)),
                                base_url="http://bench")
        for name, app in apps.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in apps}
    try:
        for _ in range(rounds):
            for name, client in clients.items():
                start = time.perf_counter()
                for _ in range(per_round):
                    response = await client.get("/hello")
                    assert response.status_code == 200
                samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


# --- 3. uvicorn on loopback ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_dispatcher(variants: list[str]) -> App:
    """One ASGI app serving ``/<variant>/hello`` from each variant's app.

    Both variants live in one server process and are hit over one keep-alive connection, so
    process placement and scheduling on the shared cores cannot favour either of them; the
    dispatcher's own cost is the same for both.
    """
    apps = {f"/{v}/hello": make_app(v) for v in variants}
    fallback = make_app("bare")

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        app = apps.get(scope.get("path", ""), fallback) if scope["type"] == "http" else fallback
        await app(scope, receive, send)

    for app in apps.values():
        # the inner Starlette apps route on /<variant>/hello too
        inner = app.app if isinstance(app, ActivityContextMiddleware) else app
        assert isinstance(inner, Starlette)
        for v in variants:
            inner.router.routes.append(Route(f"/{v}/hello", hello))
    return dispatch


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(make_dispatcher(["bare", "mw"]), host="127.0.0.1", port=port,
                log_level="warning", access_log=False, log_config=None)


def bench_uvicorn(variants: list[str], rounds: int, per_round: int) -> dict[str, list[float]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port)])
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                              headers={"User-Agent": "bench/1.0"})
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/bare/hello")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for variant in variants:
                url = f"/{variant}/hello"
                start = time.perf_counter()
                for _ in range(per_round):
                    client.get(url)
                samples[variant].append((time.perf_counter() - start) / per_round * 1e6)
        client.close()
        return samples
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- 4. @log_activity ------------------------------------------------------------------------


def bench_decorator(rounds: int, per_round: int) -> dict[str, list[float]]:
    """A trivial sync function: plain, decorated with its logger off, and on (NullHandler)."""
    from activity_logging import log_activity

    off = logging.getLogger("bench.decorator.off")
    off.setLevel(logging.CRITICAL)
    off.propagate = False
    on = logging.getLogger("bench.decorator.on")
    on.setLevel(logging.INFO)
    on.addHandler(logging.NullHandler())
    on.propagate = False

    def plain(x: int) -> dict[str, int]:
        return {"id": x}

    funcs = {
        "bare": plain,
        "off": log_activity("bench", target_type="thing", logger=off)(plain),
        "on": log_activity("bench", target_type="thing", logger=on)(plain),
    }
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            start = time.perf_counter()
            for i in range(per_round):
                func(i)
            samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    return samples


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
    tmp = Path(tempfile.mkdtemp(prefix="bench-mw-"))
    handler = ActivityHandler(database_url=f"sqlite:///{tmp / 'bench.db'}")
    log = logging.getLogger("activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    apps = {v: make_app(v) for v in ("bare", "mw", "mw+log")}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {rounds} interleaved rounds")
    try:
        report(f"1. raw ASGI call ({rounds} rounds x 1000 requests per variant)",
               asyncio.run(bench_raw(apps, rounds, 1000)))
        report(f"2. httpx.AsyncClient + ASGITransport ({rounds} rounds x 150 requests)",
               asyncio.run(bench_asgi_transport(apps, rounds, 150)))
        handler.flush(30.0)
        stats = handler.stats()
        print(f"  (mw+log activities: enqueued {stats['enqueued']}, sent {stats['sent']}, "
              f"dropped {stats['dropped_queue_full']})")
    finally:
        handler.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report(f"3. uvicorn on loopback, one keep-alive httpx connection ({rounds} rounds x 150 "
           "requests)", bench_uvicorn(["bare", "mw"], rounds, 150))
    report(f"4. @log_activity on a trivial function: plain / logger off / on with a NullHandler "
           f"({rounds} rounds x 5000 calls)", bench_decorator(rounds, 5000), unit="call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
