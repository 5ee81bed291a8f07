"""Scenario: thread and process exhaustion. The kernel refuses the pool (its server and every
process it started) one more task: killing a worker forces a respawn that cannot happen, and the
pool steps down the fallback ladder -- fewer processes, threads, inline -- and takes the rest of
the traffic with nothing lost or duplicated.

The system pool is served from a child process (``chaos._served.ServedTarget``) so that the pids
cgroup caps the server's whole tree, not the harness. The ledger is the harness's own history
of acknowledgements; the mode objective (``inline``) is judged from the pool's events, and
checked from outside too: once it has stepped down, the server has no worker process left.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from chaos import cgroup_available, pids_limit, wait_gone, workers_of
from chaos._served import pipelined_traffic, running, serving, until_outstanding

PIDS_OK, PIDS_WHY = cgroup_available("pids")
pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

TOTAL, RATE = 20_000, 4_000  # messages, at most per second (from 16 submitters at once)
BEFORE_FAULT = 1_000  # acknowledged before the fault


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return found


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
@pytest.mark.chaos_slo(lost=0, duplicated=0, mode="inline")
@pytest.mark.chaos_system_pool(
    "fallback ladder (process, thread, inline)",
    "the matrix's exhaustion caps its whole tree the same way, kills a worker and judges "
    "whether it finished, wedged or broke (test_peers.py, column yours)",
)
async def test_a_pool_refused_new_processes_and_threads_ends_inline(tmp_path: Path, chaos) -> None:
    async with (
        serving(None, tmp_path / "d", workers=2) as served,
        running(pipelined_traffic(served, chaos.history, TOTAL, rate=RATE)) as traffic,
    ):
        chaos.target = served
        victim, other = await chaos.workers(2)
        await until(lambda: len(chaos.history.submits) >= BEFORE_FAULT, 60, "some traffic")
        if hasattr(served, "committed_now"):  # a read in a thread: that thread exists before
            await served.committed_now()  # the cap, so the harness can still read under it
        # The server and its whole tree, capped at what they have minus the victim's threads:
        # once the victim is killed, not one more process or thread can start.
        limit = pids_limit(served.pid, extra=-psutil.Process(victim).num_threads())
        with chaos.limit("pids cgroup", limit, pid=served.pid, detail="no new process or thread"):
            await until_outstanding(served, chaos.history)  # the kill catches work in flight
            chaos.kill(victim)
            await until(
                lambda: any(
                    e["kind"] == "degraded" and e.get("mode") == "inline" for e in served.events()
                ),
                60,
                "the step down to inline",
            )
            assert not wait_gone({victim, other}, 10.0), "workers left after the step down"
            await until(lambda: not workers_of(served.pid), 10, "no worker process of the server")
            await asyncio.wait_for(traffic, 200)  # the rest of the traffic, acknowledged inline
            await chaos.verify()
        events = chaos.events
    assert len(chaos.history.submits) == TOTAL and all(s.acked for s in chaos.history.submits)
    reasons = [e["reason"] for e in events if e["kind"] == "degraded"]  # intake writer too
    assert all("EAGAIN" in r or "can't start new thread" in r for r in reasons), reasons
