"""Scenario: thread and process exhaustion. The kernel refuses the pool (and every process it
started) one more task: killing a worker forces a respawn that cannot happen, and the pool
steps down the fallback ladder -- fewer processes, threads, inline -- and finishes the run with
nothing lost or duplicated."""

import psutil
import pytest

from chaos import kill, pids_limit
from conftest import PIDS_OK, PIDS_WHY, cli, events, live


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
def test_a_pool_refused_new_processes_and_threads_ends_inline(demo_run) -> None:
    run = demo_run("--messages", "20000", "--rate", "4000", "--workers", "2")
    d = run.data_dir
    workers = run.wait_until(lambda: len(live(d)) == 2 and live(d), 30, "2 workers ready")
    victim = sorted(workers.values())[0]
    # The run and its whole tree, capped at what they have minus the victim's threads: once
    # the victim is killed, not one more process or thread can start.
    with pids_limit(run.pid, extra=-psutil.Process(victim).num_threads()):
        kill(victim)
        run.wait_until(
            lambda: any(e["kind"] == "degraded" and e["mode"] == "inline" for e in events(d)),
            60,
            "the step down to inline",
        )
        assert run.finish(120) == 0, run.explain()
    steps = [e for e in events(d) if e["kind"] == "degraded"]
    assert steps[-1]["mode"] == "inline"
    reasons = [e["reason"] for e in steps]
    assert all("EAGAIN" in r or "can't start new thread" in r for r in reasons), reasons
    verify = cli("verify", "--data-dir", str(d))
    assert verify.returncode == 0 and verify.stdout.startswith("lost=0 duplicated=0 reordered=0")
