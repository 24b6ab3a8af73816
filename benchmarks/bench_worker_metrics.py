"""One worker's drain rate with and without its Prometheus metrics, side by side.

    .venv/bin/python benchmarks/bench_worker_metrics.py [--records 100000] [--per-entry 500]
        [--rounds 6] [--scrape-interval 0.5]

Each round fills a throwaway stream with the same backlog and times one ``ActivityWorker``
draining it (``stop_when_idle``), once without metrics and once with
``metrics.start_worker_metrics`` serving on a free port while another process scrapes it
every ``--scrape-interval`` seconds (Prometheus' default is 15 s: this is the pessimistic
case). The order alternates between rounds. Two figures per drain: the wall-clock rate, and
this process' CPU time per row (the worker's own cost, the server thread's included; less
disturbed than wall time by other work on the machine). Prints the medians and the median
of the per-round ratios (the two drains of a round run back to back, under the same load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid

import redis
from prometheus_client import CollectorRegistry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from activity_logging.metrics import start_worker_metrics
from activity_logging.worker import ActivityWorker, tune_gc_for_draining
from benchmarks.bench_worker import PG_URL, REDIS_URL, drop_schema, fill_stream, fresh_schema

# Scrapes from its own process, so its client work is not counted as the worker's CPU.
SCRAPER = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
while True:
    time.sleep(interval)
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
    print("scraped", flush=True)
"""


async def drain_once(records: int, per_entry: int, *, with_metrics: bool,
                     scrape_interval: float) -> tuple[float, float, int]:
    """(rows/s, CPU µs per row, scrapes answered) of one drain of a fresh backlog."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    stream = f"activity_bench:{schema}"
    client = redis.Redis.from_url(REDIS_URL)
    await fresh_schema(schema)
    try:
        fill_stream(client, stream, records, per_entry)
        worker = ActivityWorker(REDIS_URL, PG_URL, stream=stream, schema=schema, consumer="bench")
        server = scraper = None
        if with_metrics:
            server = start_worker_metrics(worker, 0, registry=CollectorRegistry())
            # Popen returns at once; nothing else runs on this loop before the timed drain.
            scraper = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-c", SCRAPER, server.url, str(scrape_interval)],
                stdout=subprocess.PIPE, text=True)
        cpu, start = time.process_time(), time.perf_counter()
        await worker.run(stop_when_idle=True)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        scrapes = 0
        if scraper is not None:
            scraper.terminate()
            out, _ = scraper.communicate(timeout=10)
            scrapes = out.count("scraped")
        if server is not None:
            server.close()
        inserted = worker.stats()["inserted"]
        assert inserted == records, (inserted, records)
        return inserted / elapsed, cpu / inserted * 1e6, scrapes
    finally:
        client.delete(stream, f"{stream}:dead")
        client.close()
        await drop_schema(schema)


async def main(records: int, per_entry: int, rounds: int, scrape_interval: float) -> None:
    tune_gc_for_draining()  # as the `worker` command does
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        # Alternate which goes first, so neither always runs on a colder machine.
        for with_metrics in ((False, True) if round_ % 2 == 0 else (True, False)):
            rate, cpu, scrapes = await drain_once(records, per_entry, with_metrics=with_metrics,
                                                  scrape_interval=scrape_interval)
            rates[with_metrics].append(rate)
            cpus[with_metrics].append(cpu)
            label = f"metrics ({scrapes} scrapes)" if with_metrics else "no metrics"
            print(f"round {round_ + 1}: {label:22} {rate:10,.0f} rows/s {cpu:7.2f} µs CPU/row",
                  flush=True)

    def paired(values: dict[bool, list[float]]) -> float:
        return statistics.median(m / p for m, p in zip(values[True], values[False], strict=True))

    print(f"# {records} records in entries of {per_entry}, {rounds} rounds, a scrape every "
          f"{scrape_interval:g}s")
    for name, values, unit in (("rate", rates, "rows/s"), ("CPU/row", cpus, "µs")):
        plain, measured = statistics.median(values[False]), statistics.median(values[True])
        print(f"{name:8} without metrics {plain:10,.2f} {unit}, with {measured:10,.2f} {unit}: "
              f"ratio of medians {measured / plain:.3f}, median of per-round ratios "
              f"{paired(values):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-entry", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--scrape-interval", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.records, args.per_entry, args.rounds, args.scrape_interval))
