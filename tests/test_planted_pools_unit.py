"""The planted pools driven directly (no harness): MiniPool is correct under worker kills, a stop
and a whole-pool SIGKILL; each planted bug really misbehaves when provoked the way it needs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import planted
import psutil
import pytest
from planted import (
    CORRECT,
    PLANTED,
    AcksEarlyDropsCrashed,
    AppliesRetriedTwice,
    DeadLettersOnCrash,
    DropsOneIn500,
    LazyWorkers,
    MiniPool,
    OrphansWorkers,
    RequeuesRetriesAtBack,
    RestartsAfterSeconds,
    ResubmitsCommittedOnRecovery,
    RetriesOnce,
)

from chaos import PAYLOAD_CATALOG
from chaos._payloads import DEAD_LETTERED, REFUSED
from conftest import ROOT, _shared_helpers
from system import PayloadError


def expected(n: int, keys: int = 8, prefix: str = "m", start: int = 0) -> dict[str, list[str]]:
    state: dict[str, list[str]] = {}
    for i in range(start, start + n):
        state.setdefault(f"k{i % keys}", []).append(f"{prefix}{i}")
    return state


def merged(*states: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for state in states:
        for key, ids in state.items():
            out.setdefault(key, []).extend(ids)
    return out


async def traffic(pool, n: int, keys: int = 8, prefix: str = "m", start: int = 0, payload=None):
    for i in range(start, start + n):
        await pool.submit(f"k{i % keys}", payload if payload is not None else i, f"{prefix}{i}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        await asyncio.sleep(0.002)


@pytest.fixture
async def pools(tmp_path):
    """Make pools (``await pools(cls, **options)``, data dir tmp_path/d); stopped at teardown."""
    made = []

    async def make(cls=MiniPool, data_dir: Path | None = None, **options):
        pool = cls(data_dir or tmp_path / "d", **options)
        made.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in made:
        await pool.stop()


def test_exports(tmp_path) -> None:
    assert CORRECT is MiniPool
    pool = MiniPool(tmp_path, workers=2)  # keys k0..k3 on both workers (crc32 would not)
    assert sorted(pool.owner(f"k{i}") for i in range(4)) == [0, 0, 1, 1]
    categories = {
        *(None, "lost", "duplicated", "reordered", "recovery", "dead_lettered", "leak", "hung")
    }
    assert len(PLANTED) == 12
    for name, (cls, category) in PLANTED.items():
        assert getattr(planted, name) is cls and issubclass(cls, MiniPool)
        assert category in categories and (category is None or category in cls.__doc__)


# --- MiniPool is correct ------------------------------------------------------------------------


async def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(pools) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)} | _shared_helpers()
    pool = await pools(workers=2, hang_timeout=1.0, partitions=8)  # system options: ignored
    assert len(pool.worker_pids()) == 2
    await traffic(pool, 250, payload={"sleep": 0.001})  # work stays in flight
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    await traffic(pool, 250, start=250, payload={"sleep": 0.001})
    assert await pool.committed() == expected(500)
    assert pool.dead_lettered() == {}
    assert victim not in pool.worker_pids() and len(pool.worker_pids()) == 2
    workers = pool.worker_pids()
    await pool.stop()
    assert all(gone(pid) for pid in [*workers, victim])
    after = {p.pid for p in psutil.Process().children(recursive=True) if not gone(p.pid)}
    assert after - before - _shared_helpers() == set()  # the forkserver, started now, aside


async def test_committed_now_does_not_wait(pools) -> None:
    pool = await pools(workers=1)
    await traffic(pool, 5, payload={"sleep": 0.2})
    assert len([m for ids in (await pool.committed_now()).values() for m in ids]) < 5
    assert await pool.committed() == expected(5)


async def test_resubmitting_an_id_is_a_no_op(pools) -> None:
    pool = await pools()
    await traffic(pool, 20)
    await traffic(pool, 20)
    assert await pool.committed() == expected(20)


async def test_ids_keep_their_type(pools) -> None:
    pool = await pools()
    for mid in (1, "1", 2):
        await pool.submit("k", None, mid)
    assert await pool.committed() == {"k": [1, "1", 2]}


async def test_the_payload_catalog(pools) -> None:
    pool = await pools()
    dead, good = [], []
    for fault in PAYLOAD_CATALOG:
        await pool.submit("k", "ok", f"before-{fault.name}")
        good.append(f"before-{fault.name}")
        mid = f"bad-{fault.name}"
        if fault.outcome("process") == REFUSED:
            with pytest.raises(PayloadError, match="nothing was written"):
                await pool.submit("k", fault.make(), mid)
        else:
            await pool.submit("k", fault.make(), mid)
            (dead if fault.outcome("process") == DEAD_LETTERED else good).append(mid)
    assert await pool.committed() == {"k": good}
    letters = pool.dead_lettered()
    assert sorted(letters) == sorted(dead)
    assert "ValueError: CrashAtUnpickle" in letters["bad-crash_at_unpickle"]
    assert "ModuleNotFoundError" in letters["bad-missing_in_worker"]
    rows = pool._query("SELECT id FROM intake WHERE id LIKE 'bad-%'")
    assert sorted(r[0] for r in rows) == sorted([*dead, "bad-huge"])


async def test_stop_then_a_new_pool_takes_up_what_was_not_applied(pools, tmp_path) -> None:
    first = await pools(workers=2)
    first.stop_timeout = 0.3  # then its busy workers are killed, their work left unapplied
    await traffic(first, 100, payload={"sleep": 0.05})
    await first.stop()
    done = sum(len(ids) for ids in (await first.committed_now()).values())
    assert done < 100, "every message was applied before the stop: nothing to recover"
    second = await pools(workers=3)  # another number of workers: keys move, order holds
    await traffic(second, 10, payload={"sleep": 0.05})  # already submitted: no-ops
    await traffic(second, 100, start=100)
    assert await second.committed() == expected(200)


CRASH_CHILD = """
import asyncio, os, signal, sys
import planted

async def main(cls, data_dir, n, freeze):
    pool = getattr(planted, cls)(data_dir, workers=2)
    await pool.start()
    if freeze:  # nothing gets applied: all of it is acknowledged and unapplied at the kill
        for pid in pool.worker_pids():
            os.kill(pid, signal.SIGSTOP)
    for i in range(n):
        await pool.submit(f"k{i % 8}", i, f"m{i}")
    if not freeze:
        await pool.committed()
    print("acked", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "freeze"))
"""


def crash_whole_pool(cls: str, data_dir: Path, n: int, freeze: bool) -> None:
    """Run a pool in a process group of its own, submit ``n`` messages, SIGKILL the group."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, cls, str(data_dir), str(n), "freeze" * freeze],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acked"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()


async def test_a_whole_pool_sigkill_then_restart_loses_nothing(pools, tmp_path) -> None:
    crash_whole_pool("MiniPool", tmp_path / "d", 200, freeze=True)
    pool = await pools()
    assert await pool.committed() == expected(200)


async def test_lazy_workers_start_at_the_first_message(pools) -> None:
    pool = await pools(LazyWorkers)
    assert pool.worker_pids() == []
    await traffic(pool, 1)
    assert len(pool.worker_pids()) == 2
    await traffic(pool, 99, start=1)
    assert await pool.committed() == expected(100)


# --- each planted bug misbehaves --------------------------------------------------------------


async def kill_while_busy(pools, tmp_path, cls, *, then_submit: int = 0, kills: int = 1):
    """One worker gets m0..m4 (fast: applied, not yet acknowledged), m5 (slow, running) and
    m6..m9 (queued); it is SIGKILLed while on m5 (``kills`` times: each replacement too, once it
    is back on m5); then ``then_submit`` more are submitted before its replacement is ready.
    Returns the pool and the key's committed list."""
    pool = await pools(cls, workers=1)
    started = tmp_path / "started"
    await traffic(pool, 5, keys=1)
    await pool.submit("k0", {"started": str(started), "sleep": 0.5}, "m5")
    await traffic(pool, 4, keys=1, start=6)
    for _ in range(kills):
        await wait_for(started.exists, what="m5 running")
        started.unlink()
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda v=victim: v not in pool.worker_pids(), what="death seen")
    await traffic(pool, then_submit, keys=1, start=10)
    return pool, (await pool.committed()).get("k0", [])


ALL_TEN = [f"m{i}" for i in range(10)]


async def test_minipool_survives_the_scripted_kills(pools, tmp_path) -> None:
    pool, ids = await kill_while_busy(pools, tmp_path, MiniPool, then_submit=5, kills=2)
    assert ids == ALL_TEN + [f"m{i}" for i in range(10, 15)]
    assert pool.dead_lettered() == {}


async def test_acks_early_drops_crashed(pools, tmp_path) -> None:
    _, ids = await kill_while_busy(pools, tmp_path, AcksEarlyDropsCrashed)
    assert ids == ALL_TEN[:5]  # m5..m9 lost


async def test_requeues_retries_at_back(pools, tmp_path) -> None:
    _, ids = await kill_while_busy(pools, tmp_path, RequeuesRetriesAtBack, then_submit=5)
    assert sorted(ids) == sorted(ALL_TEN + [f"m{i}" for i in range(10, 15)])
    assert ids.index("m10") < ids.index("m5")  # reordered


async def test_applies_retried_twice(pools, tmp_path) -> None:
    _, ids = await kill_while_busy(pools, tmp_path, AppliesRetriedTwice)
    assert sorted(set(ids)) == sorted(ALL_TEN)
    assert len(ids) > len(ALL_TEN)  # m0..m4 (applied, not acknowledged) applied again


async def test_dead_letters_on_crash(pools, tmp_path) -> None:
    pool, ids = await kill_while_busy(pools, tmp_path, DeadLettersOnCrash)
    assert ids == ALL_TEN[:5]
    dead = pool.dead_lettered()
    assert set(ALL_TEN[5:]) <= set(dead) <= set(ALL_TEN)  # m0..m4 too unless acknowledged
    assert set(dead.values()) == {"worker died"}


async def test_retries_once(pools, tmp_path) -> None:
    _, ids = await kill_while_busy(pools, tmp_path, RetriesOnce, kills=2)
    assert ids == ALL_TEN[:5]  # m5..m9 were in flight during a second death: dropped


async def test_restarts_after_seconds(pools) -> None:
    pool = await pools(RestartsAfterSeconds, workers=1)
    os.kill(pool.worker_pids()[0], signal.SIGKILL)
    await wait_for(lambda: pool.worker_pids() == [], what="the death seen")
    seen = time.monotonic()
    while time.monotonic() - seen < 1.0:  # then a second without a replacement (it takes 6 s)
        assert pool.worker_pids() == [], "replaced at once"
        await asyncio.sleep(0.05)


async def test_drops_one_in_500(pools) -> None:
    pool = await pools(DropsOneIn500)
    await traffic(pool, 1000)
    committed = await pool.committed()
    assert {mid for ids in committed.values() for mid in ids} == {f"m{i}" for i in range(1000)} - {
        "m499",
        "m999",
    }


async def test_orphans_workers(pools) -> None:
    pool = await pools(OrphansWorkers, workers=2)
    victim, kept = pool.worker_pids()
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: len(set(pool.worker_pids()) - {victim, kept}) == 1, what="replacement")
    (orphan,) = set(pool.worker_pids()) - {victim, kept}
    await pool.stop()
    try:
        await wait_for(lambda: gone(kept), what="the first worker stopped")
        await asyncio.sleep(0.3)
        assert not gone(orphan), "the replacement should have been left running"
        assert pool.worker_pids() == [orphan]
    finally:
        os.kill(orphan, signal.SIGKILL)
        await wait_for(lambda: gone(orphan), what="the orphan gone")


async def test_resubmits_committed_on_recovery(pools, tmp_path) -> None:
    first = await pools(ResubmitsCommittedOnRecovery)
    await traffic(first, 40)
    assert await first.committed() == expected(40)
    await first.stop()
    second = await pools(ResubmitsCommittedOnRecovery)
    assert await second.committed() == merged(expected(40), expected(40))


async def test_acks_before_durable(pools, tmp_path) -> None:
    crash_whole_pool("AcksBeforeDurable", tmp_path / "d", 200, freeze=True)
    pool = await pools()
    committed = await pool.committed()
    assert sum(map(len, committed.values())) < 200  # acknowledged, never written: lost
