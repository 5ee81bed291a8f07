"""Scenario: memory growth in the workers, in any pool (carried by messages: ``chaos.workload``)
-- recycled (the system pool: past its soft limit, as its events show); a MemoryError under
RLIMIT_AS: the message is retried. Nothing lost or duplicated."""

import time

import pytest

from chaos import address_space_limit, is_gone

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

MB = 2**20
LIMIT = 400 * MB  # the system pool's memory soft limit here, far above a fresh worker


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_a_leaking_worker_is_recycled(chaos_target, chaos) -> None:
    """Eight messages, among good ones, each leave 100 MB behind in their worker
    (``chaos.workload``): the pool must recycle a grown worker -- a worker that leaked ends, by
    the kernel's word, not the pool's -- and lose nothing. The system pool's soft limit is set
    at 400 MB (its events must name workers that leaked, over it or trending to it); other
    pools recycle their own way, or grow without bound (a weakness)."""
    target = await chaos_target(
        workers=2, memory_soft_limit=LIMIT, memory_interval=0.05, checkpoint_interval=0.01
    )
    for round_ in range(8):
        await chaos.traffic(10, prefix=f"r{round_}-", keys=4)
        leak = chaos.carry(f"leak{round_}", leak_mb=100, sleep=0.3)  # paced over ~3 s: a
        await chaos.submit(f"leak{round_}", leak, "leak")  # pool may look once a second (loky)
        await chaos.drain()  # the work, and its growth, done before the next round

    def leaked_and_ended() -> tuple[set[int], list[int]]:
        leaked = {pid for r in range(8) for pid, _ in chaos.carried(f"leak{r}", "leak")}
        return leaked, sorted(pid for pid in leaked if is_gone(pid))

    # A pool may recycle after a later task (loky looks at most once a second): good work
    # goes on for up to 5 s while no worker that leaked has ended.
    deadline, more = time.monotonic() + 5.0, 0
    while not leaked_and_ended()[1] and time.monotonic() < deadline:
        await chaos.traffic(4, prefix=f"t{more}-", keys=4, work=0.05)
        await chaos.drain()
        more += 1
    await chaos.verify()
    leaked, ended = leaked_and_ended()
    assert ended, f"no worker that leaked was recycled: {len(leaked)} worker(s) grew by 800 MB"
    if "events" in target.capabilities:
        recycled = [e for e in chaos.events if e["kind"] == "recycled"]
        assert recycled and {e["pid"] for e in recycled} <= leaked, recycled  # its own word
        print(f"\n{len(recycled)} recycles; first: {recycled[0]['reason']}")
    print(f"\nworkers that leaked: {sorted(leaked)}; ended: {ended}")


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
        await chaos.submit("big", chaos.carry("big", leak_mb=400, once=True))
        await chaos.traffic(20, prefix="b", keys=4)
        await chaos.drain()
    await chaos.verify()
    assert chaos.carried("big", "leak:MemoryError"), "the allocation never failed: no effect"
    if "events" in target.capabilities:
        (recycled,) = [e for e in chaos.events if e["kind"] == "recycled"]
        assert recycled["pid"] == pid and "MemoryError" in recycled["reason"]
        assert pid not in target.worker_pids()  # replaced, without the limit: the retry worked
