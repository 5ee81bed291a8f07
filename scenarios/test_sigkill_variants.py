"""Scenario: SIGKILL in more shapes -- several workers at once, every worker at once, and a
worker killed in the middle of a checkpoint (before and after its commit)."""

import pytest

from chaos.pytest_plugin import require

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

RECOVERY_SLO = 5.0  # seconds, every fault: all that was in flight is committed again
HELD = 1.0  # seconds the held message keeps its worker busy (and again when it is re-run)


@pytest.mark.chaos_slo(recovery=RECOVERY_SLO)
@pytest.mark.parametrize("how_many", ["several", "all"])
async def test_workers_killed_at_once(chaos_target, chaos, how_many) -> None:
    await chaos_target(workers=4, checkpoint_interval=0.2)
    await chaos.traffic(400, prefix="a", keys=12)
    pids = await chaos.workers(4)
    # The kill must find work in flight whatever the machine's speed (a fast pool had
    # committed all 400 before it: no effect). One message holds a worker for HELD s; that
    # worker is among the victims.
    await chaos.submit("held", chaos.carry("held", fault=False, sleep=HELD), key="held")
    busy, _ = await chaos.running("held")
    victims = [busy, *(p for p in pids if p != busy)]
    chaos.kill(*(victims[:3] if how_many == "several" else victims))
    await chaos.traffic(400, prefix="b", keys=12)
    await chaos.verify()
    print(f"\n{how_many}: {chaos.figures()}")


@pytest.mark.chaos_slo(lost=0, duplicated=0)
@pytest.mark.chaos_system_pool(
    "failpoint sites inside a checkpoint",
    "busy workers are SIGKILLed mid-task: test_workers_killed_at_once, "
    "test_sigkill_random_workers_during_a_run, and the matrix's kill_busy and kill_all",
)
@pytest.mark.parametrize("site", ["worker.before_commit", "worker.after_commit"])
async def test_a_worker_killed_during_a_checkpoint(chaos_target, chaos, site) -> None:
    chaos.failpoints(f"{site}=2*off->1*kill(SIGKILL)")
    target = await chaos_target(workers=2, checkpoint_interval=0.02)
    require(target, "failpoints", "events")
    for round_ in range(6):
        await chaos.traffic(100, prefix=f"r{round_}-", keys=12)
        await chaos.drain()  # a checkpoint per round, at least
    await chaos.verify()
    died = [e for e in chaos.events if e["kind"] == "died"]
    assert len(died) == 1 and died[0]["signal"] == "SIGKILL(-9)"
