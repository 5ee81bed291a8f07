"""Scenario: hung workers -- a deadlocked handler, a busy loop, a frozen process (SIGSTOP).

Each is detected from its silence within the hang timeout, dumped with py-spy (the dump names
the blocked frame), stopped and replaced; its messages are replayed and committed exactly once.
"""

import asyncio
from pathlib import Path

import pytest

from chaos import (
    failpoint_counts,
    freeze,
    recovery_of,
    submit_traffic,
    wait_until,
)
from chaos.pytest_plugin import require

FAST = {"hang_timeout": 1.0, "heartbeat_interval": 0.1, "hang_grace": 0.5}
DETECTION_SLO = 1.0 + 3.0  # the hang timeout, plus slack for a loaded machine


@pytest.mark.chaos_slo(lost=0, duplicated=0)
@pytest.mark.parametrize(
    ("action", "frame"), [("hang", "_hang_forever"), ("busy", "_act")], ids=["deadlock", "busy"]
)
async def test_a_hung_handler(chaos_target, history, chaos_failpoints, action, frame) -> None:
    chaos_failpoints(f"worker.before_apply=40*off->1*{action}")
    target = await chaos_target(workers=2, **FAST)
    require(target, "failpoints", "events")
    await submit_traffic(target, history, 300, prefix="m", keys=8)
    verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    assert failpoint_counts()["worker.before_apply"]["fires"] == 1, "the fault never fired"
    assert verdict.ok, verdict.details()
    (hung,) = [e for e in target.events() if e["kind"] == "hung"]
    assert frame in hung["blocked"] and frame in Path(hung["dump"]).read_text()
    print(f"\n{action}: detected after {hung['silence'] * 1000:.0f} ms of silence")


@pytest.mark.chaos_slo(lost=0, duplicated=0, recovery=DETECTION_SLO + 2.0)
async def test_a_frozen_worker(chaos_target, history) -> None:
    target = await chaos_target(workers=2, **FAST)
    require(target, "events")
    await submit_traffic(target, history, 50, prefix="a", keys=8)
    pids = await asyncio.to_thread(wait_until, target.worker_pids, 30, "workers")
    fault = freeze(pids[0])
    await submit_traffic(target, history, 300, prefix="b", keys=8)
    verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    assert verdict.ok, verdict.details()
    figures = recovery_of(fault.mono, fault.pid, target.events())
    print(f"\nSIGSTOP: {figures.as_dict()}")
    assert figures.detection is not None and figures.detection < DETECTION_SLO
    assert figures.recovery is not None and figures.recovery < DETECTION_SLO + 2.0
