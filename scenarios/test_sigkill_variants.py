"""Scenario: SIGKILL in more shapes -- several workers at once, every worker at once, and a
worker killed in the middle of a checkpoint (before and after its commit)."""

import asyncio

import pytest

from chaos import (
    failpoint_counts,
    kill,
    recovery_of,
    submit_traffic,
    wait_until,
)
from chaos.pytest_plugin import require

RECOVERY_SLO = 5.0  # seconds, every fault: all that was in flight is committed again


@pytest.mark.chaos_slo(lost=0, duplicated=0, recovery=RECOVERY_SLO)
@pytest.mark.parametrize("how_many", ["several", "all"])
async def test_workers_killed_at_once(chaos_target, history, chaos_seed, how_many) -> None:
    target = await chaos_target(workers=4, checkpoint_interval=0.2)
    require(target, "events")
    await submit_traffic(target, history, 400, prefix="a", keys=12)
    pids = await asyncio.to_thread(
        wait_until, lambda: len(target.worker_pids()) == 4 and target.worker_pids(), 30, "4 workers"
    )
    victims = sorted(pids)[:3] if how_many == "several" else sorted(pids)
    faults = [kill(pid) for pid in victims]
    await submit_traffic(target, history, 400, prefix="b", keys=12)
    verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    assert verdict.ok, verdict.details()
    figures = [recovery_of(f.mono, f.pid, target.events()) for f in faults]
    worst = max(f.recovery for f in figures if f.recovery is not None)
    print(f"\n{how_many}: {len(faults)} killed, worst recovery {worst * 1000:.0f} ms")
    assert all(f.recovery is not None for f in figures), figures
    assert worst < RECOVERY_SLO


@pytest.mark.chaos_slo(lost=0, duplicated=0)
@pytest.mark.parametrize("site", ["worker.before_commit", "worker.after_commit"])
async def test_a_worker_killed_during_a_checkpoint(chaos_target, history, chaos_failpoints, site):
    chaos_failpoints(f"{site}=2*off->1*kill(SIGKILL)")
    target = await chaos_target(workers=2, checkpoint_interval=0.02)
    require(target, "failpoints", "events")
    for round_ in range(6):
        await submit_traffic(target, history, 100, prefix=f"r{round_}-", keys=12)
        await target.drain(timeout=60)  # a checkpoint per round, at least
    verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    assert failpoint_counts()[site]["fires"] == 1, "the planned fault never fired"
    assert verdict.ok, verdict.details()
    died = [e for e in target.events() if e["kind"] == "died"]
    assert len(died) == 1 and died[0]["signal"] == "SIGKILL(-9)"
