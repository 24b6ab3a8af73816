"""Sharded stream names, the shard a producer picks, and Redis Cluster URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from activity_logging import ActivityHandler, ActivityWorker
from activity_logging.config import resolve_redis_url
from activity_logging.exceptions import ConfigurationError
from activity_logging.redis_clients import is_cluster, node_url
from activity_logging.shards import (
    CLUSTER_SLOTS,
    MAX_STREAM_SHARDS,
    resolve_shards,
    shard_for,
    shard_stream,
    shard_streams,
)


def test_one_shard_is_the_stream_itself() -> None:
    assert shard_streams("activity_log_stream", 1) == ["activity_log_stream"]
    assert shard_stream("activity_log_stream", 1, "abc") == "activity_log_stream"


@pytest.mark.parametrize("shards", [2, 3, 4, 6, 16, 64])
def test_each_shard_hashes_into_its_own_part_of_the_slot_space(shards: int) -> None:
    names = shard_streams("s", shards)
    assert len(set(names)) == shards
    for i, name in enumerate(names):
        assert name.startswith("s:{") and name.endswith("}")
        slot = key_slot(name.encode())
        assert i * CLUSTER_SLOTS // shards <= slot < (i + 1) * CLUSTER_SLOTS // shards
    # so with masters that split the slots evenly, 3 shards land on 3 masters of 3
    if shards % 3 == 0:
        thirds = {key_slot(n.encode()) * 3 // CLUSTER_SLOTS for n in names}
        assert thirds == {0, 1, 2}


def test_shard_names_do_not_depend_on_the_process() -> None:
    # CRC16 as Redis Cluster defines it: the same names in every process and version
    assert shard_streams("activity_log_stream", 3) == [
        "activity_log_stream:{0.1}", "activity_log_stream:{1.0}", "activity_log_stream:{2.0}"]


@given(st.text(min_size=1, max_size=32), st.integers(min_value=2, max_value=MAX_STREAM_SHARDS))
def test_a_producer_always_writes_to_one_of_the_shards(producer: str, shards: int) -> None:
    i = shard_for(producer, shards)
    assert 0 <= i < shards
    assert shard_stream("s", shards, producer) == shard_streams("s", shards)[i]
    assert shard_for(producer, shards) == i  # stable


def test_producer_ids_spread_over_the_shards() -> None:
    import uuid

    counts = [0, 0, 0]
    for _ in range(3000):
        counts[shard_for(uuid.uuid4().hex[:16], 3)] += 1
    assert min(counts) > 800  # about 1000 each


def test_the_shard_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_shards(None, {}) == 1
    assert resolve_shards(None, {"ACTIVITY_LOG_STREAM_SHARDS": "4"}) == 4
    assert resolve_shards(2, {"ACTIVITY_LOG_STREAM_SHARDS": "4"}) == 2  # the argument wins
    for bad in (0, -1, MAX_STREAM_SHARDS + 1):
        with pytest.raises(ConfigurationError, match="stream_shards"):
            resolve_shards(bad, {})
    with pytest.raises(ConfigurationError, match="ACTIVITY_LOG_STREAM_SHARDS"):
        resolve_shards(None, {"ACTIVITY_LOG_STREAM_SHARDS": "three"})


def test_a_sharded_stream_name_may_hold_no_hash_tag() -> None:
    # "{app}" would hash every shard on the tag "app": all of them on one node
    with pytest.raises(ConfigurationError, match="brace"):
        ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="{app}",
                       stream_shards=3)
    with pytest.raises(ConfigurationError, match="brace"):
        ActivityHandler(redis_url="redis://127.0.0.1:1/0", stream="a{b}", stream_shards=2)
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="{app}")
    assert [s.stream for s in worker.shards] == ["{app}"]  # unsharded: any name, as before


def test_a_worker_reads_every_shard_and_a_producer_writes_to_one() -> None:
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s",
                            stream_shards=4)
    assert [s.stream for s in worker.shards] == shard_streams("s", 4)
    handler = ActivityHandler(redis_url="redis://127.0.0.1:1/0", stream="s", stream_shards=4,
                              spool_path="off")
    try:
        assert handler.shard_stream == shard_stream("s", 4, handler.producer_id)
        assert handler.shard_stream in shard_streams("s", 4)
    finally:
        handler.close()


def test_direct_mode_ignores_shards(tmp_path: object) -> None:
    handler = ActivityHandler(database_url=f"sqlite:///{tmp_path}/d.db", stream_shards=4)
    try:
        assert handler.stream_shards == 1
    finally:
        handler.close()


def test_cluster_urls() -> None:
    assert resolve_redis_url("redis+cluster://10.0.0.1:7000") == "redis+cluster://10.0.0.1:7000"
    assert is_cluster("rediss+cluster://u:p@h:7000/0") and not is_cluster("redis://h:6379/0")
    assert node_url("rediss+cluster://u:p@h:7000") == "rediss://u:p@h:7000"
    assert node_url("redis://h:6379/2") == "redis://h:6379/2"
    with pytest.raises(ConfigurationError, match="no database numbers"):
        resolve_redis_url("redis+cluster://h:7000/3")
    with pytest.raises(ConfigurationError, match="port"):
        resolve_redis_url("redis+cluster://h:notaport")
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://") as caught:
        resolve_redis_url("cluster://h:7000")
    assert "cluster://h:7000" in str(caught.value)


def test_a_handler_built_while_the_cluster_is_unreachable_works() -> None:
    # a cluster client reads the slot map as it is built: that waits for the first send
    handler = ActivityHandler(redis_url="redis+cluster://127.0.0.1:1", spool_path="off",
                              close_timeout=0.5)
    try:
        import logging

        log = logging.getLogger("activity.cluster_down")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        log.info("call_created")
        log.removeHandler(handler)
    finally:
        handler.close()
    stats = handler.stats()
    assert stats["enqueued"] == 1
    assert stats["sent"] == 0 and sum(v for k, v in stats.items()
                                      if k.startswith(("dropped_", "lost"))) == 1


def _entry(records: int = 3) -> dict[bytes, bytes]:
    import logging as logging_mod

    from activity_logging import snapshot, wire

    record = logging_mod.LogRecord("activity", logging_mod.INFO, __file__, 1, "call_created",
                                   None, None)
    return wire.WireEncoder("p").encode_batch(  # type: ignore[return-value]
        [snapshot.queued_from_record(record) for _ in range(records)])


class _Shards:
    """A fake Redis: ``hot`` shards always have entries, the others never (a blocking read
    waits its time, then returns nothing). Counts the fills (reads without BLOCK) running
    at once and the entries handed out per shard."""

    def __init__(self, hot: set[str]) -> None:
        self.hot = hot
        self.filling = 0
        self.most_filling = 0
        self.served: dict[str, int] = {}
        self.next_id = 0
        self.entry = _entry()

    async def xautoclaim(self, *args: object, **kwargs: object) -> list[object]:
        return [b"0-0", [], []]

    async def xreadgroup(self, group: str, consumer: str, streams: dict[str, bytes],
                         count: int = 1, block: int | None = None) -> list[object]:
        import asyncio

        (stream, read_id), = streams.items()
        if read_id != b">":
            return []  # no pending entries of our own
        if stream not in self.hot:
            if block:
                await asyncio.sleep(block / 1000)
            return []
        if block is None:
            self.filling += 1
            self.most_filling = max(self.most_filling, self.filling)
        await asyncio.sleep(0.005)
        if block is None:
            self.filling -= 1
        entries = []
        for _ in range(count):
            self.next_id += 1
            entries.append((f"{self.next_id}-0".encode(), self.entry))
        self.served[stream] = self.served.get(stream, 0) + len(entries)
        return [[stream, entries]]


def _drain_for(worker: ActivityWorker, seconds: float) -> int:
    """Run the worker's readers for ``seconds`` with a consumer emptying the queue; the
    batches that came out."""
    import asyncio

    async def main() -> int:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        batches = 0

        async def consume() -> None:
            nonlocal batches
            while True:
                await queue.get()
                batches += 1

        consumer = asyncio.create_task(consume())
        reading = asyncio.create_task(worker._read_shards(queue, False))  # type: ignore[arg-type]
        await asyncio.sleep(seconds)
        worker._stopping.set()
        await asyncio.wait_for(reading, 5)
        consumer.cancel()
        return batches

    return asyncio.run(main())


def test_the_batches_in_readers_hands_are_bounded_by_the_writers_not_the_shards() -> None:
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s",
                            stream_shards=8, max_wait=0.05, batch_size=30)
    fake = _Shards(hot=set(shard_streams("s", 8)))
    worker._redis = fake  # type: ignore[assignment]  # the read path only
    assert _drain_for(worker, 0.5) > 8
    assert set(fake.served) == set(shard_streams("s", 8))  # every shard is read...
    assert fake.most_filling == len(worker.stores) + 1 == 2  # ...two batches filled at a time


def test_a_busy_shard_is_not_kept_waiting_behind_idle_ones() -> None:
    # 7 idle shards block in their reads; that must not hold the slots the busy one needs
    names = shard_streams("s", 8)
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s",
                            stream_shards=8, max_wait=0.5, batch_size=30)
    fake = _Shards(hot={names[3]})
    worker._redis = fake  # type: ignore[assignment]
    batches = _drain_for(worker, 1.0)
    # a fill takes ~10 ms here: tens of batches a second, not one per blocked idle read
    assert batches >= 20, batches


def test_a_dead_letter_names_the_shard_its_entry_came_from() -> None:
    from activity_logging.worker_stream import _Batch

    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s",
                            stream_shards=3)
    shard = worker.shards[2]
    batch = _Batch(shard)
    worker._add_entries(batch, [(b"7-0", {b"v": b"1", b"n": b"1", b"d": b"not json"})])
    letters = worker._dead_letters(batch)
    assert [(d.source_stream, d.source_id, d.reason) for d in letters] == [
        (shard.stream, "7-0", "undecodable")]
    assert shard.in_flight == {b"7-0"} and not worker.shards[0].in_flight  # per shard


class _FailingSecondRead:
    """The first read returns entries, the next one loses the connection."""

    def __init__(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        self.entries = entries
        self.reads = 0

    async def xautoclaim(self, *args: object, **kwargs: object) -> list[object]:
        return [b"0-0", [], []]

    async def xreadgroup(self, group: str, consumer: str, streams: dict[str, bytes],
                         **kwargs: object) -> list[object]:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.reads += 1
        if self.reads == 1:
            return [[next(iter(streams)), self.entries]]
        raise RedisConnectionError("connection lost mid-batch")


def test_entries_read_before_a_failed_read_go_to_the_writers_not_into_limbo() -> None:
    import asyncio
    import logging as logging_mod

    from activity_logging import snapshot, wire

    record = logging_mod.LogRecord("activity", logging_mod.INFO, __file__, 1, "call_created",
                                   None, None)
    entry = wire.WireEncoder("p").encode_batch(
        [snapshot.queued_from_record(record) for _ in range(3)])
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s",
                            batch_size=1000, max_wait=0.01)
    fake = _FailingSecondRead([(b"1-0", entry), (b"2-0", entry)])
    worker._redis = fake  # type: ignore[assignment]  # the read path only

    async def main() -> object:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        reading = asyncio.create_task(worker._read_shards(queue, False))  # type: ignore[arg-type]
        batch = await asyncio.wait_for(queue.get(), 5)
        worker._stopping.set()
        await asyncio.wait_for(reading, 5)
        return batch

    batch = asyncio.run(main())
    assert batch.ids == [b"1-0", b"2-0"] and len(batch.rows) == 6  # type: ignore[attr-defined]
    assert worker.stats()["retried"] == 1


def test_only_errors_raised_inside_redis_py_count_as_its_faults() -> None:
    import os

    from redis.exceptions import ResponseError

    from activity_logging.redis_errors import is_redis_client_fault

    namespace: dict[str, object] = {}
    import redis

    code = "def send():\n    None.writelines([])\n"
    inside = os.path.join(os.path.dirname(redis.__file__), "asyncio", "connection.py")
    exec(compile(code, inside, "exec"), namespace)
    with pytest.raises(AttributeError) as inside_redis:
        namespace["send"]()  # type: ignore[operator]
    assert is_redis_client_fault(inside_redis.value)  # redis-py's bug on a torn-down connection
    # a checkout under some other "redis" directory is not redis-py
    elsewhere = os.path.join(os.sep, "src", "redis", "activity_logging", "worker_stream.py")
    exec(compile(code, elsewhere, "exec"), namespace)
    with pytest.raises(AttributeError) as outside:
        namespace["send"]()  # type: ignore[operator]
    assert not is_redis_client_fault(outside.value)
    with pytest.raises(AttributeError) as ours:
        None.writelines([])  # type: ignore[attr-defined]  # the same bug in our code
    assert not is_redis_client_fault(ours.value)
    assert not is_redis_client_fault(ResponseError("WRONGTYPE"))  # a reply, not a fault


def test_the_wrong_kind_of_redis_is_a_configuration_error_naming_the_fix() -> None:
    from redis.exceptions import RedisClusterException, ResponseError

    from activity_logging.redis_errors import is_transient_redis_error, wrong_redis_kind

    single = wrong_redis_kind(RedisClusterException("Cluster mode is not enabled on this node"),
                              "redis+cluster://u:secret@h:6379")
    assert isinstance(single, ConfigurationError) and "redis://" in str(single)
    assert "secret" not in str(single)
    node = wrong_redis_kind(ResponseError("MOVED 866 127.0.0.1:7001"), "redis://h:7000/0")
    assert isinstance(node, ConfigurationError) and "redis+cluster://" in str(node)
    assert wrong_redis_kind(ResponseError("WRONGTYPE"), "redis://h:6379/0") is None
    # unreachable is transient, a cluster error of another kind is not
    assert is_transient_redis_error(RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node"))
    assert not is_transient_redis_error(RedisClusterException("Invalid args"))


def test_status_reads_each_primary_of_a_cluster_even_a_lone_one() -> None:
    import asyncio
    from datetime import UTC, datetime

    from activity_logging.status import PipelineStatus
    from activity_logging.status_redis import _read_server

    class Node:
        def __init__(self, name: str) -> None:
            self.name = name

    class FakeCluster:
        """redis-py hands back a lone node's reply unwrapped, as this fake does."""

        def __init__(self, settings: dict[str, dict[str, str]]) -> None:
            self.settings = settings

        def get_primaries(self) -> list[Node]:
            return [Node(name) for name in self.settings]

        async def config_get(self, name: str, target_nodes: Node) -> dict[str, str]:
            return {name: self.settings[target_nodes.name].get(name, "")}

        async def info(self, section: str, target_nodes: Node) -> dict[str, object]:
            uptime = 100 if target_nodes.name == "b" else 5000
            return {"run_id": f"run-{target_nodes.name}", "redis_version": "7.0.15",
                    "uptime_in_seconds": uptime, "rdb_last_load_keys_loaded": 0}

    def read(settings: dict[str, dict[str, str]]) -> PipelineStatus:
        status = PipelineStatus(checked_at=datetime.now(UTC), database_url="")
        asyncio.run(_read_server(FakeCluster(settings), status))  # type: ignore[arg-type]
        return status

    lone = read({"a": {"appendonly": "yes", "save": "", "maxmemory-policy": "noeviction"}})
    assert lone.redis_settings["appendonly"] == "yes" and not lone.warnings
    mixed = read({"a": {"appendonly": "yes", "maxmemory-policy": "noeviction"},
                  "b": {"appendonly": "no", "maxmemory-policy": "allkeys-lru"}})
    assert mixed.redis_settings["appendonly"] == "no"  # the one that can lose the stream
    assert mixed.redis_settings["maxmemory-policy"] == "allkeys-lru"
    assert any("differ in appendonly" in w for w in mixed.warnings)
    assert mixed.redis_run_id == "run-b" and mixed.redis_uptime_seconds == 100  # latest start


def test_the_entry_that_ends_a_wait_starts_a_full_batch_not_a_batch_of_one() -> None:
    worker = ActivityWorker("redis://127.0.0.1:1/0", "sqlite:///unused.db", stream="s",
                            max_wait=0.05, batch_size=30)
    fake = _Shards(hot={"s"})
    worker._redis = fake  # type: ignore[assignment]
    sizes: list[int] = []

    import asyncio

    async def main() -> None:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)

        async def consume() -> None:
            while True:
                batch = await queue.get()
                sizes.append(len(batch.rows))  # type: ignore[attr-defined]

        consumer = asyncio.create_task(consume())
        reading = asyncio.create_task(worker._read_shards(queue, False))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        worker._stopping.set()
        await asyncio.wait_for(reading, 5)
        consumer.cancel()

    asyncio.run(main())
    assert sizes and min(sizes[:-1] or sizes) >= 30  # 3 records an entry: filled to batch_size
