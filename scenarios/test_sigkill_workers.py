"""Scenario: kill -9 random workers of a busy pool, again and again.

20,000 list-append messages over 100 keys are submitted at about 3,000/s to 4 workers; every
50-250 ms (seeded), while acknowledged work is outstanding, a random live worker gets SIGKILL,
until 12 have died; at least 10 of the kills must be seen to leave acknowledged work
uncommitted (the harness reads the committed state right after each). Verdict: every
acknowledged message committed exactly once and in order per key, and each death repaired in
time, measured from the kill's CLOCK_MONOTONIC timestamp:

- detection: kill -> the target noticed (for ``system``, its ``died`` event, by the process
  sentinel, not a heartbeat);
- restart: kill -> the replacement is ready (it has claimed its partitions);
- recovery: kill -> every message that was in flight at the kill is committed again (for a
  target without events: every message acknowledged before the kill is committed).
"""

import asyncio
import time

import pytest

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

KILLS = 12
MESSAGES = 20_000
# p99-style bounds, generous for a loaded 2-core machine; typical figures are in the output.
SLO = {"detection": 1.0, "restart": 3.0, "recovery": 5.0}


@pytest.mark.chaos_slo(**SLO)
async def test_sigkill_random_workers_during_a_run(chaos_target, chaos) -> None:
    target = await chaos_target(workers=4)
    traffic = asyncio.create_task(paced(chaos, MESSAGES, per_second=3000))
    chaos.require_effective(KILLS - 2)
    aimed = hasattr(target, "committed_now")
    while not traffic.done() and len(chaos.faults) < KILLS:
        victim = chaos.rng.choice(await chaos.workers(4))
        # Aim at work in flight where the target can say what is outstanding without waiting
        # for it (committed_now); without it, outstanding() would wait the work out: kill as
        # the traffic flows (each kill's effect is still the victim's death, seen by pidfd).
        if aimed and not await chaos.outstanding():
            await asyncio.sleep(0.005)
            continue
        chaos.kill(victim, harmless=True)  # counted by require_effective
        deadline = time.monotonic() + 30
        while victim in target.worker_pids():
            assert time.monotonic() < deadline, f"worker {victim} still listed 30 s after SIGKILL"
            await asyncio.sleep(0.005)
        await asyncio.sleep(chaos.rng.uniform(0.05, 0.25))  # spread the faults (not a sync)
    await traffic
    assert len(chaos.faults) >= 10, f"the run ended after only {len(chaos.faults)} kills"
    await chaos.verify()
    if chaos.events:
        died = {e["pid"]: e for e in chaos.events if e["kind"] == "died"}
        assert {f.pid for f in chaos.faults} <= set(died)
        assert all(died[f.pid]["signal"] == "SIGKILL(-9)" for f in chaos.faults)
        assert sum(died[f.pid]["inflight"] for f in chaos.faults) > 0, "no kill caught work"
    figures = chaos.figures()
    print("\n" + " ".join(f"{k}={v}" for k, v in figures.items()))


async def paced(chaos, n: int, per_second: int) -> None:
    """The workload in chunks of 100, at about ``per_second`` (pacing, not synchronisation)."""
    start = time.monotonic()
    for chunk in range(0, n, 100):
        # 1 ms of work a message: every worker holds work in flight, whatever its pool's speed
        await chaos.traffic(min(100, n - chunk), prefix=f"m{chunk}-", keys=100, work=0.001)
        await asyncio.sleep(max(0.0, start + (chunk + 100) / per_second - time.monotonic()))
