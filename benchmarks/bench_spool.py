"""Spool benchmark: the committed spool (git HEAD, or --baseline REV) against the working tree.

Run:  .venv/bin/python benchmarks/bench_spool.py [--frames 200] [--rounds 5] [--dir PATH]
Typical entry: 500 records, ~100 KB payload (the handler's WireEncoder). Append is fsync'd
per frame, so it measures the disk as much as the code; replay reads a file in the page
cache into a no-op ``send``. Rounds alternate baseline and current; medians are reported,
plus the peak Python memory of one replay (tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path
from typing import Any

import activity_logging
from activity_logging import spool as current
from activity_logging.snapshot import queued_from_record
from activity_logging.wire import WireEncoder


def load_baseline(rev: str) -> types.ModuleType:
    root = Path(activity_logging.__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:activity_logging/spool.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("activity_logging._spool_baseline")
    module.__package__ = "activity_logging"  # its relative imports resolve against the package
    # @dataclass looks its class's module up in sys.modules (to resolve string annotations).
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:activity_logging/spool.py", "exec"), module.__dict__)
    return module


def typical_entry() -> dict[str, Any]:
    encoder = WireEncoder("bench")
    items = []
    for i in range(500):
        record = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
        record.__dict__.update({"actor_id": f"agent-{i}", "target_type": "call",
                                "target_id": f"call-{i}",
                                "changes": {"status": {"old": "ringing", "new": "answered"}}})
        items.append(queued_from_record(record))
    return dict(encoder.encode_batch(items))


def append_rate(module: Any, directory: Path, entry: dict[str, Any], frames: int) -> float:
    spool = module.Spool(directory, "bench", 1 << 34)
    start = time.perf_counter()
    for _ in range(frames):
        spool.append(entry)
    elapsed = time.perf_counter() - start
    spool.close()
    return frames / elapsed


def replay_rate(module: Any, directory: Path, frames: int) -> float:
    """Replay the orphan ``directory/src.spool`` (copied fresh) and time it."""
    spool = module.Spool(directory, "reader", 1 << 34)
    start = time.perf_counter()
    spool.replay(lambda group: None)
    elapsed = time.perf_counter() - start
    spool.close()
    return frames / elapsed


def replay_peak(module: Any, directory: Path) -> int:
    spool = module.Spool(directory, "reader", 1 << 34)
    tracemalloc.start()
    spool.replay(lambda group: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    spool.close()
    return peak


def make_source(module: Any, path: Path, entry: dict[str, Any], frames: int) -> None:
    """A file of ``frames`` frames in ``module``'s format (written without fsync: setup only)."""
    path.write_bytes(module.encode_frame(entry) * frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="HEAD")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--replay-frames", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the spool files go (default: a temp dir)")
    args = parser.parse_args()
    base = load_baseline(args.baseline)
    entry = typical_entry()
    modules = {"baseline": base, "current": current}
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        for name, module in modules.items():
            make_source(module, root / f"src.{name}", entry, args.replay_frames)
        appends: dict[str, list[float]] = {name: [] for name in modules}
        replays: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(args.rounds):
            for name, module in modules.items():
                work = root / f"append-{name}"
                appends[name].append(append_rate(module, work, entry, args.frames))
                shutil.rmtree(work)
                work = root / f"replay-{name}"
                work.mkdir()
                shutil.copyfile(root / f"src.{name}", work / "src.spool")
                (work / "src.spool").read_bytes()  # in the page cache for both
                replays[name].append(replay_rate(module, work, args.replay_frames))
                shutil.rmtree(work)
        peaks = {}
        for name, module in modules.items():
            work = root / f"peak-{name}"
            work.mkdir()
            shutil.copyfile(root / f"src.{name}", work / "src.spool")
            peaks[name] = replay_peak(module, work)
            shutil.rmtree(work)
        encode_us = {}
        for name, module in modules.items():
            start = time.perf_counter()
            for _ in range(500):
                module.encode_frame(entry)
            encode_us[name] = (time.perf_counter() - start) / 500 * 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)
    a = {k: statistics.median(v) for k, v in appends.items()}
    r = {k: statistics.median(v) for k, v in replays.items()}
    print(json.dumps({
        "entry_payload_bytes": len(entry["d"]), "records_per_entry": int(entry["n"]),
        "append_frames_per_s": {k: round(v, 1) for k, v in a.items()},
        "append_ratio_current_vs_baseline": round(a["current"] / a["baseline"], 3),
        "replay_frames_per_s": {k: round(v, 1) for k, v in r.items()},
        "replay_ratio_current_vs_baseline": round(r["current"] / r["baseline"], 3),
        "replay_file_mb": round(args.replay_frames * len(current.encode_frame(entry)) / 1e6, 1),
        "replay_peak_python_mb": {k: round(v / 1e6, 1) for k, v in peaks.items()},
        "encode_frame_us": {k: round(v, 1) for k, v in encode_us.items()},
        "rounds": args.rounds,
    }, indent=2))


if __name__ == "__main__":
    main()
