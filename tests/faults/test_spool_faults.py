"""The spool under real faults: a write cut short by the kernel (RLIMIT_FSIZE), and SIGKILL.

Each scenario runs a real child process that appends real stream entries (the handler's
``WireEncoder``) to its spool and dies or exits without closing it; the parent then adopts
the file as the next producer on the directory would, and ends with a ``Ledger``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from activity_logging.rows import build_activity
from activity_logging.spool import DAMAGED_DIR, ReplayResult, Spool
from activity_logging.spool_frames import encode_frame
from activity_logging.wire import decode_entry
from tests.ledger import ledger_of

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parents[2]

CHILD_PRELUDE = textwrap.dedent("""
    import json, os, resource, signal, sys, time
    import orjson
    import logging
    from activity_logging.snapshot import Snapshotter
    from activity_logging.wire import WireEncoder
    from activity_logging.spool import Spool

    directory, tag = sys.argv[1], sys.argv[2]
    encoder = WireEncoder("child")
    snap = Snapshotter(context=False)
    spool = Spool(directory, "child", 1 << 30)
    offered = 0

    def entry(per_entry, pad):
        global offered
        items = []
        for _ in range(per_entry):
            record = logging.LogRecord("activity", 20, "child", 1, "spooled", None, None)
            record.__dict__.update(target_id=f"{tag}-{offered}", pad="x" * pad)
            items.append(snap.take(record))
            offered += 1
        return encoder.encode_batch(items)

    def say(**fields):
        sys.stdout.write(json.dumps(fields) + "\\n")
        sys.stdout.flush()
""")


@contextlib.contextmanager
def running(body: str, directory: Path, tag: str) -> Iterator[subprocess.Popen[str]]:
    """A child appending to its spool in ``directory``; killed and reaped if still running at the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(body), str(directory), tag],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(60)
        assert child.stdout is not None
        child.stdout.close()


def read_until(child: subprocess.Popen[str], key: str) -> list[dict[str, Any]]:
    """The child's JSON lines up to (and including) the first that has ``key``."""
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        lines.append(json.loads(line))
        if key in lines[-1]:
            return lines
    raise AssertionError(f"child ended (rc={child.wait(30)}) before saying {key!r}: {lines}")


def adopt(directory: Path) -> tuple[ReplayResult, list[dict[str, Any]], Counter[str]]:
    """Replay the directory as a new producer would: (result, entries sent, target_id -> rows)."""
    sent: list[dict[str, Any]] = []
    adopter = Spool(directory, "adopter", 1 << 30)
    try:
        result = adopter.replay(sent.extend)
    finally:
        adopter.close()
    keys: Counter[str] = Counter()
    for entry in sent:
        meta, records = decode_entry(entry)  # raises on anything but a real entry
        for record in records:
            keys[str(build_activity(record, meta)["target_id"])] += 1
    return result, sent, keys


def test_write_cut_short_by_the_file_size_limit_is_rolled_back_and_nothing_is_lost(tmp_path: Path) -> None:
    with running("""
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death

        class Watched:  # the real file, unchanged; remembers what each write() returned
            def __init__(self, real):
                self.real, self.writes = real, []
            def write(self, data):
                n = self.real.write(data)
                self.writes.append((n, len(data)))
                return n
            def __getattr__(self, name):
                return getattr(self.real, name)

        for _ in range(5):
            assert spool.append(entry(50, 200))
        good = spool.size_bytes
        held = entry(50, 200)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (good + 1000, hard))  # room for part of a frame
        failures = []
        spool._file = watched = Watched(spool._file)
        for _ in range(2):
            try:
                spool.append(held)
            except OSError as exc:
                failures.append(exc.errno)
        after = os.path.getsize(spool.path)
        short = [n for n, asked in watched.writes if n < asked]
        spool._file = watched.real
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        assert spool.append(held)  # what failed is retried, as the handler does with what it holds
        for _ in range(5):
            assert spool.append(entry(50, 200))
        say(offered=offered, errnos=failures, good=good, after=after, short=short,
            write_failures=spool.write_failures)
        os._exit(0)  # no close(): the file is left for the next producer
    """, tmp_path, "fsize") as child:
        (report,) = read_until(child, "offered")
        assert child.wait(60) == 0
    assert report["errnos"] == [errno.EFBIG, errno.EFBIG] and report["write_failures"] == 2
    assert report["short"] == [1000, 1000]  # the kernel wrote part of the frame each time
    assert report["after"] == report["good"]  # and the partial frame was truncated away
    result, _, keys = adopt(tmp_path)
    assert result.damaged_bytes == 0 and result.damaged_regions == 0  # nothing torn was left
    assert result.adopted_records == report["offered"] == 11 * 50
    assert set(keys) == {f"fsize-{i}" for i in range(report["offered"])}
    ledger_of(report["offered"], keys, counted=result.adopted_damaged_records).assert_balanced()
    assert not list(tmp_path.glob("*.spool"))


def test_kill_in_the_middle_of_a_frame_keeps_every_complete_frame_and_sets_the_tail_aside(
    tmp_path: Path,
) -> None:
    with running("""
        class Torn:  # the file the spool writes to: the 31st frame stops half-way, for the kill
            def __init__(self, real):
                self.real = real
                self.frames = 0
            def write(self, data):
                self.frames += 1
                if self.frames <= 30:
                    return self.real.write(data)
                self.real.write(data[: len(data) // 2])
                say(torn=len(data) // 2, offered=offered)
                time.sleep(120)
            def __getattr__(self, name):
                return getattr(self.real, name)

        spool.append(entry(1, 10))  # opens the file
        spool._file = Torn(spool._file)
        while True:
            spool.append(entry(50, 200))
            say(appended=offered)
    """, tmp_path, "torn") as child:
        lines = read_until(child, "torn")
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    torn = lines[-1]
    confirmed = lines[-2]["appended"]  # records whose append returned before the kill
    assert confirmed == 1 + 30 * 50
    path = tmp_path / "child.spool"
    data = path.read_bytes()
    result, sent, keys = adopt(tmp_path)
    assert set(keys) == {f"torn-{i}" for i in range(confirmed)}
    assert sum(len(encode_frame(e)) for e in sent) == len(data) - torn["torn"]
    (aside,) = (tmp_path / DAMAGED_DIR).iterdir()
    assert aside.read_bytes() == data[-torn["torn"]:]
    assert result.damaged_regions == 1 and result.damaged_bytes == torn["torn"]
    assert result.adopted_damaged_records == 50  # the torn frame's header survived
    ledger_of(torn["offered"], keys, counted=result.adopted_damaged_records).assert_balanced()


def test_kill_at_any_moment_of_an_append_loop_loses_no_confirmed_frame(tmp_path: Path) -> None:
    with running("""
        while True:
            spool.append(entry(500, 1500))  # ~1 MB frames: the kill often lands mid-append
            say(appended=offered)
    """, tmp_path, "loop") as child:
        lines = [read_until(child, "appended")[-1] for _ in range(8)]
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    confirmed = lines[-1]["appended"]
    size = (tmp_path / "child.spool").stat().st_size
    result, sent, keys = adopt(tmp_path)
    # Confirmed frames all arrived; at most the frame in flight besides; nothing else.
    assert {f"loop-{i}" for i in range(confirmed)} <= set(keys)
    assert set(keys) <= {f"loop-{i}" for i in range(confirmed + 500)}
    assert sum(len(encode_frame(e)) for e in sent) + result.damaged_bytes == size
    assert result.damaged_regions <= 1
    confirmed_keys = Counter({k: n for k, n in keys.items() if int(k.split("-")[1]) < confirmed})
    ledger_of(confirmed, confirmed_keys).assert_balanced()
