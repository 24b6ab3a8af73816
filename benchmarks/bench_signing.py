"""What signing costs, side by side in one run (docs/performance.md, "Signing and the chain").

1. listener: redaction + batching + signing of queued records, per record, without and
   with a key (the listener's work is the caller's when logging flat out: it shares the GIL);
2. caller: ``log.info`` through a NullHandler, an unsigned and a signed ActivityHandler,
   interleaved rounds, shipping to the real Redis;
3. worker: decode + build (+ check + seal) per row, CPU only;
4. verify: rows/s of ``activity-logging verify`` with the key over a sealed table in the real
   PostgreSQL (streamed read + seal check + links), beside a plain ``count(*)`` scan.

Run:  .venv/bin/python benchmarks/bench_signing.py [--rows 200000] [--rounds 7] [--per-round 30000]
                                                   [--worker-entries 200]
Uses a unique stream and schema and removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.crud_rows

from activity_logging import db
from activity_logging.handler import ActivityHandler
from activity_logging.redact import Redactor
from activity_logging.rows import build_activity
from activity_logging.signing import EntryAuth, EntrySigner, KeyRing, check_entry, seal
from activity_logging.snapshot import Snapshotter
from activity_logging.wire import WireEncoder, decode_entry

KEY = "bench:" + "k" * 40
EXTRA = {
    "actor_type": "agent", "actor_id": "agent-17", "target_type": "call", "target_id": "call-123",
    "changes": {"status": {"old": "ringing", "new": "answered"}}, "queue": "support",
    "campaign": "spring", "description": "Call answered",
}
REDIS_URL = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
PG_URL = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"


def queued(n: int) -> list[bytes]:
    snap = Snapshotter(context=False)
    out = []
    for i in range(n):
        rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
        rec.__dict__.update(EXTRA, i=i)
        out.append(snap.take(rec))
    return out


def listener_side(rounds: int = 30, batch: int = 100, batches: int = 100) -> dict[str, Any]:
    """Per record: redaction + batch + entry, without a key and with one (medians of rounds,
    the two interleaved)."""
    items = queued(batch)
    redactor = Redactor()
    plain = WireEncoder("p")
    signed = WireEncoder("p", signer=EntrySigner(KeyRing.parse(KEY).current))

    def run(encoder: WireEncoder) -> float:
        start = time.perf_counter()
        for _ in range(batches):
            taken = list(items)
            redactor.redact_in_place(taken)
            encoder.batch(taken).entry()
        return (time.perf_counter() - start) / (batches * batch) * 1e6

    a, b = [], []
    for _ in range(rounds):
        a.append(run(plain))
        b.append(run(signed))
    unsigned, with_key = statistics.median(a), statistics.median(b)
    return {"unsigned_us": round(unsigned, 3), "signed_us": round(with_key, 3),
            "signing_adds_us": round(with_key - unsigned, 3),
            "redaction_batch_and_signing_us": round(with_key, 3)}


def timed_calls(log: logging.Logger, n: int) -> float:
    info = log.info
    start = time.perf_counter()
    for _ in range(n):
        info("call_created", extra=EXTRA)
    return (time.perf_counter() - start) / n * 1e6


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def caller_side(rounds: int, per_round: int) -> dict[str, Any]:
    stream = f"bench:sign:{uuid.uuid4().hex[:8]}"
    null = _logger("bench.sign.null", logging.NullHandler())
    plain_h = ActivityHandler(redis_url=REDIS_URL, stream=stream + ":u", queue_size=per_round * 2,
                              signing_key="")
    signed_h = ActivityHandler(redis_url=REDIS_URL, stream=stream + ":s",
                               queue_size=per_round * 2, signing_key=KEY)
    plain, signed = _logger("bench.sign.plain", plain_h), _logger("bench.sign.signed", signed_h)
    times: dict[str, list[float]] = {"null": [], "unsigned": [], "signed": []}
    try:
        for log in (null, plain, signed):
            timed_calls(log, 2000)
        plain_h.flush(30)
        signed_h.flush(30)
        for i in range(rounds):  # the two handlers alternate which goes first
            times["null"].append(timed_calls(null, per_round))
            pair = [("unsigned", plain, plain_h), ("signed", signed, signed_h)]
            for name, log, handler in pair if i % 2 == 0 else pair[::-1]:
                times[name].append(timed_calls(log, per_round))
                handler.flush(60)
    finally:
        plain_h.close()
        signed_h.close()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream + ":u", stream + ":s")
        client.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios_u = [u / n for u, n in zip(times["unsigned"], times["null"], strict=True)]
    ratios_s = [s / n for s, n in zip(times["signed"], times["null"], strict=True)]
    return {"null_us": round(med["null"], 2), "unsigned_us": round(med["unsigned"], 2),
            "signed_us": round(med["signed"], 2),
            "unsigned_ratio": round(statistics.median(ratios_u), 2),
            "signed_ratio": round(statistics.median(ratios_s), 2),
            "ratio_range_unsigned": [round(min(ratios_u), 2), round(max(ratios_u), 2)],
            "ratio_range_signed": [round(min(ratios_s), 2), round(max(ratios_s), 2)],
            "dropped": plain_h.stats()["dropped_queue_full"] + signed_h.stats()["dropped_queue_full"]}


def worker_side(entries: int = 200, per_entry: int = 100, rounds: int = 7) -> dict[str, Any]:
    items = queued(per_entry)
    ring = KeyRing.parse(KEY)
    plain = [WireEncoder("p").batch(items).entry() for _ in range(entries)]
    signer = WireEncoder("p", signer=EntrySigner(ring.current))
    signed = [signer.batch(items).entry() for _ in range(entries)]

    def run(batch: list[dict[str, Any]], keyring: KeyRing | None) -> float:
        start = time.perf_counter()
        for fields in batch:
            auth = check_entry(fields, keyring)
            meta, wires = decode_entry(fields)
            for position, wire in enumerate(wires):
                row = build_activity(wire, meta)
                if auth is not None:
                    seal(row, ring.current, auth, position)
        return (time.perf_counter() - start) / (entries * per_entry) * 1e6

    a, b = [], []
    for _ in range(rounds):
        a.append(run(plain, None))
        b.append(run(signed, ring))
    return {"unsigned_us_per_row": round(statistics.median(a), 2),
            "signed_us_per_row": round(statistics.median(b), 2),
            "ratio": round(statistics.median(b) / statistics.median(a), 2)}


async def verify_side(n: int) -> dict[str, Any]:
    from activity_logging.chain import ChainVerifier
    from activity_logging.chain_store import load_cuts, stream_rows
    from activity_logging.store import make_store
    from tests.crud_rows import make_rows

    schema = f"bench_sign_{uuid.uuid4().hex[:8]}"
    admin = await db.connect_pg(PG_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        await db.init_db(PG_URL, schema=schema)
        ring = KeyRing.parse(KEY)
        rows = make_rows(n, producer_id="bench")
        tag = os.urandom(32)
        for start in range(0, n, 100):  # entries of 100, chained like a producer's
            auth = EntryAuth("bench", tag if start + 100 >= n else os.urandom(32), b"", 100, True)
            for position, row in enumerate(rows[start:start + 100]):
                seal(row, ring.current, auth, position)
        store = make_store(PG_URL, schema=schema)
        await store.connect()
        for i in range(0, n, 10_000):
            await store.insert_activities(rows[i:i + 10_000])
        await store.close()
        conn = await db.connect_pg(PG_URL, schema=schema)
        started = time.perf_counter()
        await conn.fetchval("SELECT count(*) FROM (SELECT * FROM activity_logs ORDER BY "
                            "producer_id, seq, id) s")
        scan = time.perf_counter() - started
        await conn.close()
        started = time.perf_counter()
        async with db.read_connection(PG_URL, schema=schema) as read:
            verifier = ChainVerifier(keyring=ring, cuts=await load_cuts(read),
                                     now=rows[-1]["timestamp"], open_grace=1e12)
            async for row in stream_rows(read):
                verifier.feed(row)
        reports = verifier.finish()
        elapsed = time.perf_counter() - started
        return {"rows": n, "rows_per_s": round(n / elapsed), "sealed": reports[0].sealed,
                "sorted_scan_in_postgresql_rows_per_s": round(n / scan),
                "fraction_of_scan": round(scan / elapsed, 3)}
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=30_000)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--worker-entries", type=int, default=200,
                        help="entries of 100 records decoded per worker round (200)")
    args = parser.parse_args()
    results = {
        "listener_per_record": listener_side(),
        "worker_per_row": worker_side(args.worker_entries),
        "caller_vs_null_handler": caller_side(args.rounds, args.per_round),
        "verify": asyncio.run(verify_side(args.rows)),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
