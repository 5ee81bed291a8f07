"""Scenario: thread and process exhaustion. The kernel refuses the pool (and every process it
started) one more task: killing a worker forces a respawn that cannot happen, and the pool
steps down the fallback ladder -- fewer processes, threads, inline -- and finishes the run with
nothing lost or duplicated."""

import psutil
import pytest

from chaos import pids_limit
from conftest import PIDS_OK, PIDS_WHY, events, live
from system._demo import verdict_of


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
@pytest.mark.chaos_slo(lost=0, duplicated=0, mode="inline")
def test_a_pool_refused_new_processes_and_threads_ends_inline(demo_run, chaos) -> None:
    run = demo_run("--messages", "20000", "--rate", "4000", "--workers", "2")
    d = run.data_dir
    workers = run.wait_until(lambda: len(live(d)) == 2 and live(d), 30, "2 workers ready")
    victim = sorted(workers.values())[0]
    # The run and its whole tree, capped at what they have minus the victim's threads: once
    # the victim is killed, not one more process or thread can start.
    limit = pids_limit(run.pid, extra=-psutil.Process(victim).num_threads())
    with chaos.limit("pids cgroup", limit, pid=run.pid, detail="no new process or thread"):
        chaos.kill(victim)
        run.wait_until(
            lambda: any(e["kind"] == "degraded" and e["mode"] == "inline" for e in events(d)),
            60,
            "the step down to inline",
        )
        assert run.finish(120) == 0, run.explain()
    chaos.judge(verdict_of(d), events(d))
    reasons = [e["reason"] for e in events(d) if e["kind"] == "degraded"]
    assert all("EAGAIN" in r or "can't start new thread" in r for r in reasons), reasons
