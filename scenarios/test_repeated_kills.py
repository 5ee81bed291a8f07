"""Scenario: faults that hit where recovery is weakest -- every worker killed, then every
replacement killed again once it is replaying the retried work (the harness sees some of that
work commit, so the replacements hold the rest); then a kill inside the burst of new work that
follows a recovery.

A pool that retries a crashed message only once, or that loses or reorders what it replays, is
caught here: the replayed messages are slow (20 ms each) and on one key, so the second kill
lands while most are outstanding, and the harness checks that they are (``pending`` of each
kill: the acknowledged work it found uncommitted). Verdict: every acknowledged message
committed exactly once, in order per key, none dead-lettered (two deaths are not poison).
"""

import asyncio
import time

import pytest

from chaos import WorkersNotReplaced

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

SLOW = 0.02  # seconds each replayed message takes: the window for the second kill
ROUNDS = 2
REPLAYING = 0.15  # seconds after the replacements appear: up, and into the replay


async def slow_traffic(chaos, n: int, prefix: str, key: str) -> None:
    for i in range(n):
        mid = f"{prefix}{i}"
        await chaos.submit(mid, {"sleep": SLOW}, key)


async def replaying(chaos, before: set[int], left: set[str], timeout: float = 15.0) -> list[int]:
    """The replacement workers, once they are replaying the work outstanding at the kill
    (``left``): some of it has committed again, or they have been up for ``REPLAYING`` s -- a
    pool that commits a replay as one batch shows nothing before it is done (bounded)."""
    deadline = time.monotonic() + timeout
    up = None
    while True:
        new = sorted(set(chaos.worker_pids()) - before)
        if new and up is None:
            up = time.monotonic()
        if new and (time.monotonic() - up > REPLAYING or left - await chaos.outstanding()):
            return new
        if time.monotonic() > deadline:  # a weakness: the pool did not replace its workers
            raise WorkersNotReplaced(f"no replacement worker within {timeout} s of the kill")
        await asyncio.sleep(0.002)


@pytest.mark.chaos_slo(recovery=15.0)
async def test_a_replacement_killed_while_retries_are_in_flight(chaos_target, chaos) -> None:
    await chaos_target(workers=2)
    await chaos.traffic(100, prefix="warm", keys=4)
    for round_ in range(ROUNDS):
        await slow_traffic(chaos, 50, prefix=f"slow{round_}-", key=f"slow{round_}")  # ~1 s
        pids = set(await chaos.workers(2))
        chaos.kill(*pids)
        left = await chaos.outstanding()
        # The replacements replay that work, one slow message after another: once some of it
        # has committed again, kill them all (each kill's effect is checked like any fault's).
        chaos.kill(*await replaying(chaos, pids, left))
        await chaos.drain()  # recovered: a third death with the same work in flight is poison
    # Once recovered: a burst, and a kill in the middle of it.
    await chaos.workers(2)
    burst = asyncio.create_task(chaos.traffic(600, prefix="burst", keys=8, work=0.002))
    deadline = time.monotonic() + 30
    while sum(1 for s in chaos.history.submits if s.id.startswith("burst")) < 200:
        assert not burst.done() and time.monotonic() < deadline, "the burst did not get going"
        await asyncio.sleep(0.002)
    chaos.kill(chaos.rng.choice(await chaos.workers(1)))
    await burst
    await chaos.verify()
    seconds = [f"{f.pending}" for f in chaos.faults]
    print(f"\nuncommitted at each kill: {' '.join(seconds)}; {chaos.figures()}")
