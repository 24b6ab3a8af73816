"""Evidence on the real path: a signed handler → Redis → worker with the key → PostgreSQL,
then forgeries at the stream and tampering in the table, each found (issue 10, items 1-3)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import asyncpg
import orjson
import pytest
import redis
from hypothesis import strategies as st

from activity_logging import db
from activity_logging.cli import main
from activity_logging.handler import ActivityHandler
from activity_logging.retention import cleanup
from activity_logging.signing import KeyRing
from activity_logging.worker import ActivityWorker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

KEY = "k1:" + "a" * 40
OTHER = "k2:" + "b" * 40

#: Numbers jsonb gives back in another form than Python wrote them: the seal must not care.
AWKWARD = {"i": 2**63 - 1, "big": 1e20, "e16": 1e16, "huge": 1.2345678901234567e18,
           "tiny": 1.5e-7, "neg0": -0.0, "one": 1.0, "third": 1 / 3, "text": "\u202e\x1b[2J",
           "nested": [{"z": 1, "a": [0.1, 2.5e-300]}], "emoji": "\U0001f600"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing.key"
    path.write_text(f"# current first\n{KEY}\n")
    return path


async def _sql(pg_url: str, schema: str, sql: str, *args: Any) -> Any:
    conn = await db.connect_pg(pg_url, schema=schema)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _log_trail(redis_url: str, stream: str, n: int, *, key: str = KEY, name: str = "trail") -> str:
    """Log ``n`` activities through a signed handler in small batches (many entries, so links
    cross entries); returns the producer id."""
    handler = ActivityHandler(redis_url=redis_url, stream=stream, batch_size=7,
                              flush_interval=0.01, signing_key=key)
    log = logging.getLogger(f"activity.sign.{name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        for i in range(n):
            log.info("payment_taken", extra={"actor_id": f"agent-{i}", "amount": i * 10,
                                             "changes": {"status": [None, "paid"]},
                                             "ip_address": "::ffff:10.0.0.1" if i % 2 else "2001:db8::1",
                                             **AWKWARD})
        assert handler.flush(30.0)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert handler.stats()["checkpoints"] == 1  # the closing one
    return handler.producer_id


async def _drain(redis_url: str, stream: str, pg_url: str, schema: str,
                 keys: str | None = KEY) -> ActivityWorker:
    worker = ActivityWorker(redis_url, pg_url, stream=stream, schema=schema, max_wait=0.1,
                            signing_keys=keys if keys is not None else "")
    await worker.run(stop_when_idle=True)
    return worker


async def _verify(pg_url: str, schema: str, key_file: Path | None, capsys: Any,
                  *extra: str) -> tuple[int, dict[str, Any]]:
    args = ["verify", "--database-url", pg_url, "--schema", schema, "--json", *extra]
    if key_file is not None:
        args += ["--signing-key-file", str(key_file)]
    code = await anyio.to_thread.run_sync(main, args)
    return code, json.loads(capsys.readouterr().out)


def _kinds(report: dict[str, Any]) -> set[str]:
    return {p["kind"] for c in report["chains"] for p in c["problems"]}


async def test_signed_trail_is_stored_sealed_and_verifies(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, key_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    producer = _log_trail(redis_url, redis_stream, 40)
    worker = await _drain(redis_url, redis_stream, pg_url, pg_schema)
    assert worker.stats()["inserted"] == 41  # 40 activities and the closing checkpoint
    assert worker.stats()["refused_signature"] == 0
    rows = await _sql(pg_url, pg_schema, "SELECT * FROM activity_logs ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 42))
    assert all(r["key_id"] == "k1" and len(r["row_mac"]) == 64 for r in rows)
    assert rows[0]["prev_mac"] == ""  # the producer's first record
    assert all(b["prev_mac"] == a["mac"] for a, b in itertools.pairwise(rows))
    assert rows[-1]["activity_type"] == "activity_log.checkpoint"
    assert orjson.loads(rows[-1]["metadata"])["checkpoint"]["closing"] is True

    code, report = await _verify(pg_url, pg_schema, key_file, capsys)
    assert (code, report["problems"], report["missing"]) == (0, 0, 0), report
    chain = report["chains"][0]
    assert (chain["producer_id"], chain["sealed"], chain["closed"]) == (producer, 41, True)
    # without the key the links and seq still check; the output says it is unauthenticated
    code, report = await _verify(pg_url, pg_schema, None, capsys)
    assert code == 0 and "unauthenticated" in report["authentication"]


async def test_forged_and_edited_entries_are_dead_lettered(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str,
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    client = redis.Redis.from_url(redis_url)
    try:
        _log_trail(redis_url, redis_stream, 7)  # exactly one entry of 7, then the checkpoint's
        genuine = client.xrange(redis_stream)
        assert len(genuine) >= 2  # the activities' entries, then the closing checkpoint's
        fields = genuine[0][1]
        # 1. an entry made by hand, unsigned: actor admin, a 2021 timestamp
        forged = dict(fields)
        for k in (b"k", b"pm", b"t"):
            forged.pop(k)
        records = orjson.loads(fields[b"d"])
        records[0]["x"]["actor_id"] = "admin"
        records[0]["ts"] = 1_610_000_000_000_000
        forged[b"d"] = orjson.dumps(records[:1])
        forged[b"n"] = b"1"
        # 2. the real entry, edited (actor and amount) and re-added with the same ids and seq
        edited = dict(fields)
        records = orjson.loads(fields[b"d"])
        records[-1]["x"]["amount"] = 1_000_000
        edited[b"d"] = orjson.dumps(records)
        # 3. a tag made with another key under the real key's id
        wrong_key = dict(fields)
        wrong_key[b"t"] = b"ab" * 32
        for entry in (forged, edited, wrong_key):
            client.xadd(redis_stream, entry)
        worker = await _drain(redis_url, redis_stream, pg_url, pg_schema)
    finally:
        client.close()
    stats = worker.stats()
    assert stats["refused_signature"] == 3
    assert stats["inserted"] == 8  # the genuine 7 and the checkpoint, once each
    rows = await _sql(pg_url, pg_schema, "SELECT actor_id, metadata FROM activity_logs")
    assert "admin" not in {r["actor_id"] for r in rows}
    assert all(orjson.loads(r["metadata"]).get("amount") != 1_000_000 for r in rows)
    dead = await _sql(pg_url, pg_schema,
                      "SELECT reason, error FROM activity_log_dead_letters ORDER BY id")
    assert [d["reason"] for d in dead] == ["bad_signature"] * 3
    assert "not signed" in dead[0]["error"] and "does not match" in dead[1]["error"]


async def test_key_rotation_old_entries_accepted_rows_sealed_with_the_new_key(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    _log_trail(redis_url, redis_stream, 10, key=KEY)  # a producer not yet rotated
    worker = await _drain(redis_url, redis_stream, pg_url, pg_schema, keys=f"{OTHER},{KEY}")
    assert (worker.stats()["inserted"], worker.stats()["refused_signature"]) == (11, 0)
    rows = await _sql(pg_url, pg_schema, "SELECT DISTINCT key_id FROM activity_logs")
    assert [r["key_id"] for r in rows] == ["k2"]
    ring = tmp_path / "ring.key"
    ring.write_text(f"{OTHER}\n{KEY}\n")
    code, report = await _verify(pg_url, pg_schema, ring, capsys)
    assert code == 0, report
    only_old = tmp_path / "old.key"
    only_old.write_text(KEY)
    code, report = await _verify(pg_url, pg_schema, only_old, capsys)
    assert code == 1 and _kinds(report) == {"unknown_key"}


async def test_worker_without_key_stores_signed_entries_unsealed(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, key_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    _log_trail(redis_url, redis_stream, 5)
    worker = await _drain(redis_url, redis_stream, pg_url, pg_schema, keys=None)
    assert worker.stats()["inserted"] == 6  # nothing refused: stored, and visibly unsealed
    code, report = await _verify(pg_url, pg_schema, key_file, capsys)
    assert code == 1 and _kinds(report) == {"unsealed"}
    code, report = await _verify(pg_url, pg_schema, None, capsys)
    assert code == 0  # the links are whole: only the key can tell that nobody sealed them


# --- the tamper matrix ------------------------------------------------------------------------

#: name -> (SQL run against the intact copy, the problem kinds verify must report). ``$P`` is
#: the producer id. Every case is checked on its own copy of one intact trail of 20 + 1 rows.
TAMPERING: dict[str, tuple[list[str], set[str]]] = {
    "update actor": (["UPDATE activity_logs SET actor_id = 'admin' WHERE seq = 5"], {"altered"}),
    "update jsonb": (["UPDATE activity_logs SET metadata = metadata || '{\"amount\": 1}' "
                      "WHERE seq = 6"], {"altered"}),
    "update timestamp": (["UPDATE activity_logs SET timestamp = timestamp - interval '1 day' "
                          "WHERE seq = 7"], {"altered"}),
    "delete middle": (["DELETE FROM activity_logs WHERE seq = 10"], {"missing"}),
    "delete tail before the checkpoint": (
        ["DELETE FROM activity_logs WHERE seq IN (18, 19, 20)"], {"missing"}),
    "delete tail and checkpoint": (["DELETE FROM activity_logs WHERE seq >= 18"], {"open_tail"}),
    "delete head": (["DELETE FROM activity_logs WHERE seq <= 3"], {"head_missing"}),
    "insert backdated fake": (
        ["INSERT INTO activity_logs SELECT gen_random_uuid(), timestamp - interval '3 years', "
         "activity_type, description, severity, level, actor_type, 'admin', target_type, "
         "target_id, changes, metadata, ip_address, user_agent, request_id, http_method, path, "
         "logger, hostname, process_id, producer_id, seq, key_id, prev_mac, mac, row_mac "
         "FROM activity_logs WHERE seq = 15"], {"altered", "duplicate"}),
    "duplicate seq": (
        ["INSERT INTO activity_logs SELECT gen_random_uuid(), timestamp, activity_type, "
         "description, severity, level, actor_type, actor_id, target_type, target_id, changes, "
         "metadata, ip_address, user_agent, request_id, http_method, path, logger, hostname, "
         "process_id, producer_id, seq, key_id, prev_mac, mac, row_mac "
         "FROM activity_logs WHERE seq = 8"], {"altered", "duplicate"}),
    "insert unsigned producer": (
        ["INSERT INTO activity_logs (id, timestamp, activity_type, severity, level, producer_id, "
         "seq) VALUES (gen_random_uuid(), now() - interval '2 years', 'refund', 'info', 20, "
         "'ghost', 1)"], {"unsigned"}),
    "insert row without producer": (
        ["INSERT INTO activity_logs (id, timestamp, activity_type, severity, level) VALUES "
         "(gen_random_uuid(), now() - interval '2 years', 'refund', 'info', 20)"], {"unsigned"}),
    "inet given a prefix": (["UPDATE activity_logs SET ip_address = set_masklen(ip_address, 64) "
                             "WHERE seq = 9"], {"altered"}),
    "number edited below a float's precision": (
        ["UPDATE activity_logs SET metadata = jsonb_set(metadata, '{third}', "
         "'0.333333333333333333333') WHERE seq = 10"], {"altered"}),
    "strip seal": (["UPDATE activity_logs SET row_mac = NULL WHERE seq = 4"], {"unsealed"}),
    "swap links": (["UPDATE activity_logs SET prev_mac = (SELECT prev_mac FROM activity_logs "
                    "WHERE seq = 3) WHERE seq = 12"], {"altered", "broken_link"}),
}


@pytest.fixture
def copies(pg_url: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made

    async def drop() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            for name in made:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    import asyncio

    asyncio.run(drop())


async def _copy_schema(pg_url: str, source: str, copies: list[str]) -> str:
    name = f"{source}_c{len(copies)}"
    copies.append(name)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        for table in ("activity_logs", "activity_log_cuts"):
            await conn.execute(f'CREATE TABLE "{name}".{table} (LIKE "{source}".{table} INCLUDING ALL)')
            await conn.execute(f'INSERT INTO "{name}".{table} SELECT * FROM "{source}".{table}')
    finally:
        await conn.close()
    return name


async def _intact_trail(redis_url: str, stream: str, pg_url: str, schema: str, n: int) -> None:
    """A table holding one producer's signed trail of ``n`` activities and its checkpoint."""
    await db.init_db(pg_url, schema=schema)
    _log_trail(redis_url, stream, n)
    await _drain(redis_url, stream, pg_url, schema)


async def test_every_tampering_is_found_and_the_intact_trail_passes(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, key_file: Path,
    copies: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    await _intact_trail(redis_url, redis_stream, pg_url, pg_schema, 20)
    code, report = await _verify(pg_url, pg_schema, key_file, capsys, "--open-grace", "0")
    assert code == 0, report
    found: dict[str, set[str]] = {}
    for name, (statements, _) in TAMPERING.items():
        schema = await _copy_schema(pg_url, pg_schema, copies)
        for sql in statements:
            await _sql(pg_url, schema, sql)
        code, report = await _verify(pg_url, schema, key_file, capsys, "--open-grace", "0")
        found[name] = _kinds(report) if code else set()
        assert code == 1, f"{name}: verify passed a tampered trail"
    assert found == {name: expected for name, (_, expected) in TAMPERING.items()}


async def test_retention_cut_passes_and_deletion_beyond_it_does_not(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, key_file: Path,
    copies: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    await _intact_trail(redis_url, redis_stream, pg_url, pg_schema, 20)
    # age the first 8 rows past the retention period (their seals are redone by hand: the
    # test plays the producer that logged them long ago, not an attacker)
    await _age_rows(pg_url, pg_schema, through_seq=8, days=200)
    code, report = await _verify(pg_url, pg_schema, key_file, capsys)
    assert code == 0, report

    without_key = await _copy_schema(pg_url, pg_schema, copies)
    with pytest.raises(Exception, match="signing key"):
        await cleanup(pg_url, schema=without_key, retention_days=90, keyring=None)

    result = await cleanup(pg_url, schema=pg_schema, retention_days=90, keyring=KeyRing.parse(KEY))
    assert result.deleted_rows == 8
    cuts = await _sql(pg_url, pg_schema, "SELECT producer_id, seq FROM activity_log_cuts")
    assert [c["seq"] for c in cuts] == [8]
    code, report = await _verify(pg_url, pg_schema, key_file, capsys)
    assert code == 0, report  # what remains after cleanup verifies

    beyond = await _copy_schema(pg_url, pg_schema, copies)
    await _sql(pg_url, beyond, "DELETE FROM activity_logs WHERE seq IN (9, 10)")
    code, report = await _verify(pg_url, beyond, key_file, capsys)
    assert code == 1 and "head_missing" in _kinds(report)

    no_marker = await _copy_schema(pg_url, pg_schema, copies)
    await _sql(pg_url, no_marker, "DELETE FROM activity_log_cuts")
    code, report = await _verify(pg_url, no_marker, key_file, capsys)
    assert code == 1 and _kinds(report) == {"head_missing"}

    emptied = await _copy_schema(pg_url, pg_schema, copies)  # every row after the cut deleted
    await _sql(pg_url, emptied, "DELETE FROM activity_logs")
    code, report = await _verify(pg_url, emptied, key_file, capsys)
    assert code == 1 and _kinds(report) == {"open_tail"}  # the cut trail had not ended at 8
    everything = await _copy_schema(pg_url, pg_schema, copies)  # a closed trail, all expired
    await _age_rows(pg_url, everything, through_seq=21, days=200, only=tuple(range(9, 22)))
    assert (await cleanup(pg_url, schema=everything, retention_days=90, keyring=KeyRing.parse(KEY))
            ).deleted_rows == 13
    code, report = await _verify(pg_url, everything, key_file, capsys)
    assert code == 0, report

    forged_marker = await _copy_schema(pg_url, pg_schema, copies)
    await _sql(pg_url, forged_marker, "UPDATE activity_log_cuts SET seq = 10")
    await _sql(pg_url, forged_marker, "DELETE FROM activity_logs WHERE seq IN (9, 10)")
    code, report = await _verify(pg_url, forged_marker, key_file, capsys)
    assert code == 1 and _kinds(report) == {"bad_cut", "head_missing"}


async def _age_rows(pg_url: str, schema: str, *, through_seq: int, days: int,
                    only: tuple[int, ...] = ()) -> None:
    """Move rows (``seq`` up to ``through_seq``, or those in ``only``) back in time and reseal
    them with the key, as if logged ``days`` ago (the test plays the producer, with its key)."""
    from activity_logging.chain_store import stream_rows
    from activity_logging.signing import canonical_row, encode_mac

    key = KeyRing.parse(KEY).current
    chosen = only or tuple(range(1, through_seq + 1))
    await _sql(pg_url, schema, f"UPDATE activity_logs SET timestamp = timestamp - interval "
               f"'{days} days' WHERE seq = ANY($1::bigint[])", list(chosen))
    async with db.read_connection(pg_url, schema=schema) as conn:
        rows = [r async for r in stream_rows(conn) if r["seq"] in chosen]
    for row in rows:
        seal = encode_mac(key.mac(b"activity_logging/row/1\x00", canonical_row(row)))
        await _sql(pg_url, schema, "UPDATE activity_logs SET row_mac = $1 WHERE id = $2",
                   seal, row["id"])



# --- the seal survives PostgreSQL's own forms (jsonb numbers, inet, timestamptz) -------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12).map(
        lambda s: s.replace("\x00", "")),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6).map(lambda s: s.replace("\x00", "")), inner, max_size=4),
    max_leaves=10)


async def test_seals_made_by_the_writer_match_what_postgresql_reads_back(
    pg_url: str, pg_schema: str,
) -> None:
    """Generated metadata/changes (any JSON: floats jsonb rewrites, big integers, nesting),
    addresses and times: each row sealed as built, stored by the worker's store, read back
    by verify's reader, must seal the same."""
    from hypothesis import HealthCheck, given, settings

    from activity_logging.chain_store import stream_rows
    from activity_logging.signing import EntryAuth, row_seal_matches, seal
    from activity_logging.store import make_store
    from tests.crud_rows import make_rows

    await db.init_db(pg_url, schema=pg_schema)
    ring = KeyRing.parse(KEY)
    values: list[Any] = []

    @given(st.lists(st.tuples(_JSON, _JSON), min_size=1, max_size=20))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def collect(batch: list[tuple[Any, Any]]) -> None:
        values.extend(batch)

    collect()
    rows = make_rows(len(values), producer_id="jsonb")
    auth = EntryAuth("k1", b"t" * 32, b"", len(rows), checked=True)
    for position, (row, (meta, changes)) in enumerate(zip(rows, values, strict=True)):
        row["metadata"] = meta if isinstance(meta, dict) else {"v": meta}
        row["changes"] = changes if isinstance(changes, dict | list) else None
        row["ip_address"] = ("::ffff:10.1.2.3", "2001:DB8::0:1", "192.0.2.1", None)[position % 4]
        seal(row, ring.current, auth, position)
    store = make_store(pg_url, schema=pg_schema)
    try:
        await store.connect()
        await store.insert_activities(rows)
    finally:
        await store.close()
    async with db.read_connection(pg_url, schema=pg_schema) as conn:
        stored = [r async for r in stream_rows(conn)]
    assert len(stored) == len(rows)
    bad = [(r["seq"], r["metadata"], r["changes"]) for r in stored
           if row_seal_matches(r, ring) is not True]
    assert bad == []


async def test_worker_cli_takes_the_key_file_and_refuses_unsigned_entries(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, key_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.init_db(pg_url, schema=pg_schema)
    _log_trail(redis_url, redis_stream, 3)  # signed: 3 activities and the closing checkpoint
    handler = ActivityHandler(redis_url=redis_url, stream=redis_stream, signing_key="")
    log = logging.getLogger("activity.sign.unsigned")
    log.propagate = False
    log.addHandler(handler)
    log.warning("unsigned_one")
    log.removeHandler(handler)
    handler.close()
    args = [sys.executable, "-m", "activity_logging", "worker", "--redis-url", redis_url,
            "--database-url", pg_url, "--schema", pg_schema, "--stream", redis_stream,
            "--exit-when-idle", "--max-wait", "0.1", "--signing-key-file", str(key_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVITY_LOG_SIGNING")}
    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=60, check=False))
    assert done.returncode == 0, done.stderr
    rows = await _sql(pg_url, pg_schema, "SELECT count(*) AS n, count(row_mac) AS s FROM activity_logs")
    assert (rows[0]["n"], rows[0]["s"]) == (4, 4)
    dead = await _sql(pg_url, pg_schema, "SELECT reason FROM activity_log_dead_letters")
    assert [d["reason"] for d in dead] == ["bad_signature"]
    code, report = await _verify(pg_url, pg_schema, key_file, capsys)
    assert code == 0, report


async def test_cleanup_refuses_to_cut_over_rows_that_do_not_verify_and_skew_is_no_alarm(
    redis_url: str, redis_stream: str, pg_url: str, pg_schema: str, key_file: Path,
    copies: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """The review's attacks on retention: a row backdated so that cleanup takes it (and the
    rows the attacker deleted before it), a forged row with a far seq to carry the marker
    ahead; and honest cases: a clock that went back (seq 5 newer than 6..8), genuine old
    entries replayed after the cut."""
    ring = KeyRing.parse(KEY)
    await _intact_trail(redis_url, redis_stream, pg_url, pg_schema, 20)
    await _age_rows(pg_url, pg_schema, through_seq=8, days=200)

    backdated = await _copy_schema(pg_url, pg_schema, copies)
    await _sql(pg_url, backdated, "DELETE FROM activity_logs WHERE seq BETWEEN 9 AND 14")
    await _sql(pg_url, backdated, "UPDATE activity_logs SET timestamp = timestamp - interval "
               "'300 days' WHERE seq = 15")
    far = await _copy_schema(pg_url, pg_schema, copies)
    await _sql(pg_url, far, "INSERT INTO activity_logs SELECT gen_random_uuid(), timestamp, "
               "activity_type, description, severity, level, actor_type, actor_id, target_type, "
               "target_id, changes, metadata, ip_address, user_agent, request_id, http_method, "
               "path, logger, hostname, process_id, producer_id, 1000000000, key_id, prev_mac, "
               "repeat('f', 64), row_mac FROM activity_logs WHERE seq = 1")
    for schema, kind in ((backdated, "altered"), (far, "altered")):
        with pytest.raises(Exception, match=f"do not verify \\({kind}"):
            await cleanup(pg_url, schema=schema, retention_days=90, keyring=ring)
        count = await _sql(pg_url, schema, "SELECT count(*) AS n FROM activity_log_cuts")
        assert count[0]["n"] == 0  # nothing signed, nothing deleted

    skewed = await _copy_schema(pg_url, pg_schema, copies)
    await _age_rows(pg_url, skewed, through_seq=8, days=-199, only=(5,))  # seq 5 is newer
    result = await cleanup(pg_url, schema=skewed, retention_days=90, keyring=ring)
    assert result.deleted_rows == 7
    code, report = await _verify(pg_url, skewed, key_file, capsys)
    assert code == 0, report  # seq 5 kept below the cut through 8: no gap, no alarm

    result = await cleanup(pg_url, schema=pg_schema, retention_days=90, keyring=ring)
    assert result.deleted_rows == 8
    replayed = await _copy_schema(pg_url, pg_schema, copies)
    await _sql(pg_url, replayed, f'INSERT INTO activity_logs SELECT * FROM "{skewed}".activity_logs '
               "WHERE seq = 5")  # a genuine old row stored again after its cut
    code, report = await _verify(pg_url, replayed, key_file, capsys)
    assert code == 0, report
