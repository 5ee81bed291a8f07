"""Scenario: the whole pool -- kill -9 of its process group or of its server alone, and SIGTERM /
SIGINT -- judged on what the harness itself saw acknowledged.

Each test serves the run's target (``--chaos-target``; by default the system pool, whose
``mode`` parameter the other targets skip) from a child process in its own process group
(``chaos._served.ServedTarget``) and sends it the list-append workload from 16 submitters at
once (each owning its keys), paced at a few thousand messages per second. The fault comes once
2,000 messages are acknowledged and -- where the target can tell (``committed_now``) -- some are
committed while others acknowledged are not yet, right after a load spike (``until_outstanding``:
unpaced traffic for 200 more acknowledgements), so that work is in flight even in a pool that
keeps up with paced traffic. The traffic ends when the target is gone: the submits it was
waiting for are recorded unacknowledged.

Verdict 1, judged against the SLO, comes before anything is resubmitted: a new server recovers
the same data dir, and every id the harness saw acknowledged must be committed, once, in order
(a pool that acknowledges before the message is durable fails here). Then the harness does
what a real producer would -- resubmits the ids it never saw acknowledged, with their keys and
payloads -- and the final state must hold everything acknowledged exactly once, in order per
key. No process of the pool may be left. (Repeated kill -9 of workers during a run is
``test_sigkill_workers.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chaos import Scenario, descendants, wait_gone
from chaos._guard import stop_all
from chaos._served import (
    ServedTarget,
    TargetGone,
    pipelined_traffic,
    running,
    until_outstanding,
)
from chaos._target import TargetRefused
from chaos.pytest_plugin import chosen_target, is_system_pool

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]  # async: whatever asyncio_mode
SLO = pytest.mark.chaos_slo(lost=0, duplicated=0)
# At most this many messages, per second (from 16 submitters at once; unpaced from just before
# the fault): the traffic outlasts the wait for the fault, and ends there.
TOTAL, RATE = 60_000, 4_000
BEFORE_FAULT = 2_000  # acknowledged before the fault
GRACE, SLACK = 10.0, 5.0  # the system pool's close() grace; slack for a loaded machine


@pytest.fixture
def spec(request: pytest.FixtureRequest) -> str | None:
    """The run's target spec (None: the system pool)."""
    return chosen_target(request.config)


@pytest_asyncio.fixture
async def serve(
    tmp_path: Path, spec: str | None, chaos: Scenario
) -> AsyncIterator[Callable[..., Any]]:
    """``await serve(mode=...)``: a started ServedTarget of the run's target in a fresh data
    dir, every call into it bounded by the run's ``target_timeout`` (``chaos.guard``);
    ``await serve(again=target)``: another server on ``target``'s data dir. All stopped (or
    their process groups killed) at teardown."""
    started: list[Any] = []

    async def start(*, mode: str | None = None, again: ServedTarget | None = None):
        if again is not None:
            data_dir, options = again.data_dir, again.options
        else:
            data_dir, options = tmp_path / f"d{len(started)}", {"workers": 4}
            if mode is not None and is_system_pool(spec):
                options["mode"] = mode
        bound = chaos.target_timeout  # its own stop gives up (and kills) within the bound
        served = ServedTarget(
            spec, data_dir, timeout=bound, ack_timeout=bound, stop_timeout=bound * 0.7, **options
        )
        target = chaos.guard(served, kill=served.kill_whole)
        started.append(target)
        await target.start()
        return target

    yield start
    await stop_all(started)


@dataclass
class Loaded:
    traffic: asyncio.Task[None]  # the paced traffic, running
    workers: list[int]  # the target's workers, once it had ``workers`` of them
    tree: set[int]  # the server and its descendants
    outstanding: int | None  # acknowledged messages uncommitted at the last read (None: unknown)


@contextlib.asynccontextmanager
async def loaded(
    chaos: Any, served: ServedTarget, workers: int = 0, work: float | None = None
) -> AsyncIterator[Loaded]:
    """``served`` under paced traffic, at a moment when a fault can do harm: ``BEFORE_FAULT``
    messages acknowledged, then ``until_outstanding`` (a load spike); inject the fault at once.
    The traffic is cancelled if the block ends before it. ``work``: seconds each message keeps
    its worker busy, so that acknowledged work waits to be applied even in a fast pool."""
    chaos.target = served
    burst = asyncio.Event()  # set just before the fault: a load spike
    traffic = pipelined_traffic(served, chaos.history, TOTAL, rate=RATE, burst=burst, work=work)
    async with running(traffic) as task:
        if workers:
            await chaos.workers(workers)
        await acknowledged(chaos, task)
        pids = served.worker_pids()
        tree = tree_of(served)
        outstanding = await until_outstanding(served, chaos.history, burst=burst)
        yield Loaded(task, pids, tree, outstanding)


def uncommitted(outstanding: int | None) -> str:
    if outstanding is None:
        return ""
    return f"; {outstanding} acknowledged messages uncommitted at the last read before it"


async def acknowledged(chaos: Any, traffic: asyncio.Task[None]) -> None:
    """Wait until ``BEFORE_FAULT`` messages are acknowledged."""
    deadline = time.monotonic() + 60.0
    while (acked := sum(s.acked for s in chaos.history.submits)) < BEFORE_FAULT:
        if traffic.done():
            traffic.result()
            raise AssertionError("the traffic ended before the fault")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {acked} messages acknowledged after 60 s")
        await asyncio.sleep(0.01)


async def traffic_ended(traffic: asyncio.Task[None]) -> None:
    """The traffic ends because the target is gone: its last submits were not acknowledged."""
    try:
        await asyncio.wait_for(traffic, 30.0)
    except TargetRefused as e:
        assert isinstance(e.__cause__, TargetGone), f"not because it was gone: {e!r}"


async def judged_after_recovery(chaos: Any, serve: Callable[..., Any], first: Any) -> None:
    """Verdict 1 on a new server of ``first``'s data dir, before any resubmission (judged);
    then the unacknowledged ids resubmitted, and the final state checked."""
    acked = sum(s.acked for s in chaos.history.submits)
    assert acked >= BEFORE_FAULT, f"only {acked} acknowledged before the fault"
    again = await serve(again=first)
    chaos.target = again
    await chaos.verify(again)  # verdict 1

    resubmitted = await resubmit_unacknowledged(chaos, again)
    dead = again.dead_lettered() if "dead_letters" in again.capabilities else ()
    final = chaos.history.check(await again.committed(), dead)
    assert final.ok, f"after resubmitting {resubmitted}: {final.summary()} {final.details()}"
    ids = {s.id for s in chaos.history.submits}
    assert final.committed + len(final.dead_lettered) == len(ids), final.summary()


async def resubmit_unacknowledged(chaos: Any, target: Any) -> int:
    """What a producer does after a crash: submit again, with the same key and payload, every
    id it never saw acknowledged (recorded as acknowledged once it is)."""
    acked = {s.id for s in chaos.history.submits if s.acked}
    todo = {s.id: s for s in chaos.history.submits if s.id not in acked}
    for s in todo.values():
        await target.submit(s.key, int(s.id.removeprefix("m")), s.id)  # payload i of m<i>
        chaos.history.submitted(s.id, s.key)
    return len(todo)


def tree_of(target: ServedTarget) -> set[int]:
    return {target.pid} | {p.pid for p in descendants(target.pid)}


def system_mode(mode: str) -> pytest.MarkDecorator:
    """A mode of the system pool's own: against another target, that case is not its."""
    return pytest.mark.chaos_system_pool(f"mode={mode}", "the [process] case, its own way")


@SLO
@pytest.mark.parametrize(
    "mode", ["process", *(pytest.param(m, marks=system_mode(m)) for m in ("thread", "inline"))]
)
async def test_sigkill_of_the_whole_process_group_then_rerun(serve, chaos, spec, mode: str) -> None:
    served = await serve(mode=mode)
    async with loaded(chaos, served, work=0.001) as load:  # a backlog when the kill comes
        fault = chaos.plan("kill", f"process group {served.pgid}", detail="SIGKILL")
        killed = served.kill_whole(signal.SIGKILL, known=load.tree)  # returns once all are gone
        fault.fire(killed.mono, killed.ts)
        fault.effect = f"all {len(killed.detail['pids'])} processes of the group gone"
        fault.effect += uncommitted(load.outstanding)
        await traffic_ended(load.traffic)
        assert served.returncode == -signal.SIGKILL
        assert not wait_gone(load.tree, 5.0)
    await judged_after_recovery(chaos, serve, served)


@SLO
async def test_sigkill_of_the_server_alone_takes_its_workers_down(serve, chaos, spec) -> None:
    served = await serve(mode="process")
    async with loaded(chaos, served, workers=4 if is_system_pool(spec) else 1) as load:
        assert load.workers and set(load.workers) <= load.tree
        fault = chaos.plan("kill", f"server pid {served.pid}", detail="SIGKILL to the server alone")
        killed = served.kill_server(signal.SIGKILL)  # not its group
        fault.fire(killed.mono, killed.ts)
        await traffic_ended(load.traffic)
        assert await served.wait_exit(10.0) == -signal.SIGKILL
        left = wait_gone(load.workers, 5.0)
        assert not left, f"orphaned workers {sorted(left)} of the killed server"
        fault.effect = f"the server and its {len(load.workers)} workers gone"
        fault.effect += uncommitted(load.outstanding)
        assert not wait_gone(load.tree, 5.0)
    await judged_after_recovery(chaos, serve, served)


@SLO
@pytest.mark.parametrize(
    ("mode", "how"),
    [
        ("process", "SIGTERM"),
        ("process", "SIGINT to group"),
        pytest.param("thread", "SIGTERM", marks=system_mode("thread")),
        pytest.param("inline", "SIGTERM", marks=system_mode("inline")),
    ],
)
async def test_sigterm_drains_and_exits_within_grace(serve, chaos, spec, mode, how) -> None:
    served = await serve(mode=mode)
    async with loaded(chaos, served) as load:
        t0 = time.monotonic()
        if how == "SIGTERM":
            signum = signal.SIGTERM
            fault = chaos.plan("terminate", f"server pid {served.pid}", detail="SIGTERM")
            sent = served.terminate()
            fault.fire(sent.mono, sent.ts)
            code = await served.wait_exit(GRACE + SLACK)
        else:  # what a Ctrl-C in a terminal does; returns once the whole group is gone
            signum = signal.SIGINT
            fault = chaos.plan(
                "interrupt", f"process group {served.pgid}", detail="SIGINT (Ctrl-C)"
            )
            sent = served.kill_whole(signal.SIGINT, timeout=GRACE + SLACK, known=load.tree)
            fault.fire(sent.mono, sent.ts)
            code = await served.wait_exit(1.0)
        elapsed = time.monotonic() - t0
        stderr = served.stderr_path.read_text()
        assert code == 128 + signum, f"exit code {code}; stderr:\n{stderr[-3000:]}"
        assert elapsed < GRACE + SLACK
        assert f"stopped by signal {signum}" in stderr
        fault.effect = f"the server exited {code} after {elapsed:.2f} s"
        fault.effect += uncommitted(load.outstanding)
        await traffic_ended(load.traffic)
        assert not wait_gone(load.tree, 5.0)
    await judged_after_recovery(chaos, serve, served)
