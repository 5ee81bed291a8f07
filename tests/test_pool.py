"""The pool end to end, in every mode: the same behaviour from process, thread, inline runners."""

import asyncio
import os
import signal
import sys
import time
import types
from pathlib import Path

import psutil
import pytest

from chaos import set_failpoints, wait_until
from handlers import append_and_echo, append_then_fail_on_bad, hang_on_request
from system import (
    DataDirError,
    PayloadError,
    Pool,
    PoolBroken,
    PoolClosed,
    RestartPolicy,
    SyncPool,
    UsageError,
    read_events,
)
from system._demo import append_payload
from system._intake import IntakeLog

MODES = ["process", "thread", "inline"]


@pytest.mark.parametrize("mode", MODES)
async def test_submit_drain_query_exactly_once(tmp_path: Path, mode: str) -> None:
    async with Pool(append_and_echo, tmp_path, workers=2, mode=mode, partitions=8) as pool:
        items = [(f"k{i % 10}", i, f"m{i}") for i in range(2000)]
        offsets = await pool.submit_many(items[:1000])
        assert offsets == list(range(1000))
        for key, payload, mid in items[1000:1010]:
            await pool.submit(key, payload, mid)
        await pool.submit_many(items[1010:])
        # Resubmitting ids is a no-op that answers the first offsets.
        assert await pool.submit_many(items[5:8]) == [5, 6, 7]
        assert await pool.submit("k0", "other payload", "m0") == 0
        await pool.drain(timeout=60)
        for k in range(10):
            assert await pool.query(f"k{k}") == list(range(k, 2000, 10))
        assert pool.result("m21") == (True, 42)
        assert pool.result("nope") == (False, None)
        assert await pool.forget("m21", "nope") == 1  # read, then forgotten: the outbox stays small
        assert pool.result("m21") == (False, None)
        stats = pool.stats()
        assert stats["submitted"] == stats["committed"] == 2000
        assert stats["outstanding"] == 0 and stats["mode"] == mode
    # Reopen: the committed state is there, offsets continue, and nothing is replayed twice.
    async with Pool(append_and_echo, tmp_path, workers=3, mode=mode) as pool:
        assert pool.partitions == 8
        assert await pool.submit("k1", 2000) == 2000
        await pool.drain(timeout=60)
        assert await pool.query("k1") == [*range(1, 2000, 10), 2000]
        assert await pool.query("never") is None


@pytest.mark.parametrize("mode", MODES)
async def test_events_are_logged_with_kind_time_worker_and_pid(tmp_path: Path, mode: str) -> None:
    async with Pool(append_payload, tmp_path, workers=2, mode=mode, partitions=4) as pool:
        stream = pool.events()
        first = asyncio.ensure_future(anext(stream))
        await pool.submit("a", 1)
        await pool.drain(timeout=30)
        assert (await asyncio.wait_for(first, 10))["kind"] in {"started", "ready", "checkpointed"}
        await stream.aclose()
    events = read_events(tmp_path)
    kinds = [e["kind"] for e in events]
    for kind in ("opened", "started", "ready", "checkpointed", "drained", "stopped"):
        assert kind in kinds
    assert kinds[-1] == "stopped"
    for e in events:
        assert {"kind", "ts", "mono", "worker", "pid"} <= set(e)
        assert abs(e["ts"] - time.time()) < 120
    workers = {e["worker"]: e["pid"] for e in events if e["kind"] == "ready"}
    assert set(workers) == {0, 1}
    if mode == "process":
        assert os.getpid() not in workers.values()
    else:
        assert set(workers.values()) == {os.getpid()}


@pytest.mark.parametrize("mode", MODES)
async def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, mode: str) -> None:
    async with Pool(append_payload, tmp_path, workers=1, mode=mode, partitions=4) as pool:
        await pool.submit("a", 1, "m1")
        with pytest.raises(
            PayloadError,
            match=r"payload of type builtins.function .* cannot be "
            r"pickled .*nothing was written",
        ):
            await pool.submit("a", lambda: 1)
        with pytest.raises(PayloadError):
            await pool.submit_many([("a", 2), ("a", lambda: 1)])  # all or nothing
        with pytest.raises(UsageError, match="key must be a str, got int"):
            await pool.submit(3, 1)
        with pytest.raises(UsageError, match="id must be a str or None"):
            await pool.submit("a", 1, 7)
        await pool.drain(timeout=30)
        assert await pool.query("a") == [1]
    with pytest.raises(PoolClosed):
        await pool.submit("a", 1)
    log = IntakeLog(tmp_path, None)
    assert log.count() == 1
    log.close()


def test_settings_are_checked_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot be sent to worker processes.*mode='thread'"):
        Pool(lambda s, m: s, tmp_path)
    with pytest.raises(UsageError, match="mode must be one of auto, process, thread, inline"):
        Pool(append_payload, tmp_path, mode="fibre")
    with pytest.raises(UsageError, match=r"partitions must be an int >= workers \(4\)"):
        Pool(append_payload, tmp_path, partitions=2)
    with pytest.raises(UsageError, match="workers must be an int >= 1"):
        Pool(append_payload, tmp_path, workers=0)


async def test_backpressure_bounds_outstanding_messages(tmp_path: Path) -> None:
    async with Pool(
        append_payload,
        tmp_path,
        workers=1,
        mode="inline",
        partitions=4,
        max_outstanding=50,
        max_inflight=10,
        max_batch=5,
    ) as pool:
        high = 0

        async def watch() -> None:
            nonlocal high
            while True:
                high = max(high, pool.stats()["outstanding"])
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        for i in range(400):
            await pool.submit(f"k{i % 3}", i)
        await pool.drain(timeout=30)
        watcher.cancel()
        assert high <= 50
        assert await pool.query("k0") == list(range(0, 400, 3))


async def test_sigkill_of_a_worker_is_seen_at_once_and_replayed(tmp_path: Path) -> None:
    async with Pool(
        append_payload, tmp_path, workers=2, partitions=8, checkpoint_interval=0.5
    ) as pool:
        await pool.submit_many([(f"k{i % 5}", i, f"m{i}") for i in range(5000)])
        pid = pool.worker_pids()[0]
        await pool.query("k0")  # applied, not yet committed (the interval is 0.5 s)
        killed_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        os.kill(pid, signal.SIGKILL)
        await pool.submit_many([(f"k{i % 5}", i, f"m{i}") for i in range(5000, 6000)])
        await pool.drain(timeout=60)
        for k in range(5):
            assert await pool.query(f"k{k}") == list(range(k, 6000, 5))
        assert pool.stats()["restarts"] == 1
    events = read_events(tmp_path)
    died = next(e for e in events if e["kind"] == "died")
    assert died["pid"] == pid and died["signal"] == "SIGKILL(-9)" and died["exitcode"] == -9
    # Seen by its sentinel (typically a few milliseconds), not by the hang detector (10 s):
    assert died["mono"] - killed_at < 5.0 and not any(e["kind"] == "hung" for e in events)
    restarted = next(e for e in events if e["kind"] == "restarted")
    assert restarted["worker"] == died["worker"] and restarted["pid"] != pid


async def test_past_the_restart_intensity_the_pool_steps_down_to_threads(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=2, window=60.0, base=0.001)
    async with Pool(append_payload, tmp_path, workers=1, partitions=4, restart=policy) as pool:
        for _ in range(3):
            pid = await asyncio.to_thread(wait_until, pool.worker_pids, 30, "a worker")
            os.kill(pid[0], signal.SIGKILL)
            await asyncio.to_thread(
                wait_until, lambda p=pid[0]: pool.worker_pids() != [p], 30, "the death seen"
            )
        await pool.submit("a", 1)
        await pool.drain(timeout=30)
        assert await pool.query("a") == [1]
        assert pool.mode == "thread"
    (step,) = [e for e in read_events(tmp_path) if e["kind"] == "degraded"]
    assert step["was_mode"] == "process" and step["mode"] == "thread"
    assert "restart intensity is exceeded: 2 restarts" in step["reason"]


async def test_with_no_rung_left_the_pool_reports_itself_broken(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=2, window=60.0, base=0.001)
    set_failpoints("worker.recv=raise(RuntimeError, the worker's loop broke)")
    try:
        async with Pool(
            append_payload, tmp_path, workers=1, partitions=4, restart=policy, mode="inline"
        ) as pool:
            await pool.submit("a", 1)
            with pytest.raises(PoolBroken, match=r"restart intensity is exceeded: 2 restarts"):
                await pool.drain(timeout=30)
    finally:
        set_failpoints("", replace=True)
    assert read_events(tmp_path)[-2]["kind"] == "gave_up"


def test_sync_facade_for_scripts(tmp_path: Path) -> None:
    with SyncPool(append_and_echo, tmp_path, workers=2, partitions=4) as pool:
        assert pool.submit("a", 1, "x") == 0
        assert pool.submit_many([("a", 2), ("b", 3)]) == [1, 2]
        pool.drain(timeout=30)
        assert pool.query("a") == [1, 2]
        assert pool.result("x") == (True, 2)
        assert len(pool.worker_pids()) == 2
        assert pool.stats()["committed"] == 3
        with pytest.raises(PayloadError):
            pool.submit("a", lambda: 0)


async def test_a_data_dir_serves_one_pool_at_a_time(tmp_path: Path) -> None:
    async with Pool(append_payload, tmp_path, workers=1, mode="inline", partitions=4):
        other = Pool(append_payload, tmp_path, workers=1, mode="inline")
        with pytest.raises(DataDirError, match=rf"in use by another pool \(pid {os.getpid()}\)"):
            await other.start()
    async with Pool(append_payload, tmp_path, workers=1, mode="inline") as again:
        assert again.partitions == 4


async def test_a_worker_that_cannot_start_steps_down_with_the_likely_cause(
    tmp_path: Path,
) -> None:
    # A handler whose module exists in this process only: worker processes cannot unpickle it,
    # threads can.
    ghost = types.ModuleType("ghost_handlers")
    exec("def handle(state, message):\n    return (state or 0) + 1", ghost.__dict__)
    sys.modules["ghost_handlers"] = ghost
    try:
        async with Pool(ghost.handle, tmp_path, workers=1, partitions=4) as pool:
            await pool.submit("a", 1)
            await pool.drain(timeout=60)
            assert await pool.query("a") == 1
            assert pool.mode == "thread"
    finally:
        del sys.modules["ghost_handlers"]
    events = read_events(tmp_path)
    assert [e["kind"] for e in events].count("died") == 5
    (step,) = [e for e in events if e["kind"] == "degraded"]
    assert "died before it was ready 5 times in a row" in step["reason"]
    assert "importable in a fresh process" in step["reason"]


async def test_close_kills_a_worker_that_does_not_stop_within_grace(tmp_path: Path) -> None:
    pool = Pool(hang_on_request, tmp_path, workers=2, partitions=4)
    await pool.start()
    other = next(
        k
        for k in map(str, range(99))
        if pool._crew.supervisor_of(k) is not pool._crew.supervisor_of("a")
    )
    await pool.submit_many([("a", 1), ("a", "hang"), (other, 2)])
    slot = pool._crew.supervisor_of("a")
    hung = (await asyncio.to_thread(wait_until, lambda: slot.handle, 30, "the worker")).pid
    await asyncio.to_thread(
        wait_until, lambda: pool.stats()["committed"] >= 1, 30, "the other messages committed"
    )
    t0 = time.monotonic()
    await pool.close(grace=1.0)
    assert time.monotonic() - t0 < 1.0 + 5.0
    log = read_events(tmp_path)
    assert any(e["kind"] == "killed" and e["pid"] == hung for e in log)
    assert any(
        e["kind"] == "died" and e["pid"] == hung and e["signal"] == "SIGKILL(-9)" for e in log
    )
    assert log[-1]["kind"] == "stopped" and log[-1]["drained"] is False
    # Nothing was lost: the message that hung is still in the log for the next pool.
    async with Pool(append_payload, tmp_path, workers=2) as again:
        await again.drain(timeout=30)
        assert await again.query("a") == [1, "hang"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_raising_handler_leaves_no_trace_in_the_state(tmp_path: Path, mode: str) -> None:
    async with Pool(append_then_fail_on_bad, tmp_path, workers=1, mode=mode, partitions=4) as pool:
        await pool.submit_many([("k", 1), ("k", "bad", "the-bad-one"), ("k", 2)])
        await pool.drain(timeout=30)
        assert await pool.query("k") == [1, 2]
        assert [d["id"] for d in pool.dead_letters()] == ["the-bad-one"]
    async with Pool(append_payload, tmp_path, workers=1, mode=mode) as pool:
        assert await pool.query("k") == [1, 2]  # and the committed state agrees


async def test_close_answers_every_waiter(tmp_path: Path) -> None:
    policy = RestartPolicy(base=30.0, cap=30.0, jitter=0.0)  # a dead worker stays dead here
    pool = Pool(append_payload, tmp_path, workers=2, partitions=4, restart=policy)
    await pool.start()
    await pool.submit("a", 0)
    await pool.drain(timeout=30)
    slot = pool._crew.supervisor_of("a")
    os.kill(slot.handle.pid, signal.SIGKILL)
    await asyncio.to_thread(wait_until, lambda: not slot.ready.is_set(), 30, "the death seen")
    big = asyncio.create_task(pool.submit_many([(f"k{i}", i) for i in range(100_000)]))
    query = asyncio.create_task(pool.query("a", timeout=None))  # waits for the restart
    await pool.submit("a", 1)  # for the dead worker: drains cannot finish
    drain = asyncio.create_task(pool.drain())
    await asyncio.sleep(0.05)
    await pool.close(grace=0.5)
    _, pending = await asyncio.wait({big, query, drain}, timeout=10)
    assert not pending, "a waiter was left waiting after close()"
    assert isinstance(query.exception(), PoolClosed)
    assert isinstance(drain.exception(), PoolClosed)
    # The big submit was taken by the intake writer: durable, so it is answered with offsets.
    assert big.exception() is None and len(big.result()) == 100_000


async def test_a_failed_start_holds_nothing(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.db").write_bytes(b"garbage" * 1000)
    for _ in range(2):  # the second attempt is not refused as "in use": nothing was held
        with pytest.raises(DataDirError, match="not a usable checkpoint store"):
            await Pool(append_payload, tmp_path, workers=1, mode="inline").start()


async def test_a_close_whose_caller_is_cancelled_still_closes(tmp_path: Path) -> None:
    pool = Pool(append_payload, tmp_path, workers=1, mode="inline", partitions=4)
    await pool.start()
    await pool.submit("k", 1)
    first = asyncio.create_task(pool.close())
    await asyncio.sleep(0)
    first.cancel()  # as a harness's timeout would: the close goes on
    second = asyncio.create_task(pool.close())  # waits for the same close
    await asyncio.wait_for(second, 30)
    assert pool.closed and read_events(tmp_path)[-1]["kind"] == "stopped"
    assert [e["kind"] for e in read_events(tmp_path)].count("stopped") == 2  # worker, pool


async def test_a_killed_worker_is_replaced_by_the_warm_spare(tmp_path: Path) -> None:
    async with Pool(append_payload, tmp_path, workers=2, partitions=4) as pool:
        spare = await asyncio.to_thread(wait_until, lambda: pool.stats()["spare"], 30, "a spare")
        assert spare not in pool.worker_pids()  # not a worker until it serves a lane
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.to_thread(wait_until, lambda: spare in pool.worker_pids(), 30, "taken")
        await pool.submit_many([(f"k{i}", i) for i in range(100)])
        await pool.drain(timeout=30)
        nxt = await asyncio.to_thread(wait_until, lambda: pool.stats()["spare"], 30, "another")
        assert nxt not in (spare, victim)
    ready = [e for e in read_events(tmp_path) if e["kind"] == "ready" and e["pid"] == spare]
    assert len(ready) == 1 and ready[0]["startup"] < 5.0
    assert not psutil.pid_exists(nxt) or psutil.Process(nxt).status() == "zombie"


@pytest.mark.parametrize("mode", ["process", "thread"])
async def test_a_workers_first_batch_is_committed_without_waiting_for_the_timer(
    tmp_path: Path, mode: str
) -> None:
    """What waited for a worker to start is committed at once; later work waits for the timer
    (here 60 s) or a drain. Before, the first batch waited for the timer too: a kill as the
    pool started recovered in its start-up plus a whole checkpoint_interval."""
    settings = {"workers": 1, "mode": mode, "checkpoint_interval": 60.0}
    async with Pool(append_and_echo, tmp_path, **settings) as pool:
        await pool.submit_many([("k", i, f"m{i}") for i in range(10)])
        async with asyncio.timeout(30):
            while pool.stats()["committed"] < 10:
                await asyncio.sleep(0.005)
        await pool.submit_many([("k", i, f"n{i}") for i in range(10)])
        await asyncio.sleep(0.3)
        assert pool.stats()["committed"] == 10  # on the timer, or a drain's flush
        await pool.drain(timeout=30)
        assert pool.stats()["committed"] == 20


async def test_a_worker_that_committed_work_is_restarted_without_backoff(tmp_path: Path) -> None:
    """Backoff is for a crash loop: killed after each round of committed work, a worker comes
    back after the base delay every time (it was 0.2, 0.4, 0.8 s: a doubling streak)."""
    policy = RestartPolicy(base=0.2, cap=10.0, jitter=0.0, reset_after=1000.0)
    async with Pool(append_and_echo, tmp_path, workers=1, restart=policy) as pool:
        for r in range(3):
            await pool.submit_many([("k", i, f"m{r}-{i}") for i in range(10)])
            await pool.drain(timeout=30)
            (victim,) = pool.worker_pids()
            os.kill(victim, signal.SIGKILL)
            async with asyncio.timeout(30):
                while pool.worker_pids() in ([], [victim]):
                    await asyncio.sleep(0.005)
        await pool.drain(timeout=30)
    delays = [e["delay"] for e in read_events(tmp_path) if e["kind"] == "restarted"]
    assert delays == [0.2, 0.2, 0.2]
