"""Signing, the chain and the seal without servers: keys, tags, links, canonical rows,
checkpoints, the direct-mode seal on SQLite, and the byte budget of records in hand."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activity_logging.cli import main
from activity_logging.exceptions import ConfigurationError
from activity_logging.handler import ActivityHandler
from activity_logging.rows import build_activity
from activity_logging.signing import (
    EntrySigner,
    KeyRing,
    SignatureError,
    canonical_json,
    canonical_row,
    check_entry,
    generate_key,
    key_id_of,
    parse_key,
    resolve_keyring,
    seal,
)
from activity_logging.snapshot import queued_from_record
from activity_logging.wire import Batch, Entry, WireEncoder, decode_entry

KEY = "k1:" + "s" * 32


def record(i: int, **extra: Any) -> bytes:
    rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "call_created", None, None)
    rec.__dict__.update({"actor_id": f"agent-{i}", "i": i, **extra})
    return queued_from_record(rec)


def signed_entries(n_entries: int, per_entry: int, key: str = KEY) -> list[Entry]:
    encoder = WireEncoder("prod-1", signer=EntrySigner(KeyRing.parse(key).current))
    return [encoder.batch([record(e * per_entry + j) for j in range(per_entry)]).entry()
            for e in range(n_entries)]


# --- keys ---------------------------------------------------------------------------------------

def test_keys_parse_with_and_without_id_and_never_show_the_secret() -> None:
    ring = KeyRing.parse(f"# comment\n{KEY}\n  {'t' * 20},other:{'u' * 16}\n")
    assert ring.key_ids == ("k1", key_id_of("t" * 20), "other")
    assert ring.current.key_id == "k1"
    assert "s" * 32 not in repr(ring) + repr(ring.current)
    for bad in ("short", "k1:short", "bad id!:" + "x" * 20, "", "# only a comment"):
        with pytest.raises(ConfigurationError) as info:
            KeyRing.parse(bad)
        assert "x" * 20 not in str(info.value)
    with pytest.raises(ConfigurationError, match="two different"):
        KeyRing.parse(f"k1:{'a' * 16},k1:{'b' * 16}")


def test_keyring_comes_from_argument_then_environment_then_file(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    path.write_text(f"f1:{'f' * 20}\n")
    assert resolve_keyring(environ={}) is None
    assert resolve_keyring("", environ={"ACTIVITY_LOG_SIGNING_KEY": KEY}) is None  # "" turns it off
    ring = resolve_keyring(environ={"ACTIVITY_LOG_SIGNING_KEY": KEY})
    assert ring is not None and ring.current.key_id == "k1"
    ring = resolve_keyring(environ={"ACTIVITY_LOG_SIGNING_KEY_FILE": str(path)})
    assert ring is not None and ring.current.key_id == "f1"
    with pytest.raises(ConfigurationError, match="cannot read"):
        resolve_keyring(key_file=str(tmp_path / "missing"))


def test_generated_keys_are_long_random_and_accepted() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50 and all(len(k) >= 43 for k in keys)
    assert parse_key(generate_key("2026-12")).key_id == "2026-12"


def test_keygen_verb_prints_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--id", "2027"]) == 0
    printed = capsys.readouterr().out.strip()
    assert KeyRing.parse(printed).current.key_id == "2027"


# --- entry tags and links -----------------------------------------------------------------------

def test_signed_entries_check_and_chain_across_entries() -> None:
    ring = KeyRing.parse(KEY)
    entries = signed_entries(3, 4)
    auths = [check_entry(e, ring) for e in entries]
    assert all(a is not None and a.checked for a in auths)
    assert auths[0] is not None and auths[0].prev == b""
    for before, after in itertools.pairwise(auths):
        assert before is not None and after is not None
        assert after.prev == before.tag == before.link(before.n - 1)
    first = auths[0]
    assert first is not None
    links = [first.link(i) for i in range(4)]
    assert len(set(links)) == 4 and [first.prev_link(i) for i in range(1, 4)] == links[:3]


@pytest.mark.parametrize("change", ["payload", "producer", "host", "count", "prev", "key_id",
                                    "unsigned", "tag"])
def test_any_change_to_a_signed_entry_is_refused(change: str) -> None:
    ring = KeyRing.parse(KEY)
    entry = dict(signed_entries(2, 3)[1])
    if change == "payload":
        records = orjson.loads(entry["d"])
        records[0]["x"]["actor_id"] = "admin"
        entry["d"] = orjson.dumps(records)
    elif change == "producer":
        entry["p"] = "someone-else"
    elif change == "host":
        entry["h"] = "elsewhere"
    elif change == "count":
        entry["n"] = "2"
    elif change == "prev":
        entry["pm"] = signed_entries(1, 1)[0]["t"]
    elif change == "key_id":
        entry["k"] = "k9"
    elif change == "unsigned":
        for field in ("k", "pm", "t"):
            del entry[field]
    elif change == "tag":
        entry["t"] = "ab" * 32
    with pytest.raises(SignatureError):
        check_entry(entry, ring)


def test_without_a_keyring_unsigned_entries_pass_and_signed_ones_keep_their_links() -> None:
    assert check_entry(WireEncoder("p").encode_batch([record(1)]), None) is None
    auth = check_entry(signed_entries(1, 2)[0], None)
    assert auth is not None and not auth.checked and auth.n == 2


def test_another_key_cannot_sign_for_the_ring() -> None:
    forged = signed_entries(1, 2, key="k1:" + "z" * 32)[0]  # the right id, the wrong secret
    with pytest.raises(SignatureError, match="does not match"):
        check_entry(forged, KeyRing.parse(KEY))


# --- canonical rows -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_canonical_json_is_the_same_after_a_json_round_trip_and_key_reordering(value: Any) -> None:
    again = orjson.loads(orjson.dumps(value))
    assert canonical_json(again) == canonical_json(value)
    if isinstance(value, dict):
        assert canonical_json(dict(reversed(list(value.items())))) == canonical_json(value)


def test_canonical_json_reads_numbers_as_jsonb_writes_them() -> None:
    # jsonb (numeric) writes 1e16 as 10000000000000000 and 1e20 in full; -0.0 as 0.0
    assert canonical_json({"a": 1e16}) == canonical_json({"a": 10_000_000_000_000_000})
    assert canonical_json({"a": 1e20}) == canonical_json({"a": 100_000_000_000_000_000_000})
    assert canonical_json({"a": -0.0}) == canonical_json({"a": 0.0})
    assert canonical_json({"a": 1.5e-7}) == canonical_json({"a": 0.00000015})
    assert canonical_json({"a": 1}) != canonical_json({"a": 2})
    # numbers are compared exactly: an edit below a float's precision is still an edit
    from decimal import Decimal

    from activity_logging.signing import loads_exact

    assert canonical_json({"a": 0.1}) == canonical_json(loads_exact('{"a": 0.1}'))
    assert canonical_json({"a": 0.1}) != canonical_json(loads_exact('{"a": 0.1000000000000000000001}'))
    assert canonical_json({"a": 1e20}) == canonical_json(loads_exact('{"a": 100000000000000000000}'))
    assert canonical_json({"a": 1e20}) != canonical_json(loads_exact('{"a": 100000000000000000001}'))
    assert canonical_json({"a": Decimal("1.50")}) == canonical_json({"a": 1.5})
    assert canonical_json({"a": True}) != canonical_json({"a": 1})
    assert canonical_json({"a": "1"}) != canonical_json({"a": 1})


def _row(i: int = 1) -> dict[str, Any]:
    meta, wires = decode_entry(WireEncoder("p").encode_batch([record(i, changes={"s": [1, 2]})]))
    return build_activity(wires[0], meta)


def test_seal_covers_every_column_and_the_links() -> None:
    ring = KeyRing.parse(KEY)
    auth = check_entry(signed_entries(1, 1)[0], ring)
    assert auth is not None
    row = _row()
    seal(row, ring.current, auth, 0)
    from activity_logging.signing import row_seal_matches

    assert row_seal_matches(row, ring) is True
    for column, value in [("actor_id", "admin"), ("description", "x"), ("level", 50),
                          ("metadata", {"i": 2}), ("changes", None), ("ip_address", "1.2.3.4"),
                          ("seq", 99), ("prev_mac", "a" * 64), ("mac", "b" * 64),
                          ("producer_id", "other"), ("key_id", "k1")]:
        tampered = {**row, column: value}
        if value == row[column]:
            continue
        assert row_seal_matches(tampered, ring) is False, column
    # the forms a store reads back encode alike
    import ipaddress
    import uuid as uuid_mod

    read_back = {**row, "id": str(row["id"]), "ip_address": None}
    row["ip_address"] = None
    assert canonical_row(read_back) == canonical_row(row)
    row["ip_address"] = "::ffff:10.0.0.1"
    assert canonical_row({**row, "ip_address": ipaddress.ip_address("::ffff:10.0.0.1")}) == canonical_row(row)
    assert canonical_row({**row, "id": uuid_mod.UUID(str(row["id"]))}) == canonical_row(row)


# --- the handler ----------------------------------------------------------------------------------

class Sink:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.rejected = 0

    def prepare(self) -> None:
        pass

    def send(self, batches: list[Batch]) -> None:
        self.batches.extend(batches)

    def close(self) -> None:
        pass


def _handler(**kwargs: Any) -> tuple[ActivityHandler, Sink, logging.Logger]:
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off", **kwargs)
    sink = Sink()
    handler._sink = sink
    log = logging.getLogger(f"activity.signing.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler, sink, log


def test_handler_checkpoints_periodically_and_when_it_closes() -> None:
    handler, sink, log = _handler(signing_key=KEY, checkpoint_interval=1.0, flush_interval=0.01)
    log.info("one")
    deadline = time.monotonic() + 10
    while handler.stats()["checkpoints"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # idle: the listener still writes its periodic checkpoint
    log.info("two")
    handler.close()
    stats = handler.stats()
    assert stats["checkpoints"] >= 2 and stats["sent"] == stats["enqueued"]
    ring = KeyRing.parse(KEY)
    rows = []
    for batch in sink.batches:
        entry = batch.entry()
        assert check_entry(entry, ring) is not None
        meta, wires = decode_entry(entry)
        rows += [build_activity(w, meta) for w in wires]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    kinds = [(r["activity_type"], (r["metadata"] or {}).get("checkpoint", {}).get("closing")) for r in rows]
    assert kinds[0] == ("one", None) and kinds[-1] == ("activity_log.checkpoint", True)
    assert ("activity_log.checkpoint", False) in kinds


def test_unsigned_handler_writes_no_checkpoints_and_no_tags() -> None:
    handler, sink, log = _handler(signing_key="", checkpoint_interval=1.0)
    log.info("one")
    handler.close()
    assert handler.stats()["checkpoints"] == 0
    assert all("t" not in b.entry() for b in sink.batches)


@pytest.mark.parametrize("kwargs", [{"signing_key": "short"}, {"checkpoint_interval": 0.1},
                                    {"checkpoint_interval": "soon"}])
def test_bad_signing_settings_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off", **kwargs)


def test_embedded_store_seals_rows_and_verify_checks_them(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'trail.db'}"
    handler = ActivityHandler(database_url=url, signing_key=KEY, batch_size=3, flush_interval=0.01)
    log = logging.getLogger("activity.signing.embedded")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for i in range(10):
        log.info("call_created", extra={"actor_id": f"a{i}", "score": i / 7, "big": 1e16})
    log.removeHandler(handler)
    handler.close()
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    verify = ["verify", "--database-url", url, "--signing-key-file", str(key_file), "--json"]
    assert main(verify) == 0, capsys.readouterr().out
    capsys.readouterr()
    with contextlib.closing(sqlite3.connect(tmp_path / "trail.db")) as conn, conn:
        conn.execute("UPDATE activity_logs SET actor_id = 'admin' WHERE seq = 4")
    assert main(verify) == 1
    out = orjson.loads(capsys.readouterr().out)
    assert [(p["kind"], p["seq"]) for c in out["chains"] for p in c["problems"]] == [("altered", 4)]


# --- queue_max_bytes: UTF-8 bytes, records in hand included -------------------------------------

class BlockedSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def send(self, batches: list[Batch]) -> None:
        self.gate.wait(10)
        super().send(batches)


def test_byte_budget_counts_utf8_bytes_and_records_in_the_listeners_hands() -> None:
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", spool_path="off",
                              queue_size=100_000, queue_max_bytes=100_000, batch_size=10,
                              flush_interval=0.001)
    sink = BlockedSink()
    handler._sink = sink
    log = logging.getLogger("activity.signing.bytes")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        text = "\U0001f600" * 2_000  # 2,000 characters, 8,000 bytes in UTF-8
        for _ in range(40):
            log.info("x", extra={"note": text})
            time.sleep(0.005)  # let the listener take them into its hands
        stats = handler.stats()
        # 40 records of ~8.2 kB are 328 kB: the 100 kB budget admits about 12, wherever they are
        assert stats["enqueued"] <= 14 and stats["dropped_queue_full"] >= 26
        assert stats["in_hand"] > 0 and stats["queue_bytes"] >= stats["enqueued"] * 8_000
        sink.gate.set()
        assert handler.flush(10)
        assert handler.stats()["queue_bytes"] == 0
    finally:
        sink.gate.set()
        log.removeHandler(handler)
        handler.close()


@pytest.mark.parametrize("secret", [b"s" * 16, b"s" * 64, b"s" * 65, b"\xff" * 200])
def test_mac_is_hmac_sha256(secret: bytes) -> None:
    import hashlib
    import hmac

    from activity_logging.signing import SigningKey

    key = SigningKey("k", secret)
    assert key.mac(b"abc", b"", b"def" * 100) == hmac.digest(secret, b"abc" + b"def" * 100, hashlib.sha256)


def test_status_says_whether_the_trail_is_signed(tmp_path: Path) -> None:
    import asyncio

    from activity_logging.status import gather_status
    from activity_logging.status_render import render_status

    url = f"sqlite:///{tmp_path / 'trail.db'}"

    def log_some(key: str, n: int) -> None:
        handler = ActivityHandler(database_url=url, signing_key=key, flush_interval=0.01)
        log = logging.getLogger(f"activity.signing.status.{key[:2]}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        for i in range(n):
            log.info("x", extra={"i": i})
        log.removeHandler(handler)
        handler.close()

    log_some("", 3)
    status = asyncio.run(gather_status(url))
    assert status.authentication == "unauthenticated"
    assert "trail:            unauthenticated (no signing key" in render_status(status)
    log_some(KEY, 5)
    status = asyncio.run(gather_status(url))
    assert (status.authentication, status.auth_sealed, status.auth_keys) == ("partly signed", 6, ["k1"])
    assert any("3 of the newest 9 rows are not sealed" in w for w in status.warnings)
    with contextlib.closing(sqlite3.connect(tmp_path / "trail.db")) as conn, conn:
        conn.execute("DELETE FROM activity_logs WHERE row_mac IS NULL")
    status = asyncio.run(gather_status(url))
    assert status.authentication == "signed" and status.to_dict()["authentication"] == "signed"


def test_direct_mode_seals_a_signed_batch_replayed_from_the_spool(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A batch read back from the spool has only its entry: its rows are sealed all the same."""
    from activity_logging.sinks import StoreSink

    url = f"sqlite:///{tmp_path / 'trail.db'}"
    from activity_logging.snapshot import Snapshotter

    ring = KeyRing.parse(KEY)
    snap = Snapshotter(context=False)  # a producer's own numbering, from seq 1
    encoder = WireEncoder("prod-spool", signer=EntrySigner(ring.current))
    entries = []
    for _ in range(2):
        records = []
        for i in range(3):
            rec = logging.LogRecord("activity", logging.INFO, __file__, 1, "x", None, None)
            rec.__dict__["i"] = i
            records.append(snap.take(rec))
        entries.append(encoder.batch(records).entry())
    sink = StoreSink(url, signing_key=ring.current)
    sink.prepare()
    try:
        sink.send([Batch.from_entry(entry, 3) for entry in entries])
    finally:
        sink.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "trail.db")) as conn, conn:
        sealed = conn.execute("SELECT count(row_mac) FROM activity_logs").fetchone()[0]
    assert sealed == 6
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    assert main(["verify", "--database-url", url, "--signing-key-file", str(key_file),
                 "--json"]) == 0, capsys.readouterr().out
