"""The fallback ladder: process -> fewer processes -> threads -> inline, chosen at start from free
memory and taken at run time when the system refuses a process or a thread -- with every
message still committed exactly once."""

import asyncio
import errno
from pathlib import Path

import pytest

from chaos import pids_limit, set_failpoints
from conftest import PIDS_OK, PIDS_WHY
from system import Pool, read_events
from system._demo import append_payload
from system._fallback import choose_mode, is_refusal, next_rung

MB = 2**20


def test_the_first_rung_follows_free_memory() -> None:
    assert choose_mode(4, 24_000 * MB, 64 * MB)[0] == "process"
    mode, why = choose_mode(4, 300 * MB, 64 * MB)
    assert mode == "thread" and "only 300 MB free" in why
    assert choose_mode(4, 10 * MB, 64 * MB)[0] == "inline"
    # The warm spare is one more process: room for 4 workers twice over is not room for 5.
    assert choose_mode(4, 600 * MB, 64 * MB)[0] == "process"
    mode, why = choose_mode(4, 600 * MB, 64 * MB, spare=1)
    assert mode == "thread" and "4 workers and a warm spare as processes" in why, why


def test_the_ladder_halves_processes_then_threads_then_inline() -> None:
    rungs, rung = [], ("process", 4)
    while rung is not None:
        rungs.append(rung)
        rung = next_rung(*rung)
    assert rungs == [("process", 4), ("process", 2), ("process", 1), ("thread", 1), ("inline", 1)]


def test_refusals_are_told_from_other_failures() -> None:
    assert is_refusal(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert is_refusal(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"))
    assert is_refusal(MemoryError())
    assert is_refusal(RuntimeError("can't start new thread"))
    assert not is_refusal(OSError(errno.ENOENT, "No such file"))
    assert not is_refusal(RuntimeError("something else"))


async def test_auto_mode_picks_processes_on_a_roomy_machine(tmp_path: Path) -> None:
    async with Pool(append_payload, tmp_path, workers=2, mode="auto", partitions=4) as pool:
        assert pool.mode == "process" and "MB free" in pool.mode_reason
        await pool.submit("a", 1)
        await pool.drain(timeout=30)
    opened = read_events(tmp_path)[0]
    assert opened["mode"] == "process" and opened["mode_reason"] == pool.mode_reason


async def test_auto_mode_uses_threads_for_a_handler_processes_cannot_have(tmp_path) -> None:
    async with Pool(lambda s, m: (s or 0) + 1, tmp_path, workers=2, mode="auto") as pool:
        assert pool.mode == "thread"
        await pool.submit("a", 1)
        await pool.drain(timeout=30)
        assert await pool.query("a") == 1


@pytest.fixture
def clean_failpoints():
    yield
    set_failpoints("", replace=True)


async def test_refused_spawns_step_down_rung_by_rung(tmp_path: Path, clean_failpoints) -> None:
    # Refusals as the kernel gives them: out of memory, no more processes, no thread. (The
    # second worker does not try while the pool is stepping down.)
    set_failpoints(
        "worker.spawn=1*raise(OSError, ENOMEM)->1*raise(OSError, EAGAIN)"
        "->1*raise(RuntimeError, can't start new thread)"
    )
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4, fallback_cooldown=None) as pool:
        await pool.submit_many([(f"k{i % 6}", i) for i in range(600)])
        await pool.drain(timeout=60)
        for k in range(6):
            assert await pool.query(f"k{k}") == list(range(k, 600, 6))
        assert (pool.mode, pool.workers) == ("inline", 1)
    steps = [e for e in read_events(d) if e["kind"] == "degraded"]
    assert [(e["was_mode"], e["was_workers"], e["mode"], e["workers"]) for e in steps] == [
        ("process", 2, "process", 1),
        ("process", 1, "thread", 1),
        ("thread", 1, "inline", 1),
    ]
    assert "Cannot allocate memory" in steps[0]["reason"]
    assert "Resource temporarily unavailable" in steps[1]["reason"]
    assert "can't start new thread" in steps[2]["reason"]


async def test_after_the_cooldown_it_climbs_back(tmp_path: Path, clean_failpoints) -> None:
    set_failpoints("worker.spawn=1*raise(OSError, ENOMEM)")
    d = tmp_path / "d"
    async with Pool(
        append_payload, d, workers=2, partitions=4, fallback_cooldown=0.5, heartbeat_interval=0.05
    ) as pool:
        await pool.submit_many([(f"k{i % 4}", i) for i in range(100)])
        await pool.drain(timeout=30)
        async with asyncio.timeout(30):
            while "recovered" not in (kinds := [e["kind"] for e in read_events(d)]):
                await asyncio.sleep(0.05)
        await pool.submit_many([(f"k{i % 4}", i) for i in range(100, 200)])
        await pool.drain(timeout=30)
        for k in range(4):
            assert await pool.query(f"k{k}") == list(range(k, 200, 4))
        assert (pool.mode, pool.workers) == ("process", 2)
    assert kinds.index("degraded") < kinds.index("recovered")


POOL_SCRIPT = """
import asyncio, sys
from system import Pool
from system._demo import append_payload

async def main():
    async with Pool(append_payload, sys.argv[1], workers=1, mode="inline", partitions=2) as pool:
        print("ready", flush=True)
        sys.stdin.readline()  # (blocking on purpose: a thread is what this test takes away)
        await pool.submit_many([("k", i) for i in range(100)])
        await pool.drain(timeout=30)
        print("state", await pool.query("k") == list(range(100)), flush=True)

asyncio.run(main())
"""


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
def test_no_thread_for_the_intake_writer_means_writing_in_the_loop(tmp_path: Path) -> None:
    import subprocess
    import sys

    d = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL_SCRIPT, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        with pids_limit(proc.pid):  # not one more thread: the writer thread cannot start
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "state True\n"
            assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    (step,) = [e for e in read_events(d) if e["kind"] == "degraded"]
    assert step["component"] == "intake writer" and "can't start new thread" in step["reason"]
