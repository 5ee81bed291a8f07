"""The network matrix's fault families: for a target across test hosts (``"hosts"``).

Each runs as a cell of the matrix (``chaos._matrix.run_cell``). All but the last make every
worker busy with more work queued, then inject one fault between hosts (``chaos._network``),
healed after ``PARTITION`` s; then more work and a probe, judged on what the harness read back:

- ``partition_worker``: a busy worker's host cut off from the coordinator (the scheduler, or
  the broker) -- it still reaches the store, as a worker cut from its scheduler still reaches
  its database;
- ``partition_isolated``: a busy worker's host cut off from every other host, the harness's
  end (and the store there) included;
- ``partition_coordinator``: the coordinator's host cut off from every worker host (the
  harness still reaches it: work goes on being submitted);
- ``partition_one_way``: what the coordinator sends to a busy worker's host is dropped, what
  that host sends to the coordinator arrives (an asymmetric partition);
- ``host_kill``: a busy worker's host killed whole -- every process in it SIGKILLed at once, as
  a machine that lost its power (it does not come back within the cell);
- ``host_freeze``: every process of a busy worker's host stopped for ``FROZEN`` s;
- ``kill_again``: one task's worker SIGKILLed each time the task begins, ``KILLS`` times.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._errors import ChaosError
from ._guard import TargetHung

# How long a partition or a freeze holds: past what a lost peer takes to be noticed where a
# team shortened the timers (Dask: TCP timeout 12 s; Celery: visibility timeout 5 s), short of
# what it takes with the engines' own (Dask's TCP timeout, 30 s: measured 25 s; an hour) -- so
# that each cell's outcome is one, not a race with a timer.
PARTITION = 20.0
FROZEN = 20.0
KILLS = 4  # one past Dask's allowed-failures (3)
AGAIN_WAIT = 15.0  # seconds for a killed task to begin again before it counts as given up


def _hosts(cell: Any) -> Any:
    from ._matrix import NotApplicable

    hosts = getattr(cell.target, "hosts", None)
    if "hosts" not in cell.target.capabilities or hosts is None:
        raise NotApplicable("it does not run across test hosts")
    return hosts


async def _busy_host(cell: Any) -> str:
    """Every worker busy; the host of one running a task now (the victim)."""
    await cell.busy()
    return str(cell.target.host_of(cell.pids[0]))


async def _held(cell: Any, a: Any, b: Any = None, *, one_way: bool = False) -> float:
    """``a`` cut off from ``b`` (see ``chaos.partitioned``) for ``PARTITION`` s, then healed."""
    with cell.chaos.partitioned(_hosts(cell), a, b, one_way=one_way) as fault:
        await asyncio.sleep(PARTITION)
    return float(fault.mono)


async def partition_worker(cell: Any) -> float:
    _hosts(cell)
    return await _held(cell, await _busy_host(cell), cell.target.coordinator)


async def partition_isolated(cell: Any) -> float:
    _hosts(cell)
    return await _held(cell, await _busy_host(cell))


async def partition_coordinator(cell: Any) -> float:
    _hosts(cell)
    await cell.busy()
    return await _held(cell, cell.target.coordinator, cell.target.worker_hosts())


async def partition_one_way(cell: Any) -> float:
    _hosts(cell)
    return await _held(cell, await _busy_host(cell), cell.target.coordinator, one_way=True)


async def host_kill(cell: Any) -> float:
    hosts = _hosts(cell)
    host = await _busy_host(cell)
    fault = await asyncio.to_thread(cell.chaos.host_killed, hosts, host)
    return float(fault.mono)


async def host_freeze(cell: Any) -> float:
    hosts = _hosts(cell)
    host = await _busy_host(cell)
    with cell.chaos.host_frozen(hosts, host) as fault:
        await asyncio.sleep(FROZEN)
    return float(fault.mono)


async def kill_again(cell: Any) -> float:
    """One task's worker SIGKILLed each time the task begins -- ``KILLS`` times, as a message
    that crashes whatever runs it would: does the engine run it again and again, give up on
    it (Dask: ``KilledWorker`` after ``allowed-failures``), or lose it at the first death?
    The series ends early when the task does not begin again within ``AGAIN_WAIT`` s (the
    engine gave up on it, or lost it); how many kills there were is in the cell's line. The
    fault's time is the last kill's."""
    chaos, kills, last = cell.chaos, 0, None
    seconds = 3.0
    await chaos.submit("again", chaos.carry("again", fault=False, sleep=seconds), key="again")
    await chaos.traffic(6, prefix="queued", keys=4)
    seen = 0
    while kills < KILLS:
        deadline = time.monotonic() + AGAIN_WAIT
        while len(begun := chaos.carried("again", "sleep")) <= seen:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        if len(begun) <= seen:  # not begun again: given up on, or lost
            if last is None:
                raise TargetHung(f"the task never began within {AGAIN_WAIT:g} s")
            break
        seen = len(begun)
        pid, began = begun[-1]
        if pid not in cell.target.worker_pids():
            raise ChaosError(f"the task began in pid {pid}, which is none of the target's workers")
        fault = chaos.kill(pid)
        if fault.mono - began > 0.8 * seconds:  # it must die under the task, not after it
            raise ChaosError(f"the kill came {fault.mono - began:.1f} s after the task began")
        kills, last = kills + 1, fault.mono
    cell.seen["kills"] = kills
    assert last is not None
    return last


NETWORK_FAMILIES = {
    "partition_worker": partition_worker,
    "partition_isolated": partition_isolated,
    "partition_coordinator": partition_coordinator,
    "partition_one_way": partition_one_way,
    "host_kill": host_kill,
    "host_freeze": host_freeze,
    "kill_again": kill_again,
}
