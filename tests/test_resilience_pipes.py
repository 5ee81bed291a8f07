"""Broken channels, from the worker's side, from the supervisor's, and from outside: each is the
loss of that worker -- restart, replay, nothing lost -- and never the supervisor's death."""

import asyncio
from pathlib import Path

import pytest

from chaos import break_sockets, failpoint_counts, set_failpoints, wait_until
from chaos import failpoints as fp
from system import Pool, read_events
from system._demo import append_payload


@pytest.fixture
def failpoint_log(tmp_path: Path, monkeypatch):
    log = tmp_path / "fp.log"
    monkeypatch.setenv(fp.ENV_LOG, str(log))
    yield log
    set_failpoints("", replace=True)


async def run_checked(pool: Pool, n: int = 2000, keys: int = 10) -> None:
    for lo in range(0, n, 200):  # drained chunk by chunk: at least 20 channel writes in all
        await pool.submit_many([(f"k{i % keys}", i, f"m{i}") for i in range(lo, lo + 200)])
        await pool.drain(timeout=60)
    for k in range(keys):
        assert await pool.query(f"k{k}") == list(range(k, n, keys))


@pytest.mark.parametrize("site", ["worker.recv", "dispatch.send"])
@pytest.mark.parametrize("mode", ["process", "thread"])
async def test_a_channel_broken_at_a_site_costs_one_worker_and_nothing_else(
    tmp_path: Path, failpoint_log: Path, site: str, mode: str
) -> None:
    set_failpoints(f"{site}=3*off->1*pipe")
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4, mode=mode) as pool:
        await run_checked(pool)
        assert pool.stats()["restarts"] == 1
    assert failpoint_counts(failpoint_log)[site]["fires"] == 1
    died = [e for e in read_events(d) if e["kind"] == "died"]
    assert len(died) == 1


async def test_a_worker_socket_broken_from_outside(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4) as pool:
        await pool.submit_many([(f"k{i % 10}", -1 - i, f"w{i}") for i in range(10)])
        await pool.drain(timeout=30)
        victim = pool.worker_pids()[0]
        faults = break_sockets(victim)  # chaos: shutdown(2) on the worker's own socket
        assert faults
        await asyncio.to_thread(
            wait_until, lambda: victim not in pool.worker_pids(), 30, "the broken worker replaced"
        )
        await pool.submit_many([(f"k{i % 10}", i, f"m{i}") for i in range(1000)])
        await pool.drain(timeout=60)
        for k in range(10):
            assert await pool.query(f"k{k}") == [-1 - k, *range(k, 1000, 10)]
    (died,) = [e for e in read_events(d) if e["kind"] == "died"]
    assert died["pid"] == victim
