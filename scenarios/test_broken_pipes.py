"""Scenario: channels broken from the worker's side, the supervisor's side, and outside.

Each break costs one worker -- restarted, its unacknowledged messages replayed -- and nothing is
lost or duplicated. The fault must really fire: a planned fault that never fired proves nothing.
"""

import asyncio

import pytest

from chaos import break_sockets, failpoint_counts, submit_traffic, wait_until
from chaos.pytest_plugin import require


@pytest.mark.chaos_slo(lost=0, duplicated=0)
@pytest.mark.parametrize("site", ["worker.recv", "dispatch.send"])
async def test_a_channel_broken_from_either_side(chaos_target, history, chaos_failpoints, site):
    chaos_failpoints(f"{site}=5*off->1*pipe")
    target = await chaos_target(workers=2)
    require(target, "failpoints", "events")
    await submit_traffic(target, history, 600, prefix="m", keys=9, drain_every=100)
    verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    assert failpoint_counts()[site]["fires"] == 1, "the planned fault never fired"
    assert verdict.ok, verdict.details()
    assert [e["kind"] for e in target.events()].count("died") == 1


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_a_worker_socket_broken_from_outside(chaos_target, history) -> None:
    target = await chaos_target(workers=2)
    require(target, "events")
    await submit_traffic(target, history, 200, prefix="a", keys=9, drain_every=100)
    victim = target.worker_pids()[0]
    assert break_sockets(victim), "the planned fault never fired"
    await asyncio.to_thread(wait_until, lambda: victim not in target.worker_pids(), 30, "replaced")
    await submit_traffic(target, history, 200, prefix="b", keys=9, drain_every=100)
    verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    assert verdict.ok, verdict.details()
