"""Request context: contextvars, activity_context, ContextFilter."""

from __future__ import annotations

import asyncio
import logging

import pytest

from activity_logging.context import (
    ContextFilter,
    activity_context,
    bind_context,
    get_context,
    reset_context,
)


def record(**extra: object) -> logging.LogRecord:
    return logging.getLogger("activity").makeRecord("activity", 20, __file__, 1, "m", None, None,
                                                     extra=extra or None)


def test_filter_copies_context_without_overwriting_extra() -> None:
    with activity_context(request_id="ctx-req", actor_id="ctx-actor"):
        rec = record(actor_id="explicit")
        assert ContextFilter().filter(rec) is True
    assert rec.request_id == "ctx-req"  # type: ignore[attr-defined]
    assert rec.actor_id == "explicit"  # type: ignore[attr-defined]


def test_context_nests_and_restores() -> None:
    assert dict(get_context()) == {}
    with activity_context(actor_type="system", actor_id="job"):
        with activity_context(actor_id="inner", request_id="r"):
            assert dict(get_context()) == {"actor_type": "system", "actor_id": "inner", "request_id": "r"}
        assert dict(get_context()) == {"actor_type": "system", "actor_id": "job"}
    assert dict(get_context()) == {}


def test_context_resets_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), activity_context(request_id="r"):
        raise RuntimeError
    assert dict(get_context()) == {}


def test_bind_none_removes_a_key_and_reset_restores() -> None:
    token = bind_context(request_id="a")
    inner = bind_context(request_id=None)
    assert "request_id" not in get_context()
    reset_context(inner)
    assert get_context()["request_id"] == "a"
    reset_context(token)


def test_decorator_on_sync_and_async_functions() -> None:
    @activity_context(actor_id="sync-actor")
    def sync_fn() -> str:
        return str(get_context()["actor_id"])

    @activity_context(actor_id="async-actor")
    async def async_fn() -> str:
        await asyncio.sleep(0)
        return str(get_context()["actor_id"])

    assert sync_fn() == "sync-actor"
    assert asyncio.run(async_fn()) == "async-actor"
    assert dict(get_context()) == {}
    assert sync_fn.__name__ == "sync_fn"


def test_same_instance_is_reentrant() -> None:
    ctx = activity_context(request_id="r")
    with ctx, ctx:
        assert get_context()["request_id"] == "r"
    assert dict(get_context()) == {}


@pytest.mark.anyio
async def test_async_with_form() -> None:
    async with activity_context(request_id="r-async"):
        assert get_context()["request_id"] == "r-async"
    assert dict(get_context()) == {}


@pytest.mark.anyio
async def test_context_never_leaks_between_100_concurrent_tasks() -> None:
    seen: dict[int, list[str]] = {}

    async def task(i: int) -> None:
        async with activity_context(request_id=f"req-{i}", actor_id=f"user-{i}"):
            observed = []
            for _ in range(5):
                await asyncio.sleep(0)
                rec = record()
                ContextFilter().filter(rec)
                observed.append(f"{rec.request_id}/{rec.actor_id}")  # type: ignore[attr-defined]
            seen[i] = observed

    await asyncio.gather(*(task(i) for i in range(100)))
    assert len(seen) == 100
    for i, observed in seen.items():
        assert observed == [f"req-{i}/user-{i}"] * 5
    assert dict(get_context()) == {}


@pytest.mark.anyio
async def test_tasks_inherit_the_context_they_were_created_in() -> None:
    async with activity_context(request_id="parent"):
        child = asyncio.create_task(asyncio.sleep(0, result=None))
        await child

        async def read() -> str:
            return str(get_context()["request_id"])

        assert await asyncio.create_task(read()) == "parent"


@pytest.mark.anyio
async def test_one_instance_entered_by_concurrent_tasks_gives_each_its_token() -> None:
    shared = activity_context(actor_type="system", actor_id="shared")

    async def job(i: int) -> str:
        async with shared:
            with activity_context(request_id=f"r{i}"):
                await asyncio.sleep(0.001 * (i % 3))
                return f"{get_context()['actor_id']}/{get_context()['request_id']}"

    assert await asyncio.gather(*(job(i) for i in range(20))) == [f"shared/r{i}" for i in range(20)]
    assert dict(get_context()) == {}


def test_one_instance_used_from_threads() -> None:
    import threading

    shared = activity_context(actor_id="t")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                with shared:
                    assert get_context()["actor_id"] == "t"
            assert dict(get_context()) == {}
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_activity_context_memory_is_flat_over_a_million_uses() -> None:
    import gc
    import sys

    def use(n: int) -> None:
        for i in range(n):
            with activity_context(actor_id=f"job-{i % 7}"):
                pass

    use(10_000)  # warm caches
    gc.collect()
    before = sys.getallocatedblocks()
    use(1_000_000)
    gc.collect()
    grown = sys.getallocatedblocks() - before
    # the old ContextVar-per-instance design held ~2 blocks per use: 2,000,000 here
    assert grown < 1_000, f"activity_context kept {grown} memory blocks over 1,000,000 uses"


def test_one_activity_context_object_nests_and_unwinds_in_order() -> None:
    outer = activity_context(actor_id="outer")
    inner = activity_context(actor_id="inner")
    with outer:
        with inner:
            with outer:
                assert get_context()["actor_id"] == "outer"
            assert get_context()["actor_id"] == "inner"
        assert get_context()["actor_id"] == "outer"
    assert "actor_id" not in get_context()
