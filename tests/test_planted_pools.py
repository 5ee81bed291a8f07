"""The gate's own catch rate: planted-bug pools (``tests/planted``) must each fail the gate with
exit 10 and the right category; the correct pools must pass it.

Each case runs the scenarios that bear on its bug, as a user would -- ``pytest <scenarios>
--chaos-target planted:<Pool> --chaos-gate`` in a subprocess -- and reads the verdict from the
run's ``report.json``. ``python tests/test_planted_pools.py`` prints the table (pool -> exit code
-> categories -> seconds) for the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KILLS = "scenarios/test_sigkill_workers.py"
AT_ONCE = "scenarios/test_sigkill_variants.py::test_workers_killed_at_once"
AGAIN = "scenarios/test_repeated_kills.py"
WHOLE = "scenarios/test_whole_pool.py::test_sigkill_of_the_whole_process_group_then_rerun"
PAYLOADS = "scenarios/test_payloads.py"
SCHEDULES = "scenarios/test_fault_schedules.py"

# pool -> (the scenarios that bear on it, the category the gate must name; None: must pass)
CASES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "MiniPool": ((KILLS, AT_ONCE, AGAIN, WHOLE, PAYLOADS, SCHEDULES), None),
    "LazyWorkers": ((KILLS, SCHEDULES), None),
    "AcksEarlyDropsCrashed": ((KILLS,), "lost"),
    "ResubmitsCommittedOnRecovery": ((WHOLE,), "duplicated"),
    "RequeuesRetriesAtBack": ((AGAIN,), "reordered"),
    "RestartsAfterSeconds": ((AT_ONCE,), "recovery"),
    "DropsOneIn500": ((KILLS,), "lost"),
    "DeadLettersOnCrash": ((KILLS,), "dead_lettered"),
    "AcksBeforeDurable": ((WHOLE,), "lost"),
    "OrphansWorkers": ((AT_ONCE,), "leak"),
    "AppliesRetriedTwice": ((KILLS,), "duplicated"),
    "RetriesOnce": ((AGAIN,), "lost"),
    "AcksEarlyDropsCrashed-schedules": ((SCHEDULES,), "lost"),  # schedules catch a plain loss
}


def gate(
    pool: str, scenarios: tuple[str, ...], where: Path, seed: int = 1, extra: tuple[str, ...] = ()
) -> dict:
    """Run ``scenarios`` against ``pool`` under the gate; its exit code, categories, time."""
    t0 = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *scenarios,
            "--chaos-target",
            f"planted:{pool.split('-')[0]}",
            "--chaos-gate",
            "--chaos-seed",
            str(seed),
            "--chaos-report",
            str(where),
            "-p",
            "no:cacheprovider",
            "-q",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - t0
    report = json.loads((where / "latest" / "report.json").read_text())
    found = report["run"]["gate"]
    return {
        "report": report,
        "exit": run.returncode,
        "categories": list(dict.fromkeys(f["category"] for f in found["findings"])),
        "findings": found["findings"],
        "seconds": round(seconds, 1),
        "tail": run.stdout[-4000:] + run.stderr[-2000:],
    }


@pytest.mark.slow
@pytest.mark.parametrize("pool", list(CASES))
def test_the_gate_catches_each_planted_bug_and_passes_the_correct_pools(
    pool: str, tmp_path: Path
) -> None:
    scenarios, category = CASES[pool]
    seen = gate(pool, scenarios, tmp_path / "reports")
    print(f"\n{pool}: exit {seen['exit']} {seen['categories']} in {seen['seconds']} s")
    if category is None:
        assert seen["exit"] == 0, seen["tail"]
    else:
        assert seen["exit"] == 10, seen["tail"]
        assert category in seen["categories"], (seen["findings"], seen["tail"])


HANG_TIMEOUT = 3.0  # target_timeout for the hung target
HANG_BOUND = 300.0  # seconds the whole run may take against it (measured: about 100 idle)


@pytest.mark.slow
def test_a_target_that_hangs_after_its_first_fault_ends_the_suite_in_bounded_time(
    tmp_path: Path,
) -> None:
    """Every scenario (the matrices of the peers, engines and network aside: they never touch
    the target) against a pool that wedges at its first worker death -- committed() never
    returns, stop() blocks its thread: each scenario ends as a verdict within a few
    target_timeouts, the run within HANG_BOUND, exit 10, with the report written and the stacks
    of each hang in it (two xdist workers: the hangs wait out their bounds side by side)."""
    ignore = ("--ignore", "scenarios/test_peers.py", "--ignore", "scenarios/test_engines.py")
    ignore += ("--ignore", "scenarios/test_network.py")
    timeout = ("--chaos-target-timeout", str(HANG_TIMEOUT), "-n", "2")
    seen = gate("HangsAfterFault", ("scenarios/",), tmp_path / "reports", extra=ignore + timeout)
    print(f"\nHangsAfterFault: exit {seen['exit']} {seen['categories']} in {seen['seconds']} s")
    assert seen["exit"] == 10, seen["tail"]
    assert seen["seconds"] < HANG_BOUND, seen["tail"]
    assert "hung" in seen["categories"], seen["findings"]
    hung = [s for s in seen["report"]["scenarios"] if s["failure_kind"] == "hung"]
    assert len(hung) >= 3, [(s["name"], s["failure_kind"]) for s in seen["report"]["scenarios"]]
    for sc in hung:
        assert "did not return within 3 s" in sc["failure"], sc["failure"][-2000:]
        assert any("harness thread" in d["text"] for d in sc["dumps"]), sc["name"]
    errors = [f for f in seen["findings"] if f["kind"] == "harness" and f["category"] != "skipped"]
    assert not errors, errors  # every scenario a verdict on the target, none a harness error


def test_skips_are_visible_and_can_fail_the_gate(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.chaos_slo(lost=0)
        def test_runs(chaos):
            chaos.history.submitted("m1", "k")
            chaos.judge(chaos.history.check({"k": ["m1"]}))

        def test_skipped(chaos):
            pytest.skip("the target lacks failpoints")
        """
    )
    result = pytester.runpytest_subprocess("--chaos-gate", "-p", "no:cacheprovider")
    assert result.ret == 0  # skips are allowed by default, and listed
    result.stdout.fnmatch_lines(["skipped: 1 scenario(s), not judged:", "*the target lacks*"])
    pytester.makefile(".toml", pyproject="[tool.chaosgate.gate]\nskipped = 0\n")
    result = pytester.runpytest_subprocess("--chaos-gate", "-p", "no:cacheprovider")
    assert result.ret == 11
    result.stdout.fnmatch_lines(
        ["*harness [[]skipped[]]*1 scenario(s) skipped, the gate allows 0*"]
    )


if __name__ == "__main__":  # the table for the README
    import tempfile

    print("| pool | scenarios | exit | categories | seconds |\n|---|---|---|---|---|")
    for name, (scenarios, _) in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            seen = gate(name, scenarios, Path(d))
        files = ", ".join(s.split("/")[-1].split("::")[0].removesuffix(".py") for s in scenarios)
        cats = ", ".join(seen["categories"]) or "-"
        print(f"| {name} | {files} | {seen['exit']} | {cats} | {seen['seconds']} |")
