"""Scenario: the whole pool -- kill -9 of its process group or of its supervisor alone, and
SIGTERM / SIGINT -- then a re-run on the same data dir.

Each test runs ``python -m system run`` in its own process group, injects the fault by pid, lets
it (or a re-run) finish, and holds the data dir's verdict (what ``verify`` prints) against the
SLO: nothing lost, duplicated or reordered, and no process left behind. (Repeated kill -9 of
workers during a run is ``test_sigkill_workers.py``.)
"""

import signal
import time
from pathlib import Path

import pytest

from chaos import descendants, freeze, wait_gone
from conftest import cli, events, live
from system._demo import verdict_of

pytestmark = pytest.mark.slow
SLO = pytest.mark.chaos_slo(lost=0, duplicated=0)


def committed_some(d: Path) -> bool:
    return any(e["kind"] == "checkpointed" and e["messages"] for e in events(d))


def judged(chaos, d: Path, messages: int = 20000) -> None:
    verdict = chaos.judge(verdict_of(d), events(d))
    assert verdict.submitted == messages, verdict.summary()


@SLO
@pytest.mark.parametrize("mode", ["process", "thread", "inline"])
def test_sigkill_of_the_whole_process_group_then_rerun(demo_run, chaos, mode: str) -> None:
    args = ("--messages", "20000", "--mode", mode)
    run = demo_run(*args, "--rate", "8000")
    run.wait_until(lambda: committed_some(run.data_dir), 30, "some messages committed")
    tree = {run.pid} | {p.pid for p in descendants(run.pid)}
    fault = chaos.plan("kill", f"process group {run.pid}", detail=f"SIGKILL to {len(tree)} pids")
    run.kill_group(signal.SIGKILL)
    fault.fire()
    assert run.finish(30) == -signal.SIGKILL
    assert not wait_gone(tree, 5.0)
    rerun = cli("run", "--data-dir", str(run.data_dir), *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "committed_now=0 " not in rerun.stdout
    judged(chaos, run.data_dir)


@SLO
def test_sigkill_of_the_supervisor_alone_takes_its_workers_down(demo_run, chaos) -> None:
    run = demo_run("--messages", "20000", "--rate", "5000")
    workers = run.wait_until(
        lambda: len(live(run.data_dir)) == 4 and live(run.data_dir), 30, "4 workers ready"
    )
    tree = {p.pid for p in descendants(run.pid)}
    assert set(workers.values()) <= tree
    chaos.kill(run.pid)  # the supervisor only, not its group
    assert run.finish(30) == -signal.SIGKILL
    left = wait_gone(tree, 5.0)
    assert not left, f"orphaned workers {left}"
    assert cli("run", "--data-dir", str(run.data_dir), "--messages", "20000").returncode == 0
    judged(chaos, run.data_dir)


@SLO
@pytest.mark.parametrize(
    ("mode", "how"),
    [
        ("process", "SIGTERM"),
        ("process", "SIGINT to group"),
        ("thread", "SIGTERM"),
        ("inline", "SIGTERM"),
    ],
)
def test_sigterm_drains_and_exits_within_grace(demo_run, chaos, mode: str, how: str) -> None:
    args = ("--messages", "20000", "--mode", mode)
    run = demo_run(*args, "--rate", "4000", "--grace", "5")
    run.wait_until(lambda: committed_some(run.data_dir), 30, "some messages committed")
    tree = {p.pid for p in descendants(run.pid)}
    t0 = time.monotonic()
    if how == "SIGTERM":
        chaos.terminate(run.pid)
    else:
        fault = chaos.plan("interrupt", f"process group {run.pid}", detail="SIGINT (Ctrl-C)")
        run.kill_group(signal.SIGINT)  # what a Ctrl-C in a terminal does
        fault.fire()
    code = run.finish(30)
    elapsed = time.monotonic() - t0
    signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    assert code == 128 + signum, run.explain()
    assert elapsed < 5 + 5  # the grace, plus slack for a loaded machine
    assert f"stopped by signal {signum}" in run.stdout
    assert not wait_gone(tree, 5.0)
    stops = [e for e in events(run.data_dir) if e["kind"] == "stopped"]
    assert stops[-1]["worker"] is None and stops[-1]["drained"] is True
    assert cli("run", "--data-dir", str(run.data_dir), *args).returncode == 0
    judged(chaos, run.data_dir)


def test_the_rerun_is_needed(demo_run) -> None:
    """The verdict can fail: with its workers frozen, a run goes on acknowledging messages that
    no worker commits; killed then, before a re-run, its data dir shows them lost."""
    run = demo_run("--messages", "20000", "--rate", "8000", name="early")
    workers = run.wait_until(lambda: len(live(run.data_dir)) == 4 and live(run.data_dir), 30, "4")
    for pid in workers.values():
        freeze(pid)
    run.wait_until(lambda: verdict_of(run.data_dir).lost, 30, "acknowledged, uncommitted")
    run.kill_group(signal.SIGKILL)
    run.finish(30)
    verdict = verdict_of(run.data_dir)
    assert verdict.lost and not verdict.duplicated, verdict.summary()
