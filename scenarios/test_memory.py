"""Scenario: memory growth in the workers -- recycled past the soft limit (the system pool's
option and events); a MemoryError under RLIMIT_AS, in any pool: the message is retried.
Nothing lost or duplicated."""

import asyncio

import psutil
import pytest

from chaos import address_space_limit
from chaos.pytest_plugin import require

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

MB = 2**20


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_a_leaking_worker_is_recycled(chaos_target, chaos) -> None:
    probe = await chaos_target(workers=1)
    require(probe, "failpoints", "events")
    base = psutil.Process((await chaos.workers(1))[0]).memory_info().rss
    await probe.stop()
    chaos.failpoints("worker.after_apply=leak(2)")  # every message leaks 2 MB in its worker
    await chaos_target(
        workers=2, memory_soft_limit=base + 80 * MB, memory_interval=0.05, checkpoint_interval=0.01
    )
    for round_ in range(8):
        await chaos.traffic(10, prefix=f"r{round_}-", keys=4)
        await asyncio.sleep(0.05)  # let the sampler see the growth between rounds
    await chaos.verify()
    recycled = [e for e in chaos.events if e["kind"] == "recycled"]
    assert recycled, "no worker was recycled: the planned growth never crossed the limit"
    assert all(e["rss"] > base for e in recycled)
    print(
        f"\n{len(recycled)} recycles; first: {recycled[0]['reason']}, "
        f"rss {recycled[0]['rss'] // MB} MB, limit {recycled[0]['soft_limit'] // MB} MB"
    )


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_memory_error_under_rlimit_as(chaos_target, chaos) -> None:
    """A worker's address space capped from outside (RLIMIT_AS), then a message whose task
    allocates 400 MB, once (``chaos.workload``): a MemoryError in the task. The pool must
    retry it -- and the system pool recycles the worker, which its events show."""
    target = await chaos_target(workers=1)
    await chaos.traffic(20, prefix="a", keys=4)
    await chaos.drain()
    (pid,) = await chaos.workers(1)
    with chaos.limit("RLIMIT_AS", address_space_limit(pid, extra_mb=100), pid=pid):
        await target.submit("k0", chaos.carry("big", leak_mb=400, once=True), "big")
        chaos.history.submitted("big", "k0")
        await chaos.traffic(20, prefix="b", keys=4)
        await chaos.drain()
    await chaos.verify()
    assert chaos.carried("big", "leak:MemoryError"), "the allocation never failed: no effect"
    if "events" in target.capabilities:
        (recycled,) = [e for e in chaos.events if e["kind"] == "recycled"]
        assert recycled["pid"] == pid and "MemoryError" in recycled["reason"]
        assert pid not in target.worker_pids()  # replaced, without the limit: the retry worked
