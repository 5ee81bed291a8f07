"""The fault-schedule scenario catches a planted bug (``targets.DuplicatingTarget``: a key's
third message committed twice), shrinks it to a minimal schedule printed as steps (and kept in the
run's report), and replays it from the seed. The bug depends on the input alone, so every replay
of the schedule fails alike, whatever the pool's timing."""

import os
import re
import subprocess
import sys
from pathlib import Path

from chaos._report import load

ROOT = Path(__file__).resolve().parent.parent


def run_schedules(where: Path, *options: str) -> subprocess.CompletedProcess[str]:
    target = ["--chaos-target", "targets:DuplicatingTarget", "-p", "no:cacheprovider"]
    target += ["--chaos-report", str(where / "reports")]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/test_fault_schedules.py", *target, *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_planted_bug_shrinks_to_a_minimal_schedule_and_replays(tmp_path: Path) -> None:
    first = run_schedules(tmp_path, "--chaos-seed", "1")
    assert first.returncode == 1, first.stdout[-3000:]
    out = first.stdout
    assert "SLO breached" in out and re.search(r"duplicated=1, allowed 0", out), out[-3000:]
    # Minimal: the first batch (every example starts with 20 or more) to one key, then a drain,
    # which checks the history so far.
    assert steps_of(out) == ["first_batch(n=20, keys=1)", "drain()", "teardown()"], out[-5000:]
    (scenario,) = load(tmp_path / "reports" / "latest")["scenarios"]
    assert scenario["failure_kind"] == "breach" and scenario["checker"]["duplicated"]
    assert scenario["steps"] == ["submit 20 messages over 1 keys"] + ["drain, then check"] * 2
    assert len(scenario["examples"]) >= 2  # every example is accounted, not only the last
    assert "--chaos-seed 1" in out  # the replay line
    again = run_schedules(tmp_path, "--chaos-seed", "1")
    assert again.returncode == 1 and steps_of(again.stdout) == steps_of(out)


def steps_of(out: str) -> list[str]:
    """The falsifying schedule's steps, as Hypothesis prints them (the first time: pytest may
    repeat them in its short summary)."""
    steps = []
    for line in out.split("state = Schedule()", 1)[-1].splitlines():
        found = re.match(r"^E?\s*state\.(\w+\(.*\))$", line)
        if found:
            steps.append(found.group(1))
            if found.group(1) == "teardown()":
                break
    return steps


def test_a_bad_profile_is_refused_with_where_it_came_from(tmp_path: Path) -> None:
    run = run_schedules(tmp_path, "--chaos-profile", "forever")
    assert run.returncode == 4, run.stderr
    assert "bad profile 'forever' (from --chaos-profile): choose ci or soak" in run.stderr
