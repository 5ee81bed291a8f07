"""The task-queue targets themselves: a supervised real worker, missing work placed from the
broker's own lists, and nothing left behind -- no worker, no Redis -- once stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import psutil
import pytest

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="apt-get install redis-server"),
    pytest.mark.asyncio,
]
celery = pytest.importorskip("celery", reason="pip install 'chaosgate[engines]'")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def _until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


async def test_a_stopped_target_leaves_no_worker_and_no_redis(tmp_path) -> None:
    from chaos.engines import CeleryTarget

    target = CeleryTarget(tmp_path, workers=2)
    await target.start()
    try:
        await _until(lambda: len(target.worker_pids()) == 2)
        procs = [target.pid, *target.worker_pids(), target.broker.pid, target.store.pid]
        await target.submit("k", None, "m1")
        assert (await target.committed()) == {"k": ["m1"]}
    finally:
        await target.stop()
    assert not [p for p in procs if _alive(p)], "a process outlived stop()"
    assert target.restarts == 0


async def test_a_killed_worker_is_started_again_and_serves(tmp_path) -> None:
    from chaos.engines import CeleryTarget

    target = CeleryTarget(tmp_path, workers=1)
    await target.start()
    try:
        first = target.pid
        os.kill(first, signal.SIGKILL)  # our own child, by pid
        await _until(lambda: target.restarts == 1 and target.pid != first and target.worker_pids())
        await target.submit("k", None, "m1")
        assert (await target.committed()) == {"k": ["m1"]}
    finally:
        await target.stop()
    assert not _alive(first)


async def test_missing_work_is_placed_from_the_brokers_own_lists(tmp_path, monkeypatch) -> None:
    """Placed by what the broker holds: queued; a broker that does not answer is "unknown", never
    "nowhere" (which is lost). (No worker here: a worker stopped with a pop under way holds a
    message in its socket, where no list shows it -- the reason committed() waits a second of
    "nowhere" before it calls anything lost.)"""
    from chaos.engines import CeleryTarget

    target = CeleryTarget(tmp_path, workers=1, collect_timeout=0.5)
    monkeypatch.setattr(target, "_spawn", lambda: None)  # the broker and the store only
    await target.start()
    try:
        await target.submit("k", None, "m1")
        assert (await target.committed()) == {}
        assert target.where_left == {"m1": "queued"} and target.outstanding == ["m1"]
        assert target.where(["m1", "never-sent"]) == {"m1": "queued", "never-sent": "nowhere"}
        target.broker.signal(signal.SIGSTOP)
        try:
            assert target.where(["m1"]) == {"m1": "unknown"}
        finally:
            target.broker.signal(signal.SIGCONT)
    finally:
        await target.stop()
