"""The spool: checksummed frames, recovery of every intact frame, damage set aside and counted."""

from __future__ import annotations

import errno
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activity_logging import spool_frames
from activity_logging.spool import DAMAGED_DIR, ReplayResult, Spool, SpoolReplayError
from activity_logging.spool_frames import MAGIC, encode_frame, read_frames

Entry = dict[str, Any]
MiB = 1 << 20


def make_entry(i: int, n: int = 3, size: int = 200) -> Entry:
    """An entry shaped like the handler's: str fields, ``n`` records, a JSON payload."""
    payload = orjson.dumps([{"id": f"{i}-{k}", "pad": "x" * size} for k in range(n)])
    return {"v": "1", "n": str(n), "p": "producer", "h": "host", "pid": "1", "d": payload}


def ids(entries: list[Entry]) -> list[str]:
    return [rec["id"] for e in entries for rec in orjson.loads(e["d"])]


class Collect:
    """A ``send`` that keeps what it was given; raises on the ``fail_on``-th call if set."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.entries: list[Entry] = []
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, group: list[Entry]) -> None:
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise ConnectionError("sink down")
        self.entries.extend(group)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", "own", 64 * MiB)
    yield s
    s.close()


def damaged_files(directory: Path) -> dict[int, bytes]:
    """Offset -> bytes of each file set aside in ``directory/damaged``."""
    out = {}
    for path in (directory / DAMAGED_DIR).glob("*.damaged"):
        out[int(path.name.rsplit(".", 2)[-2])] = path.read_bytes()
    return out


def old_frame(entry: Entry) -> bytes:
    """A frame as the version before the magic wrote it (no checksum)."""
    length = struct.Struct(">I")
    header = orjson.dumps({k: v for k, v in entry.items() if k != "d"})
    payload = bytes(entry["d"])
    return length.pack(len(header)) + header + length.pack(len(payload)) + payload


# --- round trip and format -----------------------------------------------------------------


def test_round_trip_replays_every_entry_in_order_and_empties_the_file(spool: Spool) -> None:
    entries = [make_entry(i) for i in range(40)]
    for e in entries:
        assert spool.append(e)
    assert spool.pending_records == 120 and spool.has_pending()
    send = Collect()
    result = spool.replay(send, group=16)
    assert send.entries == entries  # every field, the payload as bytes
    assert send.calls == 3  # 16 + 16 + 8
    assert result == ReplayResult(own_records=120)
    assert spool.size_bytes == 0 and spool.pending_records == 0 and not spool.has_pending()
    assert spool.path.stat().st_size == 0
    assert not (spool.directory / DAMAGED_DIR).exists()


def test_frame_starts_with_magic_and_carries_both_checksums() -> None:
    frame = encode_frame(make_entry(1))
    assert frame.startswith(MAGIC + b"\x01\x00")
    assert list(read_frames(frame)) == [make_entry(1)]
    for flip in (20, len(frame) // 2, len(frame) - 1):  # header, payload, trailing checksum
        broken = bytearray(frame)
        broken[flip] ^= 0x01
        assert list(read_frames(bytes(broken))) == []


def frame_table(text: str) -> list[str]:
    """The rows of the frame-format table (``offset size field``) in ``text``, normalised."""
    start = text.index("offset      size  field")
    rows = []
    for line in text[start:].splitlines():
        if not line.strip() or line.startswith("```"):
            break
        rows.append(" ".join(line.replace("``", "`").split()))
    return rows


def test_frame_table_in_docs_matches_the_module_that_implements_it() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "entry-format.md").read_text()
    assert spool_frames.__doc__ is not None
    assert frame_table(docs) == frame_table(spool_frames.__doc__)
    assert len(frame_table(docs)) == 10


def test_str_payload_is_stored_as_utf8_bytes(spool: Spool) -> None:
    spool.append({"v": "1", "n": "1", "d": "caf\u00e9"})
    send = Collect()
    spool.replay(send)
    assert send.entries == [{"v": "1", "n": "1", "d": "caf\u00e9".encode()}]


def test_append_beyond_max_bytes_returns_false_and_writes_nothing(tmp_path: Path) -> None:
    frame_len = len(encode_frame(make_entry(0)))
    s = Spool(tmp_path, "own", 2 * frame_len + 10)
    try:
        assert s.append(make_entry(0)) and s.append(make_entry(1))
        assert not s.append(make_entry(2))
        assert s.size_bytes == s.path.stat().st_size == 2 * frame_len
        assert s.pending_records == 6
    finally:
        s.close()


# --- damage --------------------------------------------------------------------------------


def test_torn_tail_is_moved_aside_and_every_complete_frame_replays(spool: Spool) -> None:
    for i in range(10):
        spool.append(make_entry(i))
    full = spool.path.read_bytes()
    torn = encode_frame(make_entry(10))[:57]
    with open(spool.path, "ab") as f:  # what a crash mid-write leaves behind
        f.write(torn)
    send = Collect()
    result = spool.replay(send)
    assert ids(send.entries) == ids([make_entry(i) for i in range(10)])
    assert damaged_files(spool.directory) == {len(full): torn}
    assert (result.damaged_regions, result.damaged_bytes) == (1, len(torn))
    assert result.own_damaged_records == 0  # the torn frame was never counted as appended
    assert spool.path.stat().st_size == 0


def test_damaged_length_field_in_the_middle_loses_only_that_frame(spool: Spool) -> None:
    frames = [encode_frame(make_entry(i)) for i in range(50)]
    for i in range(50):
        spool.append(make_entry(i))
    at = sum(map(len, frames[:20]))
    data = bytearray(spool.path.read_bytes())
    data[at + 6 : at + 10] = b"\x7f\xff\xff\xff"  # frame 20's header length: 2 GiB
    spool.path.write_bytes(bytes(data))
    send = Collect()
    result = spool.replay(send)
    assert ids(send.entries) == ids([make_entry(i) for i in range(50) if i != 20])
    assert damaged_files(spool.directory) == {at: bytes(data[at : at + len(frames[20])])}
    assert result.own_records == 147 and result.own_damaged_records == 3
    assert (spool.damaged_records, spool.damaged_bytes, spool.damaged_regions) == (3, len(frames[20]), 1)
    assert spool.own_damaged_records == 3 and spool.replayed_records == 147


def test_garbage_in_the_middle_is_set_aside_byte_for_byte(spool: Spool) -> None:
    for i in range(30):
        spool.append(make_entry(i))
    data = spool.path.read_bytes()
    at = sum(len(encode_frame(make_entry(i))) for i in range(12))
    garbage = os.urandom(3000) + MAGIC + b"\x01\x00" + os.urandom(40)  # even a false magic
    spool.path.write_bytes(data[:at] + garbage + data[at:])
    send = Collect()
    result = spool.replay(send)
    assert ids(send.entries) == ids([make_entry(i) for i in range(30)])
    assert damaged_files(spool.directory) == {at: garbage}
    assert result.own_damaged_records == 0 and result.damaged_bytes == len(garbage)


def test_own_frames_lost_entirely_are_counted_from_what_was_appended(spool: Spool) -> None:
    for i in range(5):
        spool.append(make_entry(i, n=7))
    frame_len = len(encode_frame(make_entry(0, n=7)))
    with open(spool.path, "r+b") as f:
        f.truncate(3 * frame_len)  # two whole frames gone, no damaged bytes left to show
    result = spool.replay(Collect())
    assert result.own_records == 21 and result.own_damaged_records == 14
    assert spool.damaged_records == 14 and spool.damaged_bytes == 0


def test_damage_is_reported_once(spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    spool.append(make_entry(0))
    with open(spool.path, "ab") as f:
        f.write(b"torn")
    spool.replay(Collect())
    spool.append(make_entry(1))
    spool.replay(Collect())
    err = capsys.readouterr().err
    assert err.count("damaged regions") == 1 and "4 bytes" in err


@st.composite
def damaged_spools(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[bool]]:
    """Frames, the file after random damage, and which frames the damage touched."""
    entries = [
        {"v": "1", "n": str(draw(st.integers(1, 9))), "p": draw(st.text(max_size=8)),
         "d": draw(st.binary(max_size=300))}
        for _ in range(draw(st.integers(1, 12)))
    ]
    frames = [encode_frame(e) for e in entries]
    data = bytearray(b"".join(frames))
    spans: list[list[int]] = []
    pos = 0
    for f in frames:
        spans.append([pos, pos + len(f)])
        pos += len(f)
    touched = [False] * len(frames)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["overwrite", "truncate", "insert"]))
        at = draw(st.integers(0, len(data)))
        if kind == "overwrite":
            junk = draw(st.binary(min_size=1, max_size=40))
            data[at : at + len(junk)] = junk[: max(0, len(data) - at)]
            end = min(at + len(junk), len(data))
            for i, (a, b) in enumerate(spans):
                touched[i] |= a < end and at < b
        elif kind == "truncate":
            del data[at:]
            for i, (_a, b) in enumerate(spans):
                touched[i] |= b > at
        else:
            junk = draw(st.binary(min_size=1, max_size=40))
            data[at:at] = junk
            for i, span in enumerate(spans):
                touched[i] |= span[0] < at < span[1]
                if span[0] >= at:
                    span[0] += len(junk)
                    span[1] += len(junk)
    return frames, bytes(data), touched


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_spools())
def test_random_damage_loses_only_touched_frames_and_invents_nothing(
    case: tuple[list[bytes], bytes, list[bool]],
) -> None:
    frames, data, touched = case
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "other.spool").write_bytes(data)  # an orphan: adopted by a new producer
        s = Spool(directory, "me", 1 * MiB)
        send = Collect()
        result = s.replay(send)
        s.close()
        got = [encode_frame(e) for e in send.entries]
        assert all(frame in frames for frame in got), "a frame was invented"
        for frame, hit in zip(frames, touched, strict=True):
            if not hit:
                assert frame in got, "an intact frame was not recovered"
        # every byte is either in a recovered frame or set aside, exactly as it was
        aside = damaged_files(directory)
        assert sum(map(len, got)) + sum(map(len, aside.values())) == len(data)
        assert all(data[at : at + len(chunk)] == chunk for at, chunk in aside.items())
        assert result.damaged_bytes == sum(map(len, aside.values()))
        total = sum(int(e["n"]) for f in frames for e in read_frames(f))
        assert result.adopted_records + result.adopted_damaged_records <= total
        assert result.adopted_records == sum(int(e["n"]) for e in send.entries)
        assert not data or not (directory / "other.spool").exists()


# --- failed writes -------------------------------------------------------------------------


class HalfThenFail:
    """Stands in for the spool's file: writes half of what it is given, then raises ENOSPC."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: memoryview) -> int:
        self.real.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_write_failing_part_way_is_rolled_back_and_later_appends_work(spool: Spool) -> None:
    for i in range(3):
        spool.append(make_entry(i))
    good = spool.size_bytes
    real = spool._file
    spool._file = HalfThenFail(real)  # type: ignore[assignment]  # a stand-in for the test
    with pytest.raises(OSError, match="No space"):
        spool.append(make_entry(99))
    spool._file = real
    assert spool.path.stat().st_size == spool.size_bytes == good
    assert spool.pending_records == 9 and spool.write_failures == 1
    for i in range(3, 6):
        assert spool.append(make_entry(i))
    send = Collect()
    result = spool.replay(send)
    assert ids(send.entries) == ids([make_entry(i) for i in range(6)])
    assert result.damaged_bytes == 0 and result.own_damaged_records == 0


def test_failed_fsync_is_rolled_back(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    spool.append(make_entry(0))
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        spool.append(make_entry(1))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert spool.path.stat().st_size == spool.size_bytes == len(encode_frame(make_entry(0)))
    spool.append(make_entry(2))
    send = Collect()
    spool.replay(send)
    assert ids(send.entries) == ids([make_entry(0), make_entry(2)])


def test_torn_bytes_a_failed_roll_back_left_are_skipped_on_replay(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.append(make_entry(0))
    real = spool._file

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    spool._file = HalfThenFail(real)  # type: ignore[assignment]  # a stand-in for the test
    with pytest.raises(OSError, match="No space"):
        spool.append(make_entry(1))
    spool._file = real
    monkeypatch.undo()
    assert spool.size_bytes == spool.path.stat().st_size  # the torn half is accounted for
    spool.append(make_entry(2))
    send = Collect()
    result = spool.replay(send)
    assert ids(send.entries) == ids([make_entry(0), make_entry(2)])
    assert result.damaged_regions == 1 and result.own_damaged_records == 0


# --- replay --------------------------------------------------------------------------------


def test_replay_keeps_the_file_when_send_raises(spool: Spool) -> None:
    for i in range(40):
        spool.append(make_entry(i))
    before = spool.path.read_bytes()
    with pytest.raises(SpoolReplayError) as info:
        spool.replay(Collect(fail_on=2), group=16)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.result == ReplayResult()
    assert spool.path.read_bytes() == before and spool.pending_records == 120
    send = Collect()
    assert spool.replay(send).own_records == 120  # all of it again: ids deduplicate downstream
    assert ids(send.entries) == ids([make_entry(i) for i in range(40)])


def test_replay_error_reports_the_files_it_finished(tmp_path: Path) -> None:
    other = Spool(tmp_path, "other", 64 * MiB)
    other.append(make_entry(100))
    other.close()
    own = Spool(tmp_path, "own", 64 * MiB)
    try:
        own.append(make_entry(0))
        with pytest.raises(SpoolReplayError) as info:
            own.replay(Collect(fail_on=2))  # own file sent, the orphan's send fails
        assert info.value.result.own_records == 3 and own.replayed_records == 3
        assert own.size_bytes == 0 and (tmp_path / "other.spool").exists()
        assert own.replay(Collect()).adopted_records == 3
    finally:
        own.close()


def test_replay_reads_a_large_file_in_bounded_windows(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(200):
        spool.append(make_entry(i, n=10, size=5000))  # ~10 MB in all, read 1 MiB at a time
    assert spool.size_bytes > 8 * MiB
    largest = 0
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal largest
        largest = max(largest, n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert spool.replay(Collect()).own_records == 2000
    assert largest <= MiB


def test_frame_larger_than_max_bytes_is_damage_not_a_huge_read(tmp_path: Path) -> None:
    big = Spool(tmp_path, "big", 64 * MiB)
    big.append(make_entry(0, n=4, size=100_000))
    big.append(make_entry(1))
    big.close()
    small = Spool(tmp_path, "small", 100_000)
    try:
        send = Collect()
        result = small.replay(send)
        assert ids(send.entries) == ids([make_entry(1)])
        assert result.adopted_damaged_records == 4  # its header survived: the count is known
        assert result.damaged_bytes == len(encode_frame(make_entry(0, n=4, size=100_000)))
    finally:
        small.close()


def test_old_format_file_replays(tmp_path: Path) -> None:
    entries = [make_entry(i) for i in range(20)]
    data = b"".join(old_frame(e) for e in entries)
    torn = old_frame(make_entry(20))[:90]
    (tmp_path / "old.spool").write_bytes(data + torn)
    s = Spool(tmp_path, "new", 64 * MiB)
    try:
        send = Collect()
        result = s.replay(send)
        assert send.entries == entries
        assert result.adopted_records == 60 and result.adopted_damaged_records == 3
        assert damaged_files(tmp_path) == {len(data): torn}
        assert not (tmp_path / "old.spool").exists()
    finally:
        s.close()


def test_damaged_first_frame_is_not_mistaken_for_the_old_format(spool: Spool) -> None:
    for i in range(5):
        spool.append(make_entry(i))
    data = bytearray(spool.path.read_bytes())
    data[0:4] = b"\x00\x00\x00\x02"  # the magic gone: an old reader would see a 2-byte header
    spool.path.write_bytes(bytes(data))
    send = Collect()
    spool.replay(send)
    assert ids(send.entries) == ids([make_entry(i) for i in range(1, 5)])


# --- ownership and adoption ----------------------------------------------------------------


def test_orphan_left_by_a_closed_producer_is_adopted_and_removed(tmp_path: Path) -> None:
    first = Spool(tmp_path, "first", 64 * MiB)
    for i in range(5):
        first.append(make_entry(i))
    first.close()  # a non-empty file stays: it is an orphan now
    second = Spool(tmp_path, "second", 64 * MiB)
    try:
        assert second.has_pending()
        send = Collect()
        result = second.replay(send)
        assert result.adopted_records == 15 and result.own_records == 0 and result.adopted_files == 1
        assert ids(send.entries) == ids([make_entry(i) for i in range(5)])
        assert not (tmp_path / "first.spool").exists()
    finally:
        second.close()


def test_live_producers_file_is_not_adopted(tmp_path: Path) -> None:
    live = Spool(tmp_path, "live", 64 * MiB)
    other = Spool(tmp_path, "other", 64 * MiB)
    try:
        live.append(make_entry(0))
        assert not other.has_pending()
        assert other.replay(Collect()) == ReplayResult()
        assert live.path.stat().st_size > 0
    finally:
        live.close()
        other.close()


def test_an_empty_file_left_by_a_dead_producer_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    """A producer killed between opening its file and its first frame leaves an empty file:
    nothing to replay, so the next adopter removes it rather than leaving it forever."""
    (tmp_path / "dead.spool").write_bytes(b"")
    live = Spool(tmp_path, "live", 64 * MiB)
    other = Spool(tmp_path, "other", 64 * MiB)
    try:
        live.append(make_entry(0))
        live.replay(Collect())  # its file is empty now, and still held
        assert other.replay(Collect()) == ReplayResult()
        assert not (tmp_path / "dead.spool").exists()
        assert live.path.exists()
        live.append(make_entry(1))  # the live producer's file is the one at its path
        assert ids(replay_own(live)) == ids([make_entry(1)])
    finally:
        live.close()
        other.close()


def replay_own(spool: Spool) -> list[Entry]:
    send = Collect()
    spool.replay(send, orphans=False)
    return send.entries


def test_a_producer_whose_new_file_was_removed_before_its_lock_starts_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The adopter's removal of an empty file can fall between a producer's open and its lock:
    the producer sees that its locked file is no longer at its path and opens again."""
    import fcntl as fcntl_module

    real_flock = fcntl_module.flock
    removed: list[bool] = []

    def flock_after_removal(fd: int, operation: int) -> None:
        if not removed:  # the first lock the producer takes: an adopter got there just before
            removed.append(True)
            os.unlink(tmp_path / "p.spool")
        real_flock(fd, operation)

    producer = Spool(tmp_path, "p", 64 * MiB)
    monkeypatch.setattr("activity_logging.spool.fcntl.flock", flock_after_removal)
    try:
        assert producer.append(make_entry(0))
        monkeypatch.undo()
        assert producer.path.stat().st_size > 0  # written to the file at its path, not a removed one
        assert ids(replay_own(producer)) == ids([make_entry(0)])
    finally:
        producer.close()


def test_a_stale_file_of_the_same_producer_id_is_adopted_not_miscounted(tmp_path: Path) -> None:
    old = Spool(tmp_path, "same", 64 * MiB)
    old.append(make_entry(0))
    old.close()
    new = Spool(tmp_path, "same", 64 * MiB)
    try:
        new.append(make_entry(1))
        assert new.pending_records == 3
        send = Collect()
        result = new.replay(send)
        assert (result.own_records, result.adopted_records, result.damaged_records) == (3, 3, 0)
        assert sorted(ids(send.entries)) == sorted(ids([make_entry(0), make_entry(1)]))
    finally:
        new.close()


def test_close_removes_an_empty_own_file_and_keeps_a_pending_one(tmp_path: Path) -> None:
    empty = Spool(tmp_path, "empty", 64 * MiB)
    empty.append(make_entry(0))
    empty.replay(Collect())
    empty.close()
    empty.close()  # idempotent
    assert not empty.path.exists()
    pending = Spool(tmp_path, "pending", 64 * MiB)
    pending.append(make_entry(0))
    pending.close()
    assert pending.path.stat().st_size > 0


# --- permissions ---------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directories_are_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        s = Spool(tmp_path / "a" / "b" / "spool", "own", 64 * MiB)
        s.append(make_entry(0))
        with open(s.path, "ab") as f:
            f.write(b"torn")
        s.replay(Collect())
        s.close()
    finally:
        os.umask(old_umask)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", s.directory, s.directory / DAMAGED_DIR):
        assert mode(directory) == 0o700, directory
    (aside,) = (s.directory / DAMAGED_DIR).iterdir()
    assert mode(aside) == 0o600


def test_existing_open_directory_is_left_alone_and_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    s = Spool(directory, "own", 64 * MiB)
    try:
        s.append(make_entry(0))
        s.append(make_entry(1))
        assert mode(directory) == 0o755
        assert mode(s.path) == 0o600
        assert capsys.readouterr().err.count("accessible to group/others") == 1
    finally:
        s.close()


def test_release_after_fork_leaves_the_file_and_the_parents_lock(tmp_path: Path) -> None:
    s = Spool(tmp_path, "own", 64 * MiB)
    s.append(make_entry(0))
    size = s.size_bytes
    pid = os.fork()
    if pid == 0:  # the child: drop what it inherited, exit without running the parent's cleanup
        s.release_after_fork()
        os._exit(0 if s._file is None and s.size_bytes == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    other = Spool(tmp_path, "other", 64 * MiB)
    try:
        assert not other.has_pending()  # still locked by the parent: not an orphan
        assert s.path.stat().st_size == size == s.size_bytes
    finally:
        other.close()
        s.close()


def test_a_spool_directory_owned_by_another_user_is_neither_written_nor_replayed(tmp_path: Path) -> None:
    import os

    if os.getuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    planted = tmp_path / "spool"
    planted.mkdir(mode=0o700)
    other = Spool(planted, "other-producer", 1 << 20)
    assert other.append(make_entry(0))  # frames that would be replayed as genuine
    other.close()
    os.chown(planted, 65534, 65534)
    spool = Spool(planted, "me", 1 << 20)
    assert not spool.has_pending()
    with pytest.raises(PermissionError, match="another user"):
        spool.append(make_entry(1))
    spool.close()
