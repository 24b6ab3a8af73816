"""``status`` against a real Redis holding heartbeats a worker did not write: a ghost from
the future does not make a pipeline without a worker healthy; keys of another type, too
long or not JSON are warnings; a stream name with glob characters reads only its own
heartbeats; names and values with control characters reach the terminal escaped; the
URLs it shows carry no password."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from activity_logging.config import DEFAULT_HEARTBEAT_TTL, heartbeat_key
from activity_logging.status_redis import MAX_HEARTBEAT_BYTES
from tests.cli_run import run

pytestmark = pytest.mark.integration

GROUP = "activity_log_workers"
EVIL = "\x1b[2J\x1b]0;owned\x07\u202eevil\r\nPROBLEM: none"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    url = f"sqlite:///{tmp_path / 'status.db'}"
    assert run(["init-db", "--database-url", url], capsys)[0] == 0
    return url


def _status(redis_url: str, stream: str, db: str, capsys: pytest.CaptureFixture[str],
            *extra: str) -> tuple[int, str, str]:
    return run(["status", "--redis-url", redis_url, "--stream", stream, "--database-url", db,
                *extra], capsys)


def _beat(client: redis.Redis, stream: str, consumer: str, *, ts: float | None = None,
          expire: bool = True) -> None:
    payload = orjson.dumps({"consumer": consumer, "host": "h1", "pid": 7,
                            "ts": time.time() if ts is None else ts, "started": time.time(),
                            "counters": {}})
    client.set(heartbeat_key(stream, consumer), payload,
               ex=int(DEFAULT_HEARTBEAT_TTL) if expire else None)


def test_a_ghost_heartbeat_from_the_future_does_not_make_status_healthy(
    redis_url: str, redis_stream: str, client: redis.Redis, db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    code, out, _ = _status(redis_url, redis_stream, db, capsys)
    assert code == 1 and "no live worker" in out
    # What the issue measured: SET <stream>:heartbeat:ghost with a future time, no expiry.
    _beat(client, redis_stream, "ghost", ts=time.time() + 365 * 86400, expire=False)
    code, out, _ = _status(redis_url, redis_stream, db, capsys)
    assert code == 1, out
    assert out.startswith("pipeline: UNHEALTHY")
    assert "no live worker" in out
    assert "dated in the future" in out and "'ghost'" in out and "no expiry" in out
    code, out, _ = _status(redis_url, redis_stream, db, capsys, "--json")
    report = json.loads(out)
    assert code == 1 and report["healthy"] is False and report["live_workers"] == 0
    (ghost,) = report["workers"]
    assert ghost["consumer"] == "ghost" and ghost["live"] is False
    assert ghost["ahead_seconds"] > 364 * 86400 and ghost["expires"] is False
    # A real beat makes it healthy; the ghost stays a warning.
    _beat(client, redis_stream, "w1")
    code, out, _ = _status(redis_url, redis_stream, db, capsys)
    assert code == 0, out
    assert "workers:          1 live of 2 seen" in out
    assert "warning: 1 heartbeat is dated in the future" in out


def test_heartbeat_keys_that_are_not_a_workers_are_warnings(
    redis_url: str, redis_stream: str, client: redis.Redis, db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    _beat(client, redis_stream, "w1")
    client.hset(heartbeat_key(redis_stream, "a-hash"), "ts", str(time.time()))
    client.rpush(heartbeat_key(redis_stream, "a-list"), "x")
    client.set(heartbeat_key(redis_stream, "huge"),
               orjson.dumps({"ts": time.time(), "pad": "x" * (4 * MAX_HEARTBEAT_BYTES)}))
    client.set(heartbeat_key(redis_stream, "garbage"), b"\xff\x00 not json {")
    client.set(heartbeat_key(redis_stream, "no-ts"), b'{"consumer": "w9"}')
    code, out, err = _status(redis_url, redis_stream, db, capsys)
    assert code == 0, out + err
    assert "Traceback" not in out + err
    assert "2 heartbeat keys of another Redis type" in out
    assert "over 16384 bytes" in out and "'huge'" not in out  # the key, not the consumer
    assert "2 heartbeats not in a worker's form" in out
    assert "workers:          1 live of 1 seen" in out


def test_a_stream_name_with_glob_characters_reads_only_its_own_heartbeats(
    redis_url: str, redis_stream: str, client: redis.Redis, db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    globbed = f"{redis_stream}*"
    client.xgroup_create(globbed, GROUP, id="0", mkstream=True)
    _beat(client, f"{redis_stream}-other", "someone-else")  # matched by an unescaped glob
    code, out, _ = _status(redis_url, globbed, db, capsys, "--json")
    report = json.loads(out)
    assert report["workers"] == [] and code == 1
    _beat(client, globbed, "mine")
    code, out, _ = _status(redis_url, globbed, db, capsys, "--json")
    assert [w["consumer"] for w in json.loads(out)["workers"]] == ["mine"] and code == 0


def test_names_from_redis_reach_the_terminal_escaped(
    redis_url: str, redis_stream: str, client: redis.Redis, db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = f"{redis_stream}{EVIL}"
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    client.xadd(stream, {"v": "1"})
    client.xreadgroup(GROUP, f"c{EVIL}", {stream: ">"}, count=1)
    _beat(client, stream, f"w{EVIL}")
    code, out, err = _status(redis_url, stream, db, capsys)
    text = out + err
    for bad in ("\x1b", "\x07", "\u202e", "\r"):
        assert bad not in text
    assert not any(line.startswith("PROBLEM: none") for line in text.splitlines())
    assert "w\\x1b[2J" in out and "c\\x1b[2J" in out
    code, out, _ = _status(redis_url, stream, db, capsys, "--json")
    assert code == 0
    assert "\u202e" not in out and "\x1b" not in out
    report = json.loads(out)
    assert report["stream"] == stream
    assert [w["consumer"] for w in report["workers"]] == [f"w{EVIL}"]


def test_status_shows_urls_without_their_passwords(
    redis_url: str, redis_stream: str, client: redis.Redis, pg_url: str, pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "s3cr3tPW"
    db = pg_url + ("&" if "?" in pg_url else "?") + f"password={secret}"
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    assert run(["init-db", "--database-url", db, "--schema", pg_schema], capsys)[0] == 0
    for extra in ([], ["--json"]):
        code, out, err = run(["status", "--redis-url", redis_url, "--stream", redis_stream,
                              "--database-url", db, "--schema", pg_schema, *extra], capsys)
        assert secret not in out + err
        assert "password=***" in out
        assert code == 1  # no worker


def test_a_key_of_another_type_is_a_problem_not_a_traceback(
    redis_url: str, redis_stream: str, client: redis.Redis, db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.set(redis_stream, "not a stream")  # (dead letters are a table now, not a Redis key)
    _beat(client, redis_stream, "w1")
    code, out, err = _status(redis_url, redis_stream, db, capsys)
    assert code == 1, out + err
    assert "Traceback" not in out + err
    assert f"PROBLEM: cannot read stream '{redis_stream}' from Redis: WRONGTYPE" in out
    assert "workers:          1 live of 1 seen" in out  # the other readings went on


def test_a_present_time_ghost_is_named_until_it_reads_from_the_group(
    redis_url: str, redis_stream: str, client: redis.Redis, db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.xgroup_create(redis_stream, GROUP, id="0", mkstream=True)
    _beat(client, redis_stream, "ghost")
    code, out, _ = _status(redis_url, redis_stream, db, capsys)
    assert code == 0 and "no consumer of group" not in out  # nothing delivered yet
    client.xadd(redis_stream, {"v": "1"})
    client.xreadgroup(GROUP, "w-real", {redis_stream: ">"}, count=1)
    _beat(client, redis_stream, "w-real")
    code, out, _ = _status(redis_url, redis_stream, db, capsys)
    assert code == 0, out  # unsigned, a beat in the present looks like a worker's
    assert "1 live heartbeat names no consumer of group" in out and "'ghost'" in out
    assert "'w-real'" not in out.split("no consumer of group")[1]
    client.xadd(redis_stream, {"v": "2"})
    client.xreadgroup(GROUP, "ghost", {redis_stream: ">"}, count=1)  # what a worker does
    code, out, _ = _status(redis_url, redis_stream, db, capsys)
    assert code == 0 and "no consumer of group" not in out
