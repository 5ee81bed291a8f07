"""Scenario: faults that hit where recovery is weakest -- a worker killed, then its replacement
killed again while the retried work is still in flight; then a kill inside the burst of new work
that follows a recovery.

A pool that retries a crashed message only once, or that loses or reorders what it replays, is
caught here: the replayed messages are slow (20 ms each), so the second kill lands while they
are outstanding, and the harness checks that they are (``pending`` of the second kill: the
acknowledged work it found uncommitted). Verdict: every acknowledged message committed exactly
once, in order per key, none dead-lettered (two consecutive deaths are not poison).
"""

import asyncio
import time

import pytest

from chaos import ChaosError

SLOW = 0.02  # seconds each replayed message takes: the window for the second kill
ROUNDS = 2


async def slow_traffic(chaos, n: int, prefix: str, keys: int = 4) -> None:
    for i in range(n):
        key, mid = f"k{i % keys}", f"{prefix}{i}"
        await chaos.target.submit(key, {"sleep": SLOW}, mid)
        chaos.history.submitted(mid, key)


async def replacement(chaos, before: set[int], timeout: float = 15.0) -> int:
    """The first live worker pid that was not among ``before`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        new = sorted(set(chaos.worker_pids()) - before)
        if new:
            return new[0]
        if time.monotonic() > deadline:
            raise ChaosError(f"no replacement worker within {timeout} s of the kill")
        await asyncio.sleep(0.002)


@pytest.mark.chaos_slo(recovery=15.0)
async def test_a_replacement_killed_while_retries_are_in_flight(chaos_target, chaos) -> None:
    await chaos_target(workers=2)
    await chaos.traffic(100, prefix="warm", keys=4)
    for round_ in range(ROUNDS):
        await slow_traffic(chaos, 60, prefix=f"slow{round_}-")  # ~0.6 s of work per worker
        pids = set(await chaos.workers(2))
        victim = sorted(pids)[round_ % 2]
        chaos.kill(victim)
        # The replacement replays the victim's work, one slow message after another: kill it
        # before it is through (its effect, work outstanding, is checked like any fault's).
        chaos.kill(await replacement(chaos, pids))
    # A burst right after the recovery, and a kill in the middle of it.
    await chaos.workers(2)
    burst = asyncio.create_task(chaos.traffic(600, prefix="burst", keys=8))
    deadline = time.monotonic() + 30
    while sum(1 for s in chaos.history.submits if s.id.startswith("burst")) < 200:
        assert not burst.done() and time.monotonic() < deadline, "the burst did not get going"
        await asyncio.sleep(0.002)
    chaos.kill(chaos.rng.choice(await chaos.workers(1)))
    await burst
    await chaos.verify()
    seconds = [f"{f.pending}" for f in chaos.faults]
    print(f"\nuncommitted at each kill: {' '.join(seconds)}; {chaos.figures()}")
