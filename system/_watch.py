"""The watch over the workers: hung (progress cells) and memory (RSS), every heartbeat.

Every ``heartbeat_interval`` each supervisor's progress cell is compared with what was seen
before (``_progress``, ``_watchdog``): a worker with no progress for ``hang_timeout`` -- or not
ready ``start_timeout`` after it started -- is hung, dumped and stopped (``_hang``). Every
``memory_interval``, process workers' RSS is sampled against ``memory_soft_limit``: over it, or
trending to it, a worker gets SIGUSR1 and stops after its current message (a recycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

import psutil

from ._config import PoolConfig
from ._events import monotonic
from ._frames import ID, OFFSET
from ._hang import stop_hung
from ._runners import WorkerHandle
from ._supervisor import Supervisor


async def watch(
    config: PoolConfig,
    supervisors: Callable[[], list[Supervisor]],
    mode: Callable[[], str],
    tick: Callable[[float], None],
) -> None:
    """Check every supervisor's worker every heartbeat, its memory every memory interval."""
    next_memory = 0.0
    soft = config.memory_soft_limit
    while True:
        await asyncio.sleep(config.heartbeat_interval)
        now = monotonic()
        for sup in supervisors():
            check(sup, now)
        tick(now)
        if soft and mode() == "process" and now >= next_memory:
            next_memory = now + config.memory_interval
            for sup in supervisors():
                check_memory(sup, now, soft)


def check(sup: Supervisor, now: float) -> None:
    """Is the worker making progress (or starting in time)?"""
    handle, c = sup.handle, sup.crew.config
    if handle is None:
        return
    seen = sup.cell.read()
    if not sup.was_ready:
        # Starting: allowed a while longer (imports, claiming partitions), but not for ever --
        # a worker frozen or stuck before "ready" is hung too.
        if now - sup.started_at > c.start_timeout and not sup.hanging:
            _hung(sup, handle, now - sup.started_at)
        sup.liveness.reset(now, (seen[1], seen[2]))
        return
    sup.liveness.observe(now, (seen[1], seen[2]))
    if sup.liveness.hung(now) and not sup.hanging:
        _hung(sup, handle, sup.liveness.silence(now))


def _hung(sup: Supervisor, handle: WorkerHandle, silence: float) -> None:
    sup.hanging = True
    crew = sup.crew
    offset = sup.cell.read()[0]
    mid = next((m[ID] for m in sup.lane.inflight if m[OFFSET] == offset), None)
    task = asyncio.create_task(
        stop_hung(
            handle,
            sup.index,
            data_dir=crew.data_dir,
            events=crew.events,
            silence=silence,
            hang_timeout=crew.config.hang_timeout,
            hang_grace=crew.config.hang_grace,
            offset=offset,
            mid=mid,
        )
    )
    crew.side_tasks.add(task)
    task.add_done_callback(crew.side_tasks.discard)


def check_memory(sup: Supervisor, now: float, soft_limit: int) -> None:
    """Over ``soft_limit``, or trending to it: recycle the worker."""
    handle = sup.handle
    if handle is None or not sup.was_ready or sup.recycling or sup.hanging:
        return
    try:
        rss = psutil.Process(handle.pid).memory_info().rss
    except psutil.Error:
        return
    sup.memory.add(now, rss)
    verdict = sup.memory.verdict(soft_limit)
    if verdict is None:
        return
    sup.recycling = (
        "rss over memory_soft_limit"
        if verdict == "over"
        else f"rss trend crosses memory_soft_limit within {sup.memory.horizon} s"
    )
    sup.crew.events.emit(
        "recycled",
        sup.index,
        handle.pid,
        reason=sup.recycling,
        rss=rss,
        soft_limit=soft_limit,
        slope_bytes_per_s=round(sup.memory.slope()),
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(handle.pid, signal.SIGUSR1)  # stop after the current message
