"""Process faults on real processes, and the blast-radius guard that keeps them on our own."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from chaos import (
    BlastRadiusError,
    check_target,
    freeze,
    frozen,
    kill,
    pick,
    terminate,
    thaw,
    wait_until,
    workers_of,
)
from system import Pool
from system._demo import append_payload


def test_kill_and_terminate_end_real_processes(puppet) -> None:
    a, b = puppet(), puppet()
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    fault = kill(a.pid)
    assert a.proc.wait(10) == -signal.SIGKILL
    assert (
        fault.kind == "SIGKILL" and fault.pid == a.pid and fault.detail["signal"] == "SIGKILL(-9)"
    )
    assert before <= fault.mono <= time.clock_gettime(time.CLOCK_MONOTONIC)
    terminate(b.pid)
    assert b.proc.wait(10) == -signal.SIGTERM


def test_freeze_stops_scheduling_until_thaw(puppet) -> None:
    p = puppet()
    freeze(p.pid)
    wait_until(lambda: psutil.Process(p.pid).status() == psutil.STATUS_STOPPED, 10, "stopped")
    thaw(p.pid)
    assert p.ask("thread") == "ok"
    with frozen(p.pid) as fault:
        assert fault.kind == "freeze"
        wait_until(lambda: psutil.Process(p.pid).status() == psutil.STATUS_STOPPED, 10, "stop")
        p.send("thread")  # queued: a frozen process answers nothing
        assert psutil.Process(p.pid).status() == psutil.STATUS_STOPPED
    assert p.answer() == "ok"  # thawed on the way out


def test_frozen_thaws_also_when_the_block_fails(puppet) -> None:
    p = puppet()
    with pytest.raises(ZeroDivisionError), frozen(p.pid):
        1 / 0  # noqa: B018
    assert p.ask("thread") == "ok"


def test_the_guard_refuses_init_itself_and_processes_outside_its_tree(puppet) -> None:
    for pid, why in [
        (1, "pid 1 is init"),
        (0, "process groups"),
        (-5, "process groups"),
        (os.getpid(), "this process"),
        (os.getppid(), "not a descendant"),
    ]:
        with pytest.raises(BlastRadiusError, match=why):
            kill(pid)
    # A process we started but that left our tree (double fork) is refused too, unless allowed.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    print(os.getpid(), flush=True)\n"
        "    os.close(1)  # so that the caller's read ends now\n"
        "    os.close(2)\n"
        "    time.sleep(60)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    orphan = int(out.stdout)
    try:
        with pytest.raises(BlastRadiusError, match="allow_outside=True"):
            check_target(orphan)
        kill(orphan, allow_outside=True)
        wait_until(
            lambda: (
                not psutil.pid_exists(orphan)
                or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
            ),
            10,
            "orphan gone",
        )
    finally:
        if psutil.pid_exists(orphan):
            os.kill(orphan, signal.SIGKILL)
    with pytest.raises(ProcessLookupError, match="has exited"):
        kill(orphan, allow_outside=True)


def test_pick_is_seeded_and_order_free() -> None:
    assert pick([5, 3, 9], 42) == pick([9, 5, 3], 42)
    assert len({pick(list(range(100)), seed) for seed in range(20)}) > 5
    with pytest.raises(ValueError, match="no live workers"):
        pick([], 1)


async def test_workers_of_a_pool_and_of_a_pid(tmp_path) -> None:
    async with Pool(append_payload, tmp_path, workers=2, partitions=4) as pool:
        await pool.submit("a", 1)
        await pool.drain(timeout=30)
        pids = sorted(workers_of(pool))
        assert len(pids) == 2
        # By pid, every child process but the forkserver: the workers and the warm spare.
        spare = await asyncio.to_thread(wait_until, lambda: pool.stats()["spare"], 30, "spare")
        assert sorted(workers_of(os.getpid())) == sorted([*pids, spare])
