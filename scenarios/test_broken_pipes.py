"""Scenario: channels broken from the worker's side, the supervisor's side, and outside.

Each break costs one worker -- restarted, its unacknowledged messages replayed -- and nothing is
lost or duplicated. The fault must really fire: a planned fault that never fired proves nothing.
For any pool: a task replaces every pipe and socket of its own process by a dead end (carried
by a message, ``chaos.workload``). The system pool's own sites (its worker's read, its
dispatcher's write) break by failpoints; a worker's sockets, from outside (``pidfd_getfd``).
"""

import pytest

from chaos import breakable_sockets
from chaos.pytest_plugin import require

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_a_task_breaks_its_own_channel(chaos_target, chaos) -> None:
    await chaos_target(workers=2)
    await chaos.traffic(100, prefix="a", keys=9)
    await chaos.traffic(20, prefix="w", keys=9, work=0.01)  # in flight when the channel breaks
    await chaos.submit("break", chaos.carry("break", break_channel=True, once=True))
    await chaos.traffic(200, prefix="b", keys=9, drain_every=100)
    await chaos.verify()  # (and the break fired in a worker, with channels to break)


@pytest.mark.chaos_slo(lost=0, duplicated=0)
@pytest.mark.chaos_system_pool(
    "failpoint sites at either end of its pipes",
    "a task breaks its own channels: test_a_task_breaks_its_own_channel, and the matrix's "
    "pipe_inside (test_peers.py, column yours)",
)
@pytest.mark.parametrize("site", ["worker.recv", "dispatch.send"])
async def test_a_channel_broken_from_either_side(chaos_target, chaos, site) -> None:
    chaos.failpoints(f"{site}=5*off->1*pipe")
    target = await chaos_target(workers=2)
    require(target, "failpoints", "events")
    await chaos.traffic(600, prefix="m", keys=9, drain_every=100)
    await chaos.verify()
    assert [e["kind"] for e in chaos.events].count("died") == 1


@pytest.mark.chaos_slo(recovery=5.0)
async def test_a_worker_socket_broken_from_outside(chaos_target, chaos) -> None:
    # Checkpoints every 0.5 s: the break lands while acknowledged work waits to be committed.
    await chaos_target(workers=2, checkpoint_interval=0.5)
    await chaos.traffic(200, prefix="a", keys=9, drain_every=100)
    victim = (await chaos.workers(1))[0]
    if not breakable_sockets(victim):
        pytest.skip(f"the target's worker {victim} has no socket of its own to break")
    await chaos.traffic(50, prefix="w", keys=9, work=0.01)  # ~0.25 s of work per worker
    chaos.break_pipes(victim)  # with nothing outstanding, it would fail as "no effect"
    await chaos.traffic(200, prefix="b", keys=9, drain_every=100)
    await chaos.verify()
