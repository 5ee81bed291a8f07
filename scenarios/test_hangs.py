"""Scenario: hung workers -- a deadlocked handler, a busy loop, a frozen process (SIGSTOP).

Each must be detected and replaced, its messages replayed and committed exactly once; for the
system pool, from its silence within the hang timeout, dumped with py-spy (the dump names the
blocked frame). Any target runs them: the hangs are carried in by a message (the workload
contract), the freeze comes from outside; a target that never notices is hung (a weakness),
with the stacks of its processes.
"""

from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

FAST = {"hang_timeout": 1.0, "heartbeat_interval": 0.1, "hang_grace": 0.5}
DETECTION_SLO = 1.0 + 3.0  # the hang timeout, plus slack for a loaded machine


@pytest.mark.chaos_slo(lost=0, duplicated=0)
@pytest.mark.parametrize(
    ("action", "frame"), [("deadlock", "_deadlock"), ("busy", "_hang")], ids=["deadlock", "busy"]
)
async def test_a_hung_handler(chaos_target, chaos, action, frame) -> None:
    """The 41st message deadlocks or spins in its task, once (``chaos.workload``): the pool
    must notice, replace the worker and commit everything. A target with events names the
    blocked frame; any other is judged on what it committed, within ``target_timeout``."""
    target = await chaos_target(workers=2, **FAST)
    await chaos.traffic(40, prefix="a", keys=8)
    await chaos.submit("hung", chaos.carry("hung", hang=action, once=True))
    await chaos.traffic(260, prefix="b", keys=8)
    await chaos.verify()
    if "events" in target.capabilities:
        (hung,) = [e for e in chaos.events if e["kind"] == "hung"]
        assert frame in hung["blocked"] and frame in Path(hung["dump"]).read_text()
        print(f"\n{action}: detected after {hung['silence'] * 1000:.0f} ms of silence")


@pytest.mark.chaos_slo(detection=DETECTION_SLO, recovery=DETECTION_SLO + 2.0)
async def test_a_frozen_worker(chaos_target, chaos) -> None:
    await chaos_target(workers=2, **FAST)
    await chaos.workers(2)  # ready: a worker frozen while starting would measure its start
    await chaos.traffic(50, prefix="a", keys=8)
    await chaos.submit("busy", chaos.carry("busy", fault=False, sleep=0.5))
    victim, began = await chaos.running("busy")  # the worker running it, by its mark
    fault = chaos.freeze(victim)
    if fault.mono is not None and fault.mono > began + 0.5:  # its task ended before: idle
        fault.no_effect = "the worker was frozen after its task had ended: nothing in flight"
    await chaos.traffic(300, prefix="b", keys=8)
    await chaos.verify()
    print(f"\nSIGSTOP: {fault.recovery.as_dict()}")
