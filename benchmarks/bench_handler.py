"""Handler benchmarks: caller-side cost vs NullHandler (interleaved), sustained rate, drain rate.

Run:  .venv/bin/python benchmarks/bench_handler.py [--redis-url redis://127.0.0.1:6379/0]
Needs the real Redis. Uses a unique stream and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import uuid

import redis

from activity_logging.handler import ActivityHandler

EXTRA = {
    "actor_type": "agent", "actor_id": "agent-17", "target_type": "call", "target_id": "call-123",
    "changes": {"status": {"old": "ringing", "new": "answered"}}, "queue": "support",
    "campaign": "spring", "description": "Call answered",
}  # 8 extra fields, one of them a dict that must be snapshotted


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def timed_calls(log: logging.Logger, n: int) -> float:
    info = log.info
    extra = EXTRA
    start = time.perf_counter()
    for _ in range(n):
        info("call_created", extra=extra)
    return (time.perf_counter() - start) / n * 1e6


def caller_cost(url: str, stream: str, rounds: int, per_round: int) -> dict[str, float]:
    """Interleave NullHandler and ActivityHandler rounds; the listener ships while we log."""
    null_log = make_logger("bench.null", logging.NullHandler())
    handler = ActivityHandler(redis_url=url, stream=stream, queue_size=per_round * 2)
    act_log = make_logger("bench.activity", handler)
    null_us, act_us = [], []
    timed_calls(null_log, 2000)
    timed_calls(act_log, 2000)
    handler.flush(30)
    for _ in range(rounds):
        null_us.append(timed_calls(null_log, per_round))
        act_us.append(timed_calls(act_log, per_round))  # listener busy shipping the whole time
        handler.flush(60)  # let the listener finish before the next pair (not timed)
    stats = handler.stats()
    handler.close()
    n, a = statistics.median(null_us), statistics.median(act_us)
    return {"null_us": round(n, 2), "activity_us": round(a, 2), "ratio": round(a / n, 2),
            "dropped": stats["dropped_queue_full"], "sent": stats["sent"]}


def sustained(url: str, stream: str, n: int) -> dict[str, float]:
    """Records/s from the first log.info to the last record in the stream (flush included).

    The same loop through a NullHandler, run just before, is the ceiling this machine's
    Python allows (``logging`` alone): the ratio is the figure that travels between machines.
    """
    null_log = make_logger("bench.sustained_null", logging.NullHandler())
    start = time.perf_counter()
    for _ in range(n):
        null_log.info("call_created", extra=EXTRA)
    null_rate = n / (time.perf_counter() - start)
    handler = ActivityHandler(redis_url=url, stream=stream, queue_size=n)
    log = make_logger("bench.sustained", handler)
    start = time.perf_counter()
    info = log.info
    for _ in range(n):
        info("call_created", extra=EXTRA)
    logged = time.perf_counter()
    ok = handler.flush(120)
    done = time.perf_counter()
    stats = handler.stats()
    handler.close()
    return {"records": n, "flushed": ok, "records_per_s": round(n / (done - start)),
            "null_handler_per_s": round(null_rate),
            "fraction_of_null": round(n / (done - start) / null_rate, 2),
            "caller_only_per_s": round(n / (logged - start)), "sent": stats["sent"],
            "dropped": stats["dropped_queue_full"]}


def drain(url: str, stream: str, n: int) -> dict[str, float]:
    """Listener alone: a backlog of n records queued while it was stopped, then timed to empty."""
    handler = ActivityHandler(redis_url=url, stream=stream, queue_size=n)
    log = make_logger("bench.drain", handler)
    handler.listener.stop()
    for _ in range(n):
        log.info("call_created", extra=EXTRA)
    start = time.perf_counter()
    handler.listener.start()
    ok = handler.flush(120)
    elapsed = time.perf_counter() - start
    stats = handler.stats()
    handler.close()
    return {"records": n, "flushed": ok, "records_per_s": round(n / elapsed), "sent": stats["sent"],
            "batches": stats["batches_sent"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=300_000)
    args = parser.parse_args()
    stream = f"bench:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    try:
        results = {
            "caller_cost": caller_cost(args.redis_url, stream + ":c", args.rounds, args.per_round),
            "sustained": sustained(args.redis_url, stream + ":s", args.records),
            "drain": drain(args.redis_url, stream + ":d", args.records),
        }
    finally:
        for suffix in (":c", ":s", ":d"):
            client.delete(stream + suffix)
        client.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
