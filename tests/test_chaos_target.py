"""Targets: the system pool through the protocol, checked by the history checker; user targets
loaded by name with errors that say the fix."""

import os
import signal
from pathlib import Path

import pytest

from chaos import ChaosError, History, SystemTarget, Target, load_target, pick


async def test_the_system_target_under_a_kill_is_exactly_once(tmp_path: Path) -> None:
    target = SystemTarget(tmp_path, workers=2)
    assert isinstance(target, Target) and "events" in target.capabilities
    history = History()
    await target.start()
    try:
        for i in range(300):
            await target.submit(f"k{i % 7}", i, f"m{i}")
            history.submitted(f"m{i}", f"k{i % 7}")
            if i == 150:
                victim = pick(target.worker_pids(), 3)
                os.kill(victim, signal.SIGKILL)
        verdict = history.check(await target.committed(), target.dead_lettered(), target.events())
    finally:
        await target.stop()
    assert verdict.ok, (verdict.summary(), verdict.details())
    assert verdict.committed == 300
    died = [e for e in target.events() if e["kind"] == "died"]
    assert [e["pid"] for e in died] == [victim]


def test_load_target_explains_what_is_wrong() -> None:
    assert load_target("chaos:SystemTarget") is SystemTarget
    for spec, message in [
        ("no_colon", "expected 'package.module:factory'"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("chaos:NoSuchFactory", "has no 'NoSuchFactory'"),
        ("chaos:__all__", "is not callable"),
    ]:
        with pytest.raises(ChaosError, match=message):
            load_target(spec, where="[tool.chaosgate] target")


async def test_a_target_that_stops_taking_work_is_a_weakness_not_a_harness_error() -> None:
    from chaos import History, submit_traffic
    from chaos._target import TargetRefused

    class Broken:
        def __init__(self) -> None:
            self.taken = 0

        async def submit(self, key, payload, id):
            if self.taken == 3:
                raise RuntimeError("the pool is not usable anymore")
            self.taken += 1

    history = History()
    with pytest.raises(TargetRefused, match=r"refused message m3 \(RuntimeError: the pool is not"):
        await submit_traffic(Broken(), history, 10, prefix="m")
    assert isinstance(TargetRefused("x"), AssertionError)  # the gate counts it as a weakness
    assert [(s.id, s.acked) for s in history.submits] == [
        ("m0", True),
        ("m1", True),
        ("m2", True),
        ("m3", False),
    ]
