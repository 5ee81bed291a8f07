"""Scenario: random fault schedules (Hypothesis). Traffic and faults -- SIGKILL, SIGSTOP, broken
sockets, poisoned payloads, memory leaks, drains -- interleaved at random against a fresh target
per schedule; every acknowledged message must be committed exactly once (or dead-lettered), in
order per key. A failure shrinks to a minimal schedule, printed as steps; ``--chaos-seed``
replays it. ``--chaos-profile soak --timeout 0`` runs many long schedules."""

import pytest

from chaos._schedule import run_schedules


@pytest.mark.chaos_slo(lost=0, duplicated=0, reordered=0)
def test_random_fault_schedules(chaos, chaos_target_factory, chaos_profile, tmp_path) -> None:
    run = run_schedules(chaos_target_factory, tmp_path, chaos, profile=chaos_profile)
    assert run.last is not None and chaos.verdict is not None
    chaos.judge(chaos.verdict, chaos.events)
    print(f"\n{run.examples} schedules; the last: {run.steps} steps, {run.faults} faults fired")
