"""Memory growth: the RSS watchdog recycles a leaking worker (over the limit, or trending to it),
and a hard RLIMIT_AS turns runaway growth into MemoryError, recycling and a retry."""

import asyncio
from pathlib import Path

import psutil

from chaos import address_space_limit, wait_until
from handlers import allocate_on_request, leak_per_message
from system import Pool, read_events

MB = 2**20


def recycled(d: Path) -> list[dict]:
    return [e for e in read_events(d) if e["kind"] == "recycled"]


async def worker_rss(pool: Pool) -> int:
    pid = await asyncio.to_thread(wait_until, pool.worker_pids, 30, "a worker")
    return psutil.Process(pid[0]).memory_info().rss


async def test_a_worker_over_the_soft_limit_is_recycled_after_its_message(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(leak_per_message, d, workers=1, partitions=2, memory_interval=0.1) as probe:
        base = await worker_rss(probe)
    limit = base + 60 * MB
    async with Pool(
        leak_per_message,
        d,
        workers=1,
        memory_soft_limit=limit,
        memory_interval=0.1,
        checkpoint_interval=0.01,
    ) as pool:
        for i in range(40):  # 40 x 5 MB: crosses the limit about half way
            await pool.submit("k", 5, f"m{i}")
            await asyncio.sleep(0.02)
        await pool.drain(timeout=60)
        assert await pool.query("k") == 40  # each message exactly once
        assert pool.stats()["restarts"] == 0  # a recycle is not a failure
    events = recycled(d)
    assert events, "no recycle"
    first = events[0]
    assert first["reason"] in ("rss over memory_soft_limit",) or "trend" in first["reason"]
    assert first["soft_limit"] == limit and first["rss"] > base
    pids = {e["pid"] for e in read_events(d) if e["kind"] == "ready"}
    assert len(pids) >= 3  # probe, the first worker, its replacement


async def test_a_growth_trend_recycles_before_the_limit(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(leak_per_message, d, workers=1, partitions=2) as probe:
        base = await worker_rss(probe)
    limit = base + 200 * MB
    async with Pool(
        leak_per_message,
        d,
        workers=1,
        memory_soft_limit=limit,
        memory_interval=0.1,
        memory_horizon=30.0,
        checkpoint_interval=0.01,
    ) as pool:
        for i in range(30):  # 2 MB per 50 ms: 40 MB/s, far from 200 MB, but on course for it
            await pool.submit("k", 2, f"m{i}")
            await asyncio.sleep(0.05)
        await pool.drain(timeout=60)
        assert await pool.query("k") == 30
    first = recycled(d)[0]
    assert first["reason"].startswith("rss trend crosses memory_soft_limit")
    assert first["rss"] < limit and first["slope_bytes_per_s"] > 10 * MB


async def test_memory_error_under_rlimit_as_recycles_and_retries(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(allocate_on_request, d, workers=1, partitions=2) as pool:
        await pool.submit("k", 0)
        await pool.drain(timeout=30)
        (pid,) = pool.worker_pids()
        with address_space_limit(pid, extra_mb=100):  # chaos: a real RLIMIT_AS on the worker
            await pool.submit("k", ("alloc", 500), "big")  # MemoryError in the handler
            await asyncio.to_thread(
                wait_until, lambda: pool.worker_pids() not in ([], [pid]), 30, "the replacement"
            )
        await pool.drain(timeout=60)
        assert await pool.query("k") == 2  # retried in a worker with room: applied once
        assert pool.dead_letters() == []
    (event,) = recycled(d)
    assert event["pid"] == pid and "MemoryError" in event["reason"]


async def test_a_message_that_always_exhausts_memory_is_dead_lettered(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(allocate_on_request, d, workers=1, partitions=2) as probe:
        await probe.submit("k", 0)
        await probe.drain(timeout=30)
        vms = psutil.Process(probe.worker_pids()[0]).memory_info().vms
    async with Pool(allocate_on_request, d, workers=1, memory_hard_limit=vms + 200 * MB) as pool:
        await pool.submit_many([("k", 1), ("k", ("alloc", 1000), "greedy"), ("k", 2)])
        await pool.drain(timeout=60)
        assert await pool.query("k") == 3  # the probe's message and the two good ones
        (dead,) = pool.dead_letters()
        assert dead["id"] == "greedy" and "3 consecutive deaths" in dead["reason"]
    assert len(recycled(d)) == 3
