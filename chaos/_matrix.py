"""Every fault family against any pool, black-box: the cells of the comparison matrix.

A cell is (pool, family). It drives a target through the five calls only -- start, submit,
worker_pids, committed, stop -- warms it up, injects one real fault of the family from outside
the pool or carries it in with a message (``chaos.workload``), sends more work after it, and
classifies what the harness saw, within bounded time:

- ``recovered``: nothing lost, the pool serves again (the time from the fault until the probe
  sent after it was committed is ``recovery_ms``); ``recycled`` / ``grew`` for memory growth;
- ``lost``: acknowledged messages never committed (by id); ``broken``: further work refused;
- ``hung``: results that never came back or a shutdown that blocked (py-spy dumps taken, the
  processes killed) -- for any target, a call past ``target_timeout`` (``chaos._guard``);
- ``duplicated``, ``reordered``, ``unexpected``, ``dead_lettered``: the checker's first finding;
- ``n/a``: the family cannot act on this pool (a break of sockets where the workers talk over
  pipes only), said with the reason -- never a pass.

Families: ``kill_busy`` (SIGKILL one busy worker, more work queued), ``kill_all`` (every busy
worker at once), ``kill_idle`` (every idle worker at once); ``freeze`` (SIGSTOP a busy
worker), ``deadlock`` and ``busy_loop`` (a task that blocks on a lock or spins, once);
``pipe_outside`` (the worker's sockets shut down from outside), ``pipe_inside`` (the task
breaks its own process's channels, once); ``bad_argument`` (a payload that raises when
unpickled), ``payload_catalog`` (every bad payload: refused at submit is correct),
``bad_result`` (a result that raises when unpickled); ``memory_growth`` (tasks that leak),
``rlimit_as`` (RLIMIT_AS lowered on every worker, then a task allocates past it, once),
``oom_kill`` (every worker in a memory cgroup, then a task allocates past it: the kernel's OOM
killer ends the worker, as in production); and with the pool served from a process of its own
(``chaos.ServedTarget``), so that its whole tree can be hurt: ``exhaustion`` (a pids cgroup
over the tree, capped below what it has, then a worker killed: fall back, wedge or break?) and
``sigterm`` (SIGTERM to every process of the tree mid-run, as a service manager stops a
service: ``drained`` -- everything acknowledged committed, read back by a restart for a pool
whose state is durable, else as the stopped pool's ``committed()`` left it -- or ``lost``).

A task queue (a target with ``"broker"``: ``chaos.engines``) has five more (``ENGINE_FAMILIES``):
``worker_kill`` (its whole worker SIGKILLed), ``broker_kill`` / ``broker_kill_aof`` (its Redis
SIGKILLed and started again, without or with an append-only file), ``broker_link`` (the
worker's connections to it shut down from outside), ``broker_freeze`` (it SIGSTOPped for
``BROKER_FROZEN`` s). For what never came back, such a target says where it is by the
broker's own lists (``where_left``: queued, unacknowledged, started, running...), shown in the
cell's line; what is nowhere is lost.

A target across test hosts (``"hosts"``: Dask, Celery with a worker per host) has the network
matrix's seven (``chaos._network_cells``): partitions between hosts, a host killed whole, a
host frozen, and one task's worker killed each time it begins the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ._cgroups import available as cgroup_available
from ._errors import ChaosError, InjectorUnavailable
from ._guard import TargetHung
from ._memory import address_space_limit, memory_cgroup
from ._payloads import CATALOG
from ._pipes import breakable_sockets
from ._processes import descendants, is_gone
from ._served import ServedTarget
from ._target import TargetRefused
from ._threads import pids_limit

MB = 2**20
BROKER_DOWN = 1.0  # seconds a killed broker stays down before it is started again
BROKER_FROZEN = 10.0  # seconds a frozen broker stays stopped
REFUSAL_WAIT = 6.0  # seconds a capped pool has to try to start a process, once it dealt with work
GOOD = {"recovered", "recycled", "drained"}
NOT_APPLICABLE = "n/a"


class NotApplicable(Exception):
    """The family cannot act on this pool; the message says why."""


@dataclass
class Cell:
    """One (pool, family) run: the scenario, the target (guarded), where to write, what it saw."""

    chaos: Any
    target: Any
    tmp: Path
    workers: int
    pids: list[int] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # until after
    last_read: dict[str, list[Any]] = field(default_factory=dict)  # committed(), warmed up

    async def busy(self, seconds: float = 1.0) -> None:
        """Every worker running a task of ``seconds`` (or as many as 10 s allow), more work
        queued behind; ``pids`` reordered so that those running one now come first (the
        victims). Each busy task goes on a key of its own, one more every 50 ms until every
        worker runs one, so that a pool that routes by key gets some on every worker; where
        and when each began comes from the task's own mark (the workload log), never from
        the pool."""
        chaos = self.chaos
        started: list[float] = []  # when each busy task was submitted
        deadline = time.monotonic() + 10.0
        while True:
            now = self.now()
            live = {*self.pids, *chaos.worker_pids()}  # (RQ forks a process for each job)
            running = list(
                dict.fromkeys(
                    pid
                    for i in range(len(started))
                    for pid, mono in chaos.carried(f"busy{i}", "sleep")
                    if now - mono < 0.8 * seconds and pid in live
                )
            )
            if len(running) >= self.workers or (running and time.monotonic() > deadline):
                break
            if time.monotonic() > deadline:  # it cannot begin work: hung, where is everyone?
                raise TargetHung(
                    f"no task began within 10 s ({len(started)} submitted)",
                    await asyncio.to_thread(_dump_tree, self.target),
                )
            if len(started) < 8 * self.workers and (
                not started or time.monotonic() - started[-1] > 0.05
            ):
                i = len(started)
                payload = chaos.carry(f"busy{i}", fault=False, sleep=seconds)
                await self.chaos.submit(f"busy{i}", payload, key=f"busy{i}")
                started.append(time.monotonic())
            await asyncio.sleep(0.01)
        live = chaos.worker_pids()  # (a pool that forks per task has new ones now)
        self.pids = running + [p for p in live or self.pids if p not in running]
        await self.chaos.traffic(10, prefix="queued", keys=4)

    def now(self) -> float:
        return time.clock_gettime(time.CLOCK_MONOTONIC)


Family = Callable[[Cell], Awaitable[float]]  # injects the fault; its CLOCK_MONOTONIC time


async def kill_busy(cell: Cell) -> float:
    await cell.busy()
    return cell.chaos.kill(cell.pids[0]).mono


async def kill_all(cell: Cell) -> float:
    await cell.busy()
    return cell.chaos.kill(*cell.pids).mono


async def kill_idle(cell: Cell) -> float:
    # "The work submitted next" must reach the pool before it can see its workers die,
    # whatever the machine's load: the idle workers are held (SIGSTOP) while it is sent, then
    # killed. Without the hold, a pool that notices within a millisecond (loky) makes the
    # outcome a race between its thread and the harness's next submit.
    for pid in cell.pids:
        cell.chaos.freeze(pid, harmless=True)
    await cell.chaos.traffic(10, prefix="next", keys=4)
    fault_at = cell.chaos.kill(*cell.pids, harmless=True).mono  # idle: nothing in flight
    # And the work after it is sent once the pool has dealt with that work (each future done,
    # or given up on), not while it is doing so: loky, shutting its broken executor down, may
    # refuse a submit made in the meantime -- another race, not a behaviour.
    await cell.target.committed()
    return fault_at


async def freeze(cell: Cell) -> float:
    await cell.busy()
    return cell.chaos.freeze(cell.pids[0]).mono


async def _carried_hang(cell: Cell, how: str) -> float:
    payload = cell.chaos.carry("hang", hang=how, once=True)
    await cell.chaos.submit("hang", payload)
    await cell.chaos.traffic(10, prefix="queued", keys=4)
    return await _fired(cell, "hang")


async def deadlock(cell: Cell) -> float:
    return await _carried_hang(cell, "deadlock")


async def busy_loop(cell: Cell) -> float:
    return await _carried_hang(cell, "busy")


async def pipe_outside(cell: Cell) -> float:
    victim = cell.pids[0]
    if not breakable_sockets(victim):
        raise NotApplicable("its workers talk over pipes, not sockets: see pipe_inside")
    await cell.busy()
    fault = cell.chaos.break_pipes(victim)
    assert fault.mono is not None  # breakable: fired
    return fault.mono


async def pipe_inside(cell: Cell) -> float:
    payload = cell.chaos.carry("broken-channel", break_channel=True, once=True)
    await cell.chaos.submit("broken-channel", payload)
    await cell.chaos.traffic(10, prefix="queued", keys=4)
    return await _fired(cell, "broken-channel")


async def bad_argument(cell: Cell) -> float:
    """A payload that raises when unpickled: refused at submit (the submit raises, nothing
    acknowledged: a serializer that cannot carry it, as Celery's JSON) is correct; accepted,
    it must be committed, or dead-lettered where the pool has dead letters."""
    bad = next(f for f in CATALOG if f.name == "crash_at_unpickle")
    cell.chaos.expect_dead_letters({"poison": "CrashAtUnpickle"})  # where a pool has them
    await cell.chaos.submit_bad(cell.target, "k0", bad.make(), "poison", bad.name)
    fault = cell.chaos.faults[-1]
    assert fault.mono is not None
    return fault.mono


async def payload_catalog(cell: Cell) -> float:
    """Every bad payload, each between good messages: refused at submit (the submit raises,
    nothing acknowledged) is correct; accepted, it must be committed (or dead-lettered, where
    the target reports dead letters)."""
    chaos, first = cell.chaos, None
    refused: list[str] = []
    accepted: list[str] = []
    for i, fault in enumerate(CATALOG):
        key = f"c{i}"
        await cell.chaos.submit(f"good-{i}", "ok", key)
        mid = f"bad-{fault.name}"
        ok = await chaos.submit_bad(cell.target, key, fault.make(), mid, fault.name)
        (accepted if ok else refused).append(mid)
        # Settled before the next: whether the next submit meets a pool that has seen what
        # this one did would be a race between the pool's threads and the harness.
        await cell.target.committed()
        first = first if first is not None else chaos.faults[-1].mono
    if "dead_letters" in cell.target.capabilities:
        chaos.expect_dead_letters(accepted)
    cell.seen["refused_at_submit"] = len(refused)
    assert first is not None
    return first


async def bad_result(cell: Cell) -> float:
    payload = cell.chaos.carry("bad-result", bad_result=True)
    await cell.chaos.submit("bad-result", payload)
    return await _fired(cell, "bad-result")


async def memory_growth(cell: Cell) -> float:
    """Tasks that leak: recycled if a worker that leaked has ended (the kernel's word, not the
    pool's list) while the pool goes on with others; else grew."""
    fault_at, rss, leaked = None, [], set()
    for i in range(16):  # paced over ~3 s: loky looks at a worker's memory once a second
        await cell.chaos.submit(f"leak{i}", cell.chaos.carry(f"leak{i}", leak_mb=64, sleep=0.2))
        await cell.target.committed()
        fault_at = fault_at or await _fired(cell, "leak0")
        leaked |= {pid for pid, _ in cell.chaos.carried(f"leak{i}", "leak")}
        now = cell.chaos.worker_pids()
        rss += [_rss(p) for p in now]
        cell.seen["recycled"] = cell.seen.get("recycled", False) or bool(
            now and any(is_gone(pid) for pid in leaked)
        )
    cell.seen["max_rss_mb"] = round(max(rss, default=0) / MB)
    assert fault_at is not None
    return fault_at


async def rlimit_as(cell: Cell) -> float:
    with contextlib.ExitStack() as limits:
        for pid in _limited(cell):
            limits.enter_context(
                cell.chaos.limit(
                    "RLIMIT_AS", address_space_limit(pid, extra_mb=100), pid=pid, detail="+100 MB"
                )
            )
        await cell.chaos.submit("big", cell.chaos.carry("big", leak_mb=400, once=True))
        fault_at = await _fired(cell, "big")
        await cell.target.committed()
    if not cell.chaos.carried("big", "leak:MemoryError"):
        for fault in cell.chaos.faults:
            if fault.kind == "RLIMIT_AS":
                fault.no_effect = "the 400 MB allocation never failed under the limit"
    return fault_at


async def oom_kill(cell: Cell) -> float:
    ok, why = cgroup_available("memory")
    if not ok:
        raise NotApplicable(f"no memory cgroup here: {why}")
    groups = []
    with contextlib.ExitStack() as limits:
        for pid in _limited(cell):  # newly charged memory past 64 MB: the OOM killer
            capped = cell.chaos.limit("memory cgroup", memory_cgroup(pid, 64), pid=pid)
            groups.append(limits.enter_context(capped))
        await cell.chaos.submit("big", cell.chaos.carry("big", leak_mb=400, once=True))
        fault_at = await _fired(cell, "big")
        await until(lambda: sum(_oom_kills(g) for g in groups) > 0, 10, "the OOM killer")
        cell.seen["oom_kills"] = sum(_oom_kills(g) for g in groups)
        await cell.target.committed()
    return fault_at


def _limited(cell: Cell) -> list[int]:
    """The processes a resource limit goes on: the workers, or where a pool forks a process
    per task (RQ), the ones it forks from -- a limit and a cgroup are inherited at fork."""
    resource_pids = getattr(cell.target, "resource_pids", None)
    return list(resource_pids()) if callable(resource_pids) else cell.pids


async def exhaustion(cell: Cell) -> float:
    """A pids cgroup over the pool's whole process tree, capped below what it has: once a
    worker is killed, not one more process or thread can start anywhere in it (the kernel
    refuses: EAGAIN). Work flows, a worker is killed: does the pool fall back and finish the
    work with what it has, wedge, or break? Held until the work after it is in."""
    ok, why = cgroup_available("pids")
    if not ok:
        raise NotApplicable(f"no pids cgroup here: {why}")
    target, victim = cell.target, cell.pids[0]
    if hasattr(target, "committed_now"):  # its read runs in a thread: made before the cap
        await target.committed_now()
    cap = pids_limit(target.pid, extra=-psutil.Process(victim).num_threads())
    group = cell.held.enter_context(
        cell.chaos.limit("pids cgroup", cap, pid=target.pid, detail="no new process or thread")
    )
    cell.held.callback(_refusals, cell, group, cell.chaos.faults[-1])  # before it is lifted
    await cell.busy()
    fault_at = cell.chaos.kill(cell.pids[0]).mono  # a busy one
    # The work after it is sent once the pool has dealt with what it held (each result in,
    # or given up on): whether a submit meets a pool that has seen the death yet would be a
    # race between its threads and the harness, not a behaviour.
    await cell.target.committed()
    # And once the pool has tried to replace what it lost, if it does (a refusal counted),
    # within REFUSAL_WAIT s: Celery looks at its children only every 5 s -- lifted before it
    # looked, the cap would have proved nothing, or something else each run.
    deadline = time.monotonic() + REFUSAL_WAIT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if _refused(group):
                break
        await asyncio.sleep(0.05)
    return fault_at


class Ended(Exception):
    """The fault ended the target: no work after it (the cell's verdict is on what it left)."""


async def sigterm(cell: Cell) -> float:
    """SIGTERM to the pool's whole process tree while work is in flight and queued, as a
    service manager stops a service (systemd signals every process of its cgroup): the app
    (the server) stops its pool gracefully; what it committed by the end is all there is."""
    await cell.busy()
    tree = {cell.target.pid, *cell.pids}
    # The server's own bounds: its target's stop, then the read of what it committed.
    bound = 2 * cell.target.stop_timeout + 15.0
    # Still running past the bound: hung, its stacks taken, then SIGKILLed (a served pool's
    # kill_whole says so itself; a task queue's worker says only that it outlived the signal).
    try:
        injected = await asyncio.to_thread(cell.target.kill_whole, signal.SIGTERM, bound)
    except ChaosError as e:
        raise TargetHung(f"the pool did not end within {bound:g} s of SIGTERM: {e}") from None
    fault = cell.chaos.plan("terminate", f"process tree of pid {cell.target.pid}", detail="SIGTERM")
    fault.fire(injected.mono, injected.ts)
    fault.effect = f"{len(tree)} processes ended, exit {cell.target.returncode}"
    target = cell.target
    if hasattr(target, "again"):  # a task queue: its worker started again on its broker
        again = target.again()
    elif "restart" in target.capabilities:  # what it acknowledged is durable: a restart tells
        again = ServedTarget(
            target.spec, target.data_dir, timeout=target.timeout, **target.options
        )  # its own acknowledgements stay the harness's evidence: this only reads back
    else:
        again = None
    if again is not None:
        try:
            await again.start()
            cell.seen["final"] = await again.committed()
            cell.seen["restarted"] = True
            if hasattr(again, "where_left"):  # what it never got to, and where that is
                target.where_left.clear()
                target.where_left.update(again.where_left)
                target.outstanding[:] = again.outstanding
                target.dumps.extend(again.dumps)
        except (ChaosError, TargetHung) as e:  # its data dir does not serve again: broken
            cell.seen["refused"] = f"restart on its data dir failed: {str(e).splitlines()[0]}"
            cell.seen["final"] = cell.last_read
        finally:  # whatever it read, the restarted pool is stopped and swept
            with contextlib.suppress(ChaosError, TargetHung):
                await again.stop()
    else:  # an in-memory pool: what it committed by the time it exited is all there is --
        # or, if it could not say then, what the harness last read from it before the fault
        final = target.final_committed()
        if final is None:
            cell.seen["unanswered"] = True
        cell.seen["final"] = final if final is not None else cell.last_read
    raise Ended()


async def worker_kill(cell: Cell) -> float:
    """SIGKILL of a whole worker -- its main process and every descendant at once, as the end
    of its container or host: what it had taken from the broker and not finished must come back
    (a service manager starts the worker again: the target's own supervisor)."""
    main = getattr(cell.target, "pid", None)
    if main is None or "broker" not in cell.target.capabilities:
        raise NotApplicable("it has no worker process apart from its pool's (see kill_all)")
    await cell.busy()
    tree = [main, *(p.pid for p in descendants(main))]
    return cell.chaos.kill(*tree).mono


def _broker(cell: Cell) -> Any:
    if "broker" not in cell.target.capabilities:
        raise NotApplicable("its messages travel through no broker")
    return cell.target.broker


async def broker_kill(cell: Cell) -> float:
    """SIGKILL of the Redis broker with work in flight and queued, started again
    ``BROKER_DOWN`` s later on the same port and directory (persistence off: it comes back
    empty)."""
    broker = _broker(cell)
    if broker.aof:
        raise ChaosError("broker_kill is the broker without persistence: see broker_kill_aof")
    await cell.busy()
    with cell.chaos.broker_killed(broker) as fault:
        await asyncio.sleep(BROKER_DOWN)  # the fault's length: a crash, then a restart
    assert fault.mono is not None
    return fault.mono


async def broker_kill_aof(cell: Cell) -> float:
    """The same kill of a broker that keeps an append-only file (``appendonly yes``)."""
    broker = _broker(cell)
    if not broker.aof:
        raise ChaosError("broker_kill_aof needs a target whose broker has aof=True")
    await cell.busy()
    with cell.chaos.broker_killed(broker) as fault:
        await asyncio.sleep(BROKER_DOWN)
    assert fault.mono is not None
    return fault.mono


async def broker_link(cell: Cell) -> float:
    """Every connection of the worker's processes to the broker shut down from outside, with
    work in flight and queued: it must reconnect and go on."""
    broker = _broker(cell)
    await cell.busy()
    main = cell.target.pid  # and every process of the worker (RQ's pool: its workers hold them)
    with cell.chaos.broker_link_broken(
        [main, *(p.pid for p in descendants(main))], broker
    ) as fault:
        pass
    assert fault.mono is not None
    return fault.mono


async def broker_freeze(cell: Cell) -> float:
    """The broker stopped (SIGSTOP) for ``BROKER_FROZEN`` s with work in flight and queued --
    its sockets stay open, nothing answers -- then resumed."""
    broker = _broker(cell)
    await cell.busy()
    with cell.chaos.broker_frozen(broker) as fault:
        await asyncio.sleep(BROKER_FROZEN)  # the fault's length
    assert fault.mono is not None
    return fault.mono


FAMILIES: dict[str, Family] = {
    "kill_busy": kill_busy,
    "kill_all": kill_all,
    "kill_idle": kill_idle,
    "freeze": freeze,
    "deadlock": deadlock,
    "busy_loop": busy_loop,
    "pipe_outside": pipe_outside,
    "pipe_inside": pipe_inside,
    "bad_argument": bad_argument,
    "payload_catalog": payload_catalog,
    "bad_result": bad_result,
    "memory_growth": memory_growth,
    "rlimit_as": rlimit_as,
    "oom_kill": oom_kill,
    "exhaustion": exhaustion,
    "sigterm": sigterm,
}
# A task queue's own faults: its whole worker, and its broker (targets with ``"broker"``).
ENGINE_FAMILIES: dict[str, Family] = {
    "worker_kill": worker_kill,
    "broker_kill": broker_kill,
    "broker_kill_aof": broker_kill_aof,
    "broker_link": broker_link,
    "broker_freeze": broker_freeze,
}


def family_of(name: str) -> Family:
    """The family called ``name``: the pools', the task queues' or the network's."""
    from ._network_cells import NETWORK_FAMILIES

    return {**FAMILIES, **ENGINE_FAMILIES, **NETWORK_FAMILIES}[name]


SERVED = {
    "exhaustion",
    "sigterm",
}  # the pool runs in a process of its own (ServedTarget): its tree is hurt
MEMORY = {"memory_growth"}  # judged recycled / grew


async def run_cell(chaos: Any, target: Any, family: str, tmp: Path, workers: int) -> dict[str, Any]:
    """Warm up, inject ``family``'s fault, send more work after it, probe: what was seen."""
    cell = Cell(chaos, target, tmp, workers)
    cell.seen.update(refused=None, hung=None, recovery_ms=None, detection_ms=None, settled_ms=None)
    try:
        if why := getattr(target, "not_applicable", {}).get(family):  # the target says why
            raise NotApplicable(why)
        await chaos.traffic(20, prefix="warm", keys=4)
        cell.last_read = await target.committed()
        cell.pids = await chaos.workers(workers)
        try:
            fault_at = await family_of(family)(cell)
        except TargetRefused as e:  # broken by the fault before all of its work was in
            cell.seen["refused"] = _refusal(e)
        except Ended:
            pass
        else:
            await _after(cell, fault_at)
        finally:
            cell.held.close()  # a limit the family holds: lifted once the work after it is in
    except (NotApplicable, InjectorUnavailable) as e:  # e.g. no cgroup, no pidfd_getfd here
        cell.seen["not_applicable"] = str(e)
    except TargetHung as e:
        cell.seen["hung"] = e
    return cell.seen


async def _after(cell: Cell, fault_at: float) -> None:
    """More work, as a user would go on sending it; then, once the pool has had time to react,
    a probe: does it serve again, and how long after the fault?"""
    seen, target = cell.seen, cell.target
    try:
        await cell.chaos.traffic(10, prefix="after", keys=4)
    except TargetRefused as e:
        seen["refused"] = _refusal(e)
    await target.committed()
    if not seen["refused"]:
        try:
            await cell.chaos.submit("probe", None, key="probe")
        except TargetRefused as e:
            seen["refused"] = _refusal(e)
    state = await target.committed()
    if "probe" in state.get("probe", []):
        seen["recovery_ms"] = round((cell.now() - fault_at) * 1000, 1)
    if cell.chaos.history.acked() <= {m for ids in state.values() for m in ids}:
        seen["settled_ms"] = round((cell.now() - fault_at) * 1000, 1)  # all of it back
    first = records(target)["first_failure"]  # the peer adapters': a failed future
    # (a failure noticed within the instant of the signal: 0, never a negative time)
    seen["detection_ms"] = round(max(0.0, first - fault_at) * 1000, 1) if first else None


def _refusal(error: BaseException) -> str:
    """What the pool raised at a refused submit (under the harness's wrappers)."""
    if isinstance(error, TargetRefused) and error.__cause__ is not None:
        error = error.__cause__
    error = getattr(error, "original", None) or error
    text = getattr(error, "error", None)
    if isinstance(text, str):  # a served target's: "ExcType: msg"
        return text
    return f"{type(error).__name__}: {error}"


def records(target: Any) -> dict[str, Any]:
    """What the harness's own peer adapters recorded (``chaos.peers``; fetched from a served
    one's process): results that never came back, failed futures, when the first failed. Taken
    right after the last ``committed()``, before ``stop()``: observers still polling during a
    stop would see the pool as the stop leaves it."""
    fetch = getattr(target, "records", None)
    if callable(fetch):  # a served pool's, from its process (gone or hung: as last fetched)
        with contextlib.suppress(ChaosError, TargetHung):
            fetch()
    return {
        "outstanding": list(getattr(target, "outstanding", [])),
        "failures": dict(getattr(target, "failures", {})),
        "first_failure": getattr(target, "first_failure", None),
    }


def classify(
    family: str, target: Any, verdict: Any, seen: dict[str, Any], kept: dict[str, Any]
) -> dict[str, Any]:
    """The cell's outcome from what the harness saw (see the module doc), with its details;
    ``kept``: the adapter's ``records`` from before the stop."""
    outstanding, failures = kept.get("outstanding", []), kept.get("failures", {})
    stop_blocked = bool(getattr(target, "stop_blocked", False))
    hung = bool(seen.get("hung") or outstanding or stop_blocked)
    # lost: nowhere -- what never returned yet (outstanding) is counted as hung, not lost
    lost = len(set(verdict.lost) - set(outstanding)) if verdict is not None else 0
    anomalies = ("duplicated", "reordered", "unexpected", "dead_lettered")
    anomaly = next((a for a in anomalies if verdict is not None and getattr(verdict, a)), None)
    moot = None  # the family found nothing to act on
    if family == "exhaustion" and seen.get("forks_refused") == 0 and not hung:
        moot = (
            "nothing in its tree tried to start a process or thread under the cap, so the "
            "kill alone decided (see kill busy)"
        )
    if seen.get("not_applicable") or moot:
        outcome = NOT_APPLICABLE
    elif hung:
        outcome = "hung"
    elif seen["refused"]:
        outcome = "broken"
    elif lost:
        outcome = "lost"
    elif anomaly:  # a good outcome needs a clean verdict: the first anomaly found names it
        outcome = anomaly
    elif seen.get("stop_error"):  # it could not be stopped cleanly: its processes were killed
        outcome = "broken"
    elif family in MEMORY:
        outcome = "recycled" if seen.get("recycled") else "grew"
    elif "final" in seen:
        outcome = "drained"
    else:
        outcome = "recovered"
    errors: dict[str, int] = {}
    for text in failures.values():
        name = text.split(":")[0]
        errors[name] = errors.get(name, 0) + 1
    places: dict[str, int] = {}  # a task queue's: where the work that never came back is
    for where in (getattr(target, "where_left", None) or {}).values():
        place = "running" if where.startswith("running") else where
        places[place] = places.get(place, 0) + 1
    dumps = [f"# {d.method} dump of pid {d.pid}\n{d.text[:20000]}" for d in target_dumps(target)]
    if seen.get("hung") is not None and getattr(seen["hung"], "dumps", None):
        dumps.append(seen["hung"].dumps)  # the guard's: every process of the target
    return {
        "outcome": outcome,
        **({"not_applicable": moot} if moot else {}),
        "lost": lost,
        # which messages ran twice: a message's id says what it was (warm-up, busy, queued...)
        "duplicated": sorted(set(verdict.duplicated)) if verdict is not None else [],
        "outstanding": len(outstanding),
        "stop_blocked": stop_blocked,
        "errors": errors,
        "dumps": dumps,
        "hung": str(seen["hung"]).splitlines()[0] if seen.get("hung") else None,
        "left": places,
        "visibility_timeout": getattr(target, "visibility_timeout", None),
        "restarts": getattr(target, "restarts", 0) or 0,  # by a task queue's supervisor
        "kills": seen.get("kills"),  # kill again: how many times the task's worker was killed
    }


def target_dumps(target: Any) -> list[Any]:
    return list(getattr(target, "dumps", []) or [])


def describe(seen: dict[str, Any]) -> str:
    """One line for the matrix: the outcome first, then what shows it."""
    if seen["outcome"] == NOT_APPLICABLE:
        return f"n/a: {seen['not_applicable']}"
    parts = [seen["outcome"]]
    if seen.get("restarted"):
        parts.append("read back by a restart (on its data dir, or its broker)")
    if seen.get("unanswered"):
        parts.append("its committed() gave no answer once stopped")
    if seen["outcome"] == "recovered" and seen.get("recovery_ms") is not None:
        parts = [f"recovered in {seen['recovery_ms']:.0f} ms"]
        vt, settled = seen.get("visibility_timeout"), seen.get("settled_ms")
        if vt is not None and settled is not None and settled >= vt * 1000:
            parts.append(
                f"all of it back {settled / 1000:.1f} s after the fault (visibility timeout "
                f"{vt:g} s)"
            )
    if seen.get("lost"):
        parts.append(f"{seen['lost']} lost")
    if twice := seen.get("duplicated"):
        parts.append(f"{len(twice)} done twice ({_kinds(twice)})")
    if seen.get("outstanding"):
        parts.append(f"{seen['outstanding']} never returned (py-spy dumps taken)")
    parts += _placed(seen.get("left") or {}, seen.get("visibility_timeout"))
    if seen.get("hung"):  # "X.committed() did not return within 30 s (...)": the call
        parts.append(seen["hung"].split(" (", 1)[0].split(".", 1)[-1][:100])
    if seen.get("stop_blocked"):
        parts.append("shutdown blocked (py-spy dump taken, processes killed)")
    if seen.get("refused"):
        parts.append(f"further work refused ({seen['refused'].split(':')[0]})")
    if seen.get("refused_at_submit"):
        parts.append(f"{seen['refused_at_submit']} bad payloads refused at submit")
    if seen.get("errors"):
        parts.append(", ".join(f"{n}x {e}" for e, n in seen["errors"].items()))
    if seen.get("restarts"):
        parts.append(f"its worker died and was started again {seen['restarts']}x (supervisor)")
    if seen.get("kills"):
        parts.append(f"its worker killed {seen['kills']}x as it began the task")
    if seen.get("forks_refused"):
        parts.append(f"{seen['forks_refused']} fork(s) or thread(s) refused")
    if seen.get("oom_kills"):
        parts.append(f"{seen['oom_kills']} OOM kill(s)")
    if seen.get("max_rss_mb") is not None:
        parts.append(f"worker RSS up to {seen['max_rss_mb']} MB")
    if seen.get("stop_error"):
        parts.append(f"its stop failed ({seen['stop_error'].split(':')[0]})")
    return "; ".join(parts)


def _kinds(ids: list[str]) -> str:
    """Message ids by what they were sent as (``warm-3`` -> warm): "4 warm, 1 busy"."""
    kinds: dict[str, int] = {}
    for mid in ids:
        kind = mid.rstrip("0123456789-_") or mid
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in kinds.items())


def _placed(left: dict[str, int], visibility_timeout: float | None) -> list[str]:
    """Where a task queue's missing work was, by the broker's own lists."""
    said = {
        "queued": "still queued in the broker",
        "unacknowledged": "unacknowledged in the broker (back only after its visibility "
        f"timeout, {visibility_timeout or 0:g} s)",
        "running": "still running in a live worker",
        "started": "in the started registry, its worker dead (failed or retried only once "
        "the engine's maintenance finds it abandoned)",
        "intermediate": "taken from the queue by a worker that died (RQ's intermediate queue: "
        "failed or retried only by the engine's maintenance)",
        "scheduled": "scheduled to run again later",
        "unknown": "not placed: the broker could not be read",
        "pending": "still pending in the scheduler",
        "erred": "erred in the engine, not retried (lost; its error follows)",
    }  # (the rest is nowhere: lost, and counted so)
    return [f"{n} {said[place]}" for place, n in left.items() if n and place in said]


async def _fired(cell: Cell, mid: str, timeout: float = 30.0) -> float:
    """When the task carrying message ``mid``'s fault acted (from the workload log)."""
    chaos = cell.chaos
    deadline = time.monotonic() + timeout
    while True:
        chaos.refresh()
        fired = [f for f in chaos.faults if f.kind == "workload" and f.target == f"message {mid}"]
        if fired and fired[0].mono is not None:
            return fired[0].mono
        if fired and fired[0].no_effect:  # the task refused it (see chaos.workload): void
            fired[0].planned, fired[0].harmless = 0, True
            raise NotApplicable(fired[0].no_effect.replace("refused:", "").replace("-", " "))
        if time.monotonic() > deadline:
            raise AssertionError(
                f"message {mid}'s fault never ran within {timeout:g} s: does the target's task "
                "hand each payload to chaos.workload.apply(key, id, payload)?"
            )
        await asyncio.sleep(0.01)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        await asyncio.sleep(0.01)


def _dump_tree(target: Any) -> str:
    """py-spy dumps of every process of the target: its own (``pid``) and its workers."""
    from ._stacks import dump_stacks

    pids = dict.fromkeys([p for p in [getattr(target, "pid", None)] if p] + target.worker_pids())
    with contextlib.suppress(psutil.Error):
        for pid in list(pids):
            pids.update(dict.fromkeys(c.pid for c in psutil.Process(pid).children(True)))
    return "\n".join(
        f"--- target process {pid} ---\n{dump_stacks(pid, timeout=5.0).text}" for pid in pids
    )


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _refusals(cell: Cell, group: Path, cap: Any) -> None:
    """The cap's effect, as the kernel counted it: the new processes and threads it refused
    (``pids.events``). None refused: the pool never tried to start one -- the cap proved
    nothing."""
    try:
        refused = _refused(group)
    except OSError as e:  # the effect unknown: proves nothing (never n/a)
        cap.no_effect = f"its refusals could not be read ({e.strerror})"
        return
    cell.seen["forks_refused"] = refused
    if refused:
        cap.effect = f"the kernel refused {refused} new process(es) or thread(s)"
    else:  # the cell is n/a (``classify``), unless the pool hung: then it proved nothing
        cap.no_effect = "nothing in the pool's tree tried to start a process or thread under it"


def _refused(group: Path) -> int:
    """The new processes and threads the pids cgroup refused so far (``OSError``: unreadable)."""
    lines = (group / "pids.events").read_text().splitlines()
    return next((int(line.split()[1]) for line in lines if line.startswith("max ")), 0)


def _oom_kills(group: Path) -> int:
    """OOM kills the kernel counted in a memory cgroup (v2 ``memory.events``, v1
    ``memory.oom_control``)."""
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError):
            for line in (group / name).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    return 0
