"""Orphan spools are replayed as a stream, each frame checked against the worker's entry caps."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from activity_logging import entry_limits
from activity_logging.spool import DAMAGED_DIR, REPLAY_GROUP_BYTES, Spool
from activity_logging.spool_frames import FORMAT_VERSION, MAGIC, WINDOW_BYTES, encode_frame

MiB = 1 << 20


def make_entry(i: int, n: int = 3, size: int = 200) -> dict[str, Any]:
    payload = orjson.dumps([{"id": f"{i}-{k}", "pad": "x" * size} for k in range(n)])
    return {"v": "1", "n": str(n), "p": "producer", "h": "host", "pid": "1", "d": payload}


def record_ids(entries: list[dict[str, Any]]) -> list[str]:
    return [rec["id"] for e in entries for rec in orjson.loads(e["d"])]


class Collect:
    def __init__(self) -> None:
        self.groups: list[list[dict[str, Any]]] = []

    def __call__(self, group: list[dict[str, Any]]) -> None:
        self.groups.append(list(group))

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [e for g in self.groups for e in g]


def huge_frame_head(payload_bytes: int, n: int) -> bytes:
    """The start of a frame whose header (CRC-checked) announces ``payload_bytes``: what a
    150 MB orphan holds, without the test writing 150 MB (the rest of the file is sparse)."""
    header = orjson.dumps({"v": "1", "n": str(n), "p": "someone", "h": "h", "pid": "1"})
    prefix = struct.pack(">4sBBII", MAGIC, FORMAT_VERSION, 0, len(header), payload_bytes)
    return prefix + header + struct.pack(">I", zlib.crc32(header, zlib.crc32(prefix)))


def orphan(directory: Path, name: str, data: bytes, *, sparse_to: int = 0,
           tail: bytes = b"") -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.spool"
    with open(path, "wb") as f:
        f.write(data)
        if sparse_to:
            f.truncate(sparse_to)
            f.seek(sparse_to)
        f.write(tail)
    os.chmod(path, 0o600)
    return path


def test_a_150_mb_orphan_frame_is_never_read_into_memory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured case: a 150 MB orphan spool was read into memory at once. Its frame
    is over the worker's byte cap: refused from its header, read 1 MiB at a time at most,
    set aside whole in damaged/, and the entry after it still replayed."""
    directory = tmp_path / "spool"
    size = 150 * MiB
    good = encode_frame(make_entry(7))
    orphan(directory, "dead-producer", huge_frame_head(size, 3), sparse_to=size, tail=good)
    largest = 0
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal largest
        largest = max(largest, n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    spool = Spool(directory, "me", 512 * MiB)
    try:
        send = Collect()
        result = spool.replay(send)
    finally:
        spool.close()
    assert largest <= WINDOW_BYTES
    assert record_ids(send.entries) == record_ids([make_entry(7)])
    assert result.oversized_frames == spool.oversized_frames == 1
    assert result.adopted_damaged_records == 3  # its header survived: its count is known
    (kept,) = (directory / DAMAGED_DIR).glob("*.damaged")
    assert kept.stat().st_size == size  # set aside byte for byte, never deleted


def test_a_frame_claiming_more_records_than_the_cap_is_set_aside_unread(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    writer = Spool(directory, "writer", 64 * MiB)
    writer.append(make_entry(0, n=3))
    writer.append({**make_entry(1, n=2), "n": str(entry_limits.MAX_ENTRY_RECORDS + 1)})
    writer.append(make_entry(2, n=3))
    writer.close()
    spool = Spool(directory, "me", 64 * MiB)
    try:
        send = Collect()
        result = spool.replay(send)
    finally:
        spool.close()
    assert record_ids(send.entries) == record_ids([make_entry(0), make_entry(2)])
    assert result.oversized_frames == 1
    assert result.adopted_damaged_records == entry_limits.MAX_ENTRY_RECORDS + 1


def test_caps_can_be_raised_for_a_handler_that_ships_bigger_entries(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    writer = Spool(directory, "writer", 64 * MiB)
    writer.append(make_entry(0, n=30))
    writer.close()
    small = Spool(directory, "small", 64 * MiB, max_entry_records=10)
    assert small.replay(Collect()).oversized_frames == 1
    small.close()
    writer = Spool(directory, "writer2", 64 * MiB)
    writer.append(make_entry(1, n=30))
    writer.close()
    roomy = Spool(directory, "roomy", 64 * MiB, max_entry_records=100)
    send = Collect()
    assert roomy.replay(send).oversized_frames == 0 and len(record_ids(send.entries)) == 30
    roomy.close()


def test_replay_hands_over_groups_bounded_in_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "own", 256 * MiB)
    try:
        big = 2 * MiB
        for i in range(12):
            spool.append(make_entry(i, n=1, size=big))
        send = Collect()
        assert spool.replay(send, group=16).own_records == 12
    finally:
        spool.close()
    assert len(send.groups) > 1
    for group in send.groups:
        assert sum(len(e["d"]) for e in group) <= REPLAY_GROUP_BYTES + big + 1024
