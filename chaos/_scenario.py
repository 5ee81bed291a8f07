"""A scenario's faults and verdict: the ``chaos`` fixture of the pytest plugin.

``Scenario`` injects faults on the scenario's behalf and keeps the schedule: each fault is
*planned* when asked for and *fired* when it really happened (a signal delivered, a failpoint
firing counted in the run-wide log, a limit applied, a bad payload submitted). A planned fault
that never fired fails the scenario -- it would prove nothing. Everything it started is reverted
at teardown: frozen processes thawed, limits lifted, failpoints cleared.

Every process fault also proves its *effect*, observed by the harness, never taken from the
target: the victim's exit through a pidfd opened before the signal (kill, terminate), its
stopped state (freeze), and -- for each -- the acknowledged work still uncommitted right after
it (``pending``). A fault with no effect (the victim did not die; no acknowledged work was
outstanding) fails the scenario as ``NoEffect`` -- a harness outcome: it proved nothing --
unless the scenario declared it ``harmless=True`` (then ``require_effective(n)`` can still ask
for a number of effective ones).

``await chaos.verify()`` reads the target's committed state, runs the checker on the harness's
own ledger (``history``: every acknowledgement, recorded when it was seen), and holds it against
the scenario's ``chaos_slo(...)`` marker; a breach fails with one line per breach, each starting
with its category (``lost=``, ``recovery of ...``), and the anomalies explained. Recovery is the
harness's measurement for every target: from the fault (its CLOCK_MONOTONIC time) until every
message acknowledged before it is committed, polling ``committed_now()`` (a read that does not
wait) where the target has it, else ``committed()``. Detection and restart come from the
target's events where it has them, and its own recovery figure is shown beside the harness's
(``claimed_recovery``), with a large disagreement flagged. Dead letters are accounted: each id
the target dead-letters must be named by ``expect_dead_letters`` (with a reason pattern), else
it counts against the ``dead_lettered`` objective (default 0).
``record()`` is the JSON-ready account of the scenario that reports are made from.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import select
import signal
import statistics
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _broker, _network, _pipes, _process_faults, failpoints, workload
from ._checker import History, Verdict, dead_letters_of
from ._errors import ChaosError, ContractError
from ._guard import DEFAULT_TIMEOUT, Guarded, TargetHung, target_name
from ._processes import is_gone
from ._recovery import Recovery, _ms, recovery_of
from ._target import drained, submit_one, submit_traffic

SLO_KEYS = {
    "lost": "most lost messages allowed (default 0)",
    "duplicated": "most duplicated messages allowed (default 0)",
    "reordered": "most reordered messages allowed (default 0)",
    "unexpected": "most unexpected messages allowed (default 0)",
    "dead_lettered": "most dead letters allowed beyond those the scenario expects (default 0)",
    "recovery": "seconds from each process fault until its in-flight work is committed again",
    "detection": "seconds from each process fault until the target noticed it",
    "restart": "seconds from each process fault until a replacement was ready",
    "mode": "the worker mode the target must end in (e.g. 'inline' after a step down)",
}
_DEFAULT_SLO = {"lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0, "dead_lettered": 0}
_PROCESS_FAULTS = {"kill", "terminate", "freeze", "break_pipes"}
_ANOMALIES = ("lost", "duplicated", "reordered", "unexpected", "dead_lettered")
EXIT_WAIT = 10.0  # seconds a killed process has to be seen gone before the kill had no effect
# Seconds between reads of the committed state while measuring a recovery: 5 ms for its first
# 250 ms (the figure's resolution where recoveries are told apart: at 20 ms, every figure was
# the time of a read, quantised to ~22 ms, and 75 ms read as 91 or 113), then 20 ms, then, once
# a recovery takes 2 s, 200 ms (a lossy target's work never comes back: its observers must not
# starve the run with reads); and never less than twice what a read takes (a target in the
# harness's own process shares its GIL: reads must not crowd out the recovery they measure).
FINE_FOR, FINE_POLL = 0.25, 0.005
POLL = 0.02
SLOW_AFTER, SLOW_POLL = 2.0, 0.2
DEAD_LISTED = 10.0  # seconds a target may go on listing a dead worker among its workers
WAKE_AFTER = 1.0  # seconds without a live worker before work is sent to start one
DISAGREE_MS = 100.0  # a target's recovery claim this much (and 2x) below the harness's is flagged


class WorkersNotReplaced(AssertionError):
    """Workers this scenario killed were not replaced in time: a weakness of the target."""


class NoEffect(ChaosError):
    """A fault fired but had no effect the harness could observe, so the scenario proved
    nothing: a harness outcome (exit 11 under the gate), not a verdict on the target."""


def slo_of(marker_kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The objectives from a ``chaos_slo`` marker, defaults filled in; bad keys say the fix."""
    unknown = set(marker_kwargs) - set(SLO_KEYS)
    if unknown:
        raise ChaosError(
            f"unknown chaos_slo objective(s) {', '.join(sorted(unknown))} on {where}; known: "
            + "; ".join(f"{k} ({v})" for k, v in SLO_KEYS.items())
        )
    for key, value in marker_kwargs.items():
        if key != "mode" and (not isinstance(value, int | float) or value < 0):
            raise ChaosError(f"chaos_slo({key}={value!r}) on {where}: give a number >= 0")
    return {**_DEFAULT_SLO, **marker_kwargs}


@dataclass
class Fault:
    """One planned fault, and whether (and when, on CLOCK_MONOTONIC) it fired."""

    kind: str
    target: str
    pid: int | None = None
    planned: int = 1
    fired: int = 0
    mono: float | None = None
    ts: float | None = None
    detail: str = ""
    recovery: Recovery | None = None  # detection, restart: the target's; recovery: the harness's
    harmless: bool = False  # the scenario allows this fault to find nothing to hurt
    effect: str | None = None  # what the harness observed it do
    no_effect: str | None = None  # why the harness holds that it did nothing
    pending: int | None = None  # acknowledged messages uncommitted right after it
    claimed_recovery: float | None = None  # the target's own figure (its events), seconds
    disagreement: str | None = None
    until: float | None = None  # when a fault that lasts was healed (CLOCK_MONOTONIC)
    judged: bool = field(default=False, repr=False)  # the harness has looked at its effect

    def fire(self, mono: float | None = None, ts: float | None = None) -> Fault:
        self.fired += 1
        if self.mono is None:
            self.mono = mono if mono is not None else time.clock_gettime(time.CLOCK_MONOTONIC)
            self.ts = ts if ts is not None else time.time()
        return self

    def as_event(self) -> dict[str, Any]:
        """The fault as a timeline event, for the checker's explanations."""
        return {
            "kind": "fault",
            "mono": self.mono,
            "pid": self.pid,
            "target": self.target,
            "reason": self.describe(),
        }

    def describe(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind

    @property
    def effective(self) -> bool:
        return bool(self.fired) and self.no_effect is None and self.effect is not None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["judged"]
        d["recovery"] = None if self.recovery is None else self.recovery.as_dict()
        d["claimed_recovery"] = _ms(self.claimed_recovery)
        return d


@dataclass
class Scenario:
    """The ``chaos`` fixture: see the module doc."""

    nodeid: str
    seed: int
    slo: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULT_SLO))
    history: History = field(default_factory=History)
    target: Any = None
    faults: list[Fault] = field(default_factory=list)
    verdict: Verdict | None = None
    breaches: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    observed: dict[str, Any] | None = None  # what a scenario saw the target do, for reports
    examples: list[dict[str, Any]] = field(default_factory=list)  # fault schedules: each one
    expected_dead: dict[str, str | None] = field(default_factory=dict)
    checked: bool = False
    loop: asyncio.AbstractEventLoop | None = None  # where observers run, if not the caller's
    seen_pids: set[int] = field(default_factory=set)  # every worker pid the target showed
    killed: set[int] = field(default_factory=set)  # pids this scenario sent a fatal signal
    effective_needed: int = 0
    target_timeout: float = DEFAULT_TIMEOUT  # seconds any one call into the target may take
    hung: TargetHung | None = None  # the first call into a target that did not return in time
    rng: random.Random = field(init=False, repr=False)
    _undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _failpoint_sites: dict[str, Fault] = field(default_factory=dict, repr=False)
    _observers: dict[int, Any] = field(default_factory=dict, repr=False)
    _snapshot: tuple[float, set[str]] | None = field(default=None, repr=False)
    read_took: float = field(default=0.0, repr=False)  # seconds the last read of it took
    _reading: asyncio.Lock | None = field(default=None, repr=False)
    _dead_listed: dict[int, float] = field(default_factory=dict, repr=False)  # pid -> seen dead
    _ready_pids: set[int] = field(default_factory=set, repr=False)  # pids with a "ready" event
    _events_read: float = field(default=0.0, repr=False)
    _processes: Any = field(default=None, repr=False)  # the guard's Leftovers: start times
    _carried: dict[str, Fault] = field(default_factory=dict, repr=False)  # token -> fault
    _workload_log: str | None = field(default=None, repr=False)
    _wakes: int = field(default=0, repr=False)  # messages sent to wake an idle on-demand pool

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def guard(self, target: Any, leftovers: Any = None, kill: Any = None) -> Guarded:
        """``target`` with every call bounded by ``target_timeout`` and whatever it raises
        contained (``chaos._guard``); on a hang, the processes of ``leftovers`` (the target's:
        new descendants of this process, and every worker pid it showed) are dumped and killed,
        with ``kill()`` too, and the hang is kept in ``hung``."""
        if isinstance(target, Guarded):
            return target
        from ._leaks import Leftovers

        found = leftovers or Leftovers.now()
        self._processes = found  # each worker pid's start time, noted when first seen

        def tree() -> list[Any]:
            found.saw(self.seen_pids)
            return found.alive()

        def on_hang(hung: TargetHung) -> None:
            self.hung = self.hung or hung

        return Guarded(target, self.target_timeout, tree=tree, kill=kill, on_hang=on_hang)

    # --- traffic ------------------------------------------------------------------------

    async def traffic(
        self,
        n: int,
        *,
        prefix: str,
        keys: int = 8,
        drain_every: int | None = None,
        work: float | None = None,
    ) -> None:
        """Submit the list-append workload to the target, recorded in the history (``work``:
        seconds each message keeps its worker busy)."""
        await submit_traffic(
            self.target,
            self.history,
            n,
            prefix=prefix,
            keys=keys,
            drain_every=drain_every,
            work=work,
        )

    async def submit(self, mid: str, payload: Any, key: str = "k0") -> None:
        """Submit one message to the target, recorded in the history (acknowledged once the
        target returned; unacknowledged if it raised -- then ``TargetRefused``)."""
        if refused := await submit_one(self.target, self.history, key, payload, mid):
            raise refused

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until the target has processed everything it acknowledged."""
        await drained(self.target, timeout)

    async def workers(self, n: int = 1, timeout: float | None = None) -> list[int]:
        """The target's live worker pids, once it has at least ``n`` (within ``timeout``,
        default ``target_timeout``) -- ready ones, for a target with events (a "ready" event
        names the pid): a fault aimed at a worker still starting would measure its start. A pool
        may start its workers on demand (``ProcessPoolExecutor`` has none until it has work,
        nor after a crash until it gets more): after ``WAKE_AFTER`` s with no live worker, a
        message (``wake-N``, on its own key, in the history like all traffic) is sent, once a
        second -- never to a target whose events name its ready workers (it keeps a set of
        its own, as the system pool does: waking it would only change the history by timing).
        Past the timeout: a weakness (``WorkersNotReplaced``) if this scenario killed workers
        the target did not replace; else a harness error. A target that goes on listing a dead
        worker for ``DEAD_LISTED`` s breaks the contract (``ContractError``), and the wait ends
        then."""
        timeout = self.target_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        woken = idle = time.monotonic()
        while len(pids := self._ready(live := self.worker_pids())) < n:
            now = time.monotonic()
            idle = idle if not live else now
            keeps_its_own = bool(self._ready_pids)  # it names its ready workers: it has a set
            if not keeps_its_own and now - idle >= WAKE_AFTER and now - woken >= WAKE_AFTER:
                woken = now
                await self._wake()
            stale = sorted(p for p, t in self._dead_listed.items() if now - t > DEAD_LISTED)
            if stale:
                raise ContractError(
                    f"{target_name(self.target)}.worker_pids() still lists pid(s) {stale}, "
                    f"dead for more than {DEAD_LISTED:.0f} s: it must return the pool's live "
                    "worker processes (a pool may list a dead one until it notices, not for "
                    "longer); have the adapter leave out processes that are not alive"
                )
            if now > deadline:
                woke = (
                    f", nor for the work sent to it (wake-1..{self._wakes})" if self._wakes else ""
                )
                if self.killed:
                    raise WorkersNotReplaced(
                        f"the target had {len(pids)} live worker(s) {timeout:g} s after this "
                        f"scenario killed {sorted(self.killed)}, not {n}: it did not replace "
                        f"its dead workers{woke}"
                    )
                raise ChaosError(
                    f"the target had {len(pids)} worker(s) after {timeout} s, not {n}{woke}"
                )
            await asyncio.sleep(0.01)
        return sorted(pids)

    async def _wake(self) -> None:
        """One message for a pool with no live worker: one that starts its workers on demand
        starts them now. Refused: the pool takes no more work (``TargetRefused``)."""
        self._wakes += 1  # (in the history; not a step: schedules must replay)
        await self.submit(f"wake-{self._wakes}", 0, "wake")

    def _ready(self, pids: list[int]) -> list[int]:
        """Of ``pids``, those a "ready" event names -- for a target whose events name ready
        workers at all (the contract does not ask it); events read at most every 0.1 s."""
        if "events" not in getattr(self.target, "capabilities", ()):
            return pids
        now = time.monotonic()
        if set(pids) - self._ready_pids and now - self._events_read >= 0.1:
            self._events_read = now
            events = self.target.events()
            self._ready_pids |= {e.get("pid") for e in events if e.get("kind") == "ready"}
        if not self._ready_pids:  # it never says when a worker is ready: take it as listed
            return pids
        return [pid for pid in pids if pid in self._ready_pids]

    def worker_pids(self) -> list[int]:
        """The target's worker pids that are alive and not already killed by this scenario
        (a pool may list a dead worker until it notices); remembered for the leak check."""
        listed = self.target.worker_pids()
        pids = [pid for pid in listed if pid not in self.killed and not is_gone(pid)]
        now = time.monotonic()
        dead = set(listed) - set(pids)
        self._dead_listed = {p: self._dead_listed.get(p, now) for p in dead if is_gone(p)}
        self._seen(pids)
        return pids

    def _seen(self, pids: Any) -> None:
        """Remember worker pids (for the leak check), each with its start time (so that a
        reused pid is never taken for it, nor killed)."""
        self.seen_pids.update(pids)
        if self._processes is not None:
            self._processes.saw(pids)

    async def outstanding(self) -> set[str]:
        """The acknowledged ids not committed yet, as the target's committed state shows now
        (``committed_now()`` where it has it): where a fault can do harm."""
        now = time.clock_gettime(time.CLOCK_MONOTONIC)
        return self.history.acked() - await self.committed_ids(since=now)

    async def committed_ids(self, since: float = 0.0, max_age: float = POLL) -> set[str]:
        """Every id the target shows committed, read at or after ``since`` (CLOCK_MONOTONIC)
        and at most ``max_age`` s ago: one read shared by every observer that asks meanwhile."""
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            snap = self._snapshot
            mono = time.clock_gettime(time.CLOCK_MONOTONIC)
            if snap is None or snap[0] < since or mono - snap[0] >= max_age:
                read = getattr(self.target, "committed_now", None) or self.target.committed
                committed = await read()
                snap = (mono, {mid for ids in committed.values() for mid in ids})
                self._snapshot = snap
                self.read_took = time.clock_gettime(time.CLOCK_MONOTONIC) - mono
            return snap[1]

    def expect_dead_letters(self, ids: Any, reason: str | None = None) -> None:
        """Name ids the scenario expects the target to dead-letter (a mapping: id -> reason
        pattern; or ids, all with ``reason``, a regular expression; None: any reason)."""
        items = ids.items() if isinstance(ids, Mapping) else ((i, reason) for i in ids)
        self.expected_dead.update(items)

    def require_effective(self, n: int) -> None:
        """Fail the scenario (``NoEffect``) unless at least ``n`` process faults had an effect
        (for scenarios whose faults are each ``harmless=True``)."""
        self.effective_needed = n

    # --- faults -------------------------------------------------------------------------

    def plan(
        self,
        kind: str,
        target: str,
        *,
        pid: int | None = None,
        detail: str = "",
        harmless: bool = False,
    ) -> Fault:
        """Record a fault that the scenario injects itself; call ``.fire()`` once it happened
        (and set ``.effect``, or ``.no_effect``, from what the scenario observed)."""
        fault = Fault(kind, target, pid=pid, detail=detail, harmless=harmless)
        self.faults.append(fault)
        return fault

    def _signal(self, kind: str, pids: tuple[int, ...], sig: int, harmless: bool) -> list[Fault]:
        name = signal.Signals(sig).name
        acked = self.history.acked()
        pinned = {pid: _pidfd(pid) for pid in dict.fromkeys(pids)}  # before the signal
        self._seen(pids)
        try:
            injected = _process_faults.send_signals(pids, sig, kind=kind)
        except BaseException:
            for fd in pinned.values():
                _close(fd)
            raise
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.killed.update(pids)
        faults = []
        for hit in injected:
            fault = self.plan(kind, f"pid {hit.pid}", pid=hit.pid, detail=name, harmless=harmless)
            faults.append(fault.fire(hit.mono, hit.ts))
            self._observe(fault, acked, pinned.pop(hit.pid, None))
        for fd in pinned.values():
            _close(fd)
        return faults

    def kill(
        self, pid: int, *more: int, sig: int = signal.SIGKILL, harmless: bool = False
    ) -> Fault:
        """Send ``sig`` (SIGKILL) to ``pid`` -- and to ``more`` pids in the same instant: all
        are pinned and checked first, then signalled back to back. The first pid's fault."""
        return self._signal("kill", (pid, *more), sig, harmless)[0]

    def terminate(self, pid: int, *, harmless: bool = False) -> Fault:
        return self._signal("terminate", (pid,), signal.SIGTERM, harmless)[0]

    def freeze(self, pid: int, *, harmless: bool = False) -> Fault:
        """SIGSTOP ``pid``; it gets SIGCONT at teardown if it is still there."""
        fault = self._signal("freeze", (pid,), signal.SIGSTOP, harmless)[0]
        self._undo.callback(_thaw_quietly, pid)
        return fault

    def broker_killed(self, server: Any) -> contextlib.AbstractContextManager[Fault]:
        """SIGKILL the Redis broker ``server`` (a ``chaos.engines.RedisServer`` the test
        started); started again, same port and directory, at the block's end."""
        return _broker.broker_killed(self, server)

    def broker_frozen(self, server: Any) -> contextlib.AbstractContextManager[Fault]:
        """SIGSTOP the Redis broker ``server`` for the block; SIGCONT at its end."""
        return _broker.broker_frozen(self, server)

    def broker_link_broken(
        self, pids: int | list[int], server: Any
    ) -> contextlib.AbstractContextManager[Fault]:
        """Shut down every connection of ``pids`` (one, or a worker's tree) to the broker
        ``server``, from outside."""
        return _broker.broker_link_broken(self, pids, server)

    # --- network faults between test hosts (chaos.hosts.Hosts): see chaos._network ---------

    def partitioned(
        self, hosts: Any, a: Any, b: Any = None, *, one_way: bool = False
    ) -> contextlib.AbstractContextManager[Fault]:
        """Hosts ``a`` cut off from hosts ``b`` (default: from everyone else) for the block;
        ``one_way``: only what ``b`` sends to ``a`` is dropped."""
        return _network.partitioned(self, hosts, a, b, one_way=one_way)

    def host_frozen(self, hosts: Any, host: Any) -> contextlib.AbstractContextManager[Fault]:
        """Every process of ``host`` stopped (SIGSTOP) for the block; SIGCONT at its end."""
        return _network.host_frozen(self, hosts, host)

    def host_killed(self, hosts: Any, host: Any) -> Fault:
        """Every process of ``host`` SIGKILLed at once, as a machine that lost its power."""
        return _network.host_killed(self, hosts, host)

    def bandwidth_limited(
        self, hosts: Any, host: Any, rate: str = "1mbit"
    ) -> contextlib.AbstractContextManager[Fault]:
        """What ``host`` sends limited to ``rate`` (tc tbf) for the block."""
        return _network.bandwidth_limited(self, hosts, host, rate)

    def break_pipes(self, pid: int, *, harmless: bool = False) -> Fault:
        """Shut every socket of ``pid`` down from outside (fired if it had one)."""
        acked = self.history.acked()
        broken = _pipes.break_sockets(pid)
        fault = self.plan("break_pipes", f"pid {pid}", pid=pid, harmless=harmless)
        if broken:
            fault.fire(broken[0].mono, broken[0].ts)
            fault.detail = (
                f"{len(broken)} socket(s): fds {' '.join(str(b.detail['fd']) for b in broken)}"
            )
            self._observe(fault, acked, None)
        return fault

    def carry(
        self, id: str, *, harmless: bool = False, fault: bool = True, **asks: Any
    ) -> dict[str, Any]:
        """A payload for message ``id`` that makes the task do ``asks`` as it runs
        (``chaos.workload``: ``hang="deadlock"``, ``leak_mb=64``, ``break_channel=True``...),
        planned as a ``workload`` fault, fired when the task logs that it acted -- in which
        process, and when. Needs a target whose task keeps the workload contract (a task that
        never hands the payload to ``chaos.workload.apply`` leaves the fault unfired).
        ``fault=False``: a mark only -- where and when the message ran, nothing planned."""
        if self._workload_log is None:
            fd, self._workload_log = tempfile.mkstemp(prefix="chaosgate-workload-", suffix=".log")
            os.close(fd)
            self._undo.callback(_remove_quietly, self._workload_log)
        token = f"{len(self._carried)}:{id}"
        detail = ", ".join(f"{k}={v}" for k, v in asks.items())
        planned = self.plan("workload", f"message {id}", detail=detail, harmless=harmless)
        if not fault:  # a mark only (which process ran the message, and when): no fault
            planned.planned, planned.harmless = 0, True
        self._carried[token] = planned
        return {**asks, "mark": self._workload_log, "token": token}

    async def submit_bad(self, target: Any, key: str, payload: Any, id: str, name: str) -> bool:
        """Submit one bad payload (``name``, from the catalog) as message ``id``, planned and
        fired as a ``payload`` fault: refused at submit (the submit raises: nothing
        acknowledged) or accepted (acknowledged: it must be committed, or dead-lettered where
        the target reports dead letters). True if accepted. A hang or the harness's own error
        is raised, never taken for a refusal."""
        planned = self.plan("payload", f"message {id}", detail=name)
        try:
            await target.submit(key, payload, id)
        except (TargetHung, ChaosError):  # (a served target's refusal is no ChaosError)
            raise
        except Exception as e:
            self.history.submitted(id, key, acked=False)
            planned.effect = f"refused at submit: {type(e).__name__}"
            accepted = False
        else:
            self.history.submitted(id, key)
            planned.effect = "accepted: must be committed or dead-lettered"
            accepted = True
        planned.fire()
        return accepted

    async def running(self, id: str, timeout: float | None = None) -> tuple[int, float]:
        """(pid, CLOCK_MONOTONIC) of the worker that began message ``id``'s task (a payload
        from ``carry(id, fault=False, sleep=s)``: busy for s seconds), from the mark the task
        logged as it began -- never from the pool; it must be one of the target's workers
        (``ChaosError``). Not begun within ``timeout`` (``target_timeout``): the pool is hung
        (``TargetHung``)."""
        timeout = self.target_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not (began := self.carried(id, "sleep")):
            if time.monotonic() > deadline:
                raise TargetHung(f"message {id}'s task did not begin within {timeout:g} s")
            await asyncio.sleep(0.01)
        pid, mono = began[0]
        if pid not in self.worker_pids():
            raise ChaosError(
                f"message {id} ran in pid {pid}, which is not one of the target's workers "
                f"{sorted(self.worker_pids())}: a fault aimed at it would miss the pool"
            )
        return pid, mono

    def carried(self, id: str, what: str) -> list[tuple[int, float]]:
        """(pid, CLOCK_MONOTONIC) of each task that logged ``what`` for message ``id``'s
        carried fault or mark (``"sleep"``: it began its work there and then;
        ``"leak:MemoryError"``: its allocation failed, so a limit bit)."""
        if self._workload_log is None:
            return []
        tokens = {t for t, f in self._carried.items() if f.target == f"message {id}"}
        return [
            (pid, mono)
            for pid, token, done, mono in workload.marks(self._workload_log)
            if token in tokens and done == what
        ]

    def failpoints(self, spec: str) -> list[Fault]:
        """Configure failpoints (counts afresh) before starting the target; each site with an
        action other than ``off`` is a planned fault, fired when the run-wide log counts it."""
        parsed = failpoints.parse(spec)
        failpoints.set_failpoints(spec)
        self._undo.callback(failpoints.set_failpoints, "", replace=True)
        planned = []
        for site, terms in parsed.items():
            replaced = self._failpoint_sites.pop(site, None)
            if replaced is not None:  # configured again: the old plan is void, not unfired
                replaced.planned = min(replaced.planned, replaced.fired)
                replaced.detail += " (then replaced)"
            acting = [t for t in terms if t.action != "off"]
            if not acting:
                continue
            exact = all(t.count and t.probability is None for t in acting)
            fault = self.plan("failpoint", f"site {site}", detail=";".join(map(str, terms)))
            fault.planned = sum(t.count or 1 for t in acting) if exact else 1
            self._failpoint_sites[site] = fault
            planned.append(fault)
        return planned

    @contextlib.contextmanager
    def limit(
        self,
        kind: str,
        manager: contextlib.AbstractContextManager[Any],
        *,
        pid: int | None = None,
        detail: str = "",
    ) -> Iterator[Any]:
        """Apply a resource fault (a context manager from ``chaos``) for the ``with`` block:
        fired when applied, lifted at the block's end (or at teardown)."""
        fault = self.plan(kind, f"pid {pid}" if pid else "the target", pid=pid, detail=detail)
        with manager as applied:
            fault.fire()
            yield applied

    def refresh(self) -> None:
        """Bring failpoint firings up to date from the run-wide log: how many, and the first
        one's time and process."""
        fired = failpoints.fires()
        for site, fault in self._failpoint_sites.items():
            times = fired.get(site, [])
            fault.fired = len(times)
            if times and fault.mono is None:
                mono, pid = times[0]
                now = time.clock_gettime(time.CLOCK_MONOTONIC)
                fault.mono = mono if mono is not None else now
                fault.pid = pid
                fault.ts = time.time() - (now - fault.mono)
                fault.effect = f"fired {len(times)} time(s), first in pid {pid}"
        if self._workload_log is not None:
            for pid, token, what, mono in workload.marks(self._workload_log):
                carried = self._carried.get(token)
                if carried is None or carried.fired:
                    continue
                if workload.refused(what):
                    carried.no_effect = f"the task refused it: {what}"
                    continue
                carried.fire(mono, time.time() - (time.clock_gettime(time.CLOCK_MONOTONIC) - mono))
                carried.pid = pid
                carried.effect = f"{what} in pid {pid}"

    def unfired(self) -> list[Fault]:
        self.refresh()
        return [f for f in self.faults if f.fired < f.planned]

    def ineffective(self) -> list[str]:
        """Why the scenario proved nothing, if it did not: faults observed to have had no
        effect (and not declared harmless), or fewer effective ones than required."""
        found = [
            f"{f.kind} of {f.target}: {f.no_effect}"
            for f in self.faults
            if f.no_effect and not f.harmless
        ]
        effective = sum(1 for f in self.faults if f.kind in _PROCESS_FAULTS and f.effective)
        if effective < self.effective_needed:
            found.append(
                f"{effective} process fault(s) had an effect, the scenario needs "
                f"{self.effective_needed}: "
                + "; ".join(f"{f.target}: {f.no_effect}" for f in self.faults if f.no_effect)[:500]
            )
        return found

    # --- what the harness observes of each process fault ----------------------------------

    def _observe(self, fault: Fault, acked: set[str], pidfd: int | None) -> None:
        """Start observing ``fault``: its effect on the victim, the work it left uncommitted,
        and the recovery (every message acknowledged before it committed), in the background
        on the running event loop (or ``self.loop``)."""
        target = self.target
        if target is None:
            if pidfd is not None:
                _close(pidfd)
            return
        coro = _observe(self, target, fault, acked, pidfd)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._observers[id(fault)] = (loop.create_task(coro), acked)
        elif self.loop is not None and self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._observers[id(fault)] = (future, acked)
        else:  # no loop at all: the effect on the victim only, observed now
            coro.close()
            _victim_effect(fault, pidfd)

    async def settle(self, final: set[str] | None = None, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout`` s in all) for each fault's observation to finish -- only
        for those whose work ``final`` (everything committed, once the target has processed
        what it acknowledged) shows recovered: the others never will, and are cancelled."""
        deadline = time.monotonic() + timeout
        for fault in self.faults:
            task, acked = self._observers.pop(id(fault), (None, set()))
            if task is None:
                continue
            if isinstance(task, concurrent.futures.Future):
                task = asyncio.wrap_future(task)
            if final is not None and not acked <= final:
                await self._effect_known(fault, deadline)
                task.cancel()
                continue
            try:
                await asyncio.wait_for(task, max(0.0, deadline - time.monotonic()))
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception as e:  # the target failed a read: say so, do not hide the verdict
                fault.disagreement = f"observing it failed: {type(e).__name__}: {e}"[:300]

    @staticmethod
    async def _effect_known(fault: Fault, deadline: float) -> None:
        while not fault.judged and time.monotonic() < deadline:
            await asyncio.sleep(POLL)

    async def effects_known(self, timeout: float = 15.0) -> None:
        """Wait until the harness has judged the effect of every fault it observes."""
        deadline = time.monotonic() + timeout
        for fault in self.faults:
            if id(fault) in self._observers:
                await self._effect_known(fault, deadline)

    # --- the verdict ----------------------------------------------------------------------

    async def verify(self, target: Any = None, *, timeout: float = 60.0) -> Verdict:
        """Check the target's committed state against the history and the SLO; raise an
        AssertionError naming every breach (see the module doc)."""
        target = target or self.target
        if target is None:
            raise ChaosError("chaos.verify(): no target; start one with chaos_target()")
        caps: Collection[str] = getattr(target, "capabilities", frozenset())
        bound = max(timeout, 2 * self.target_timeout)  # the guard's bound answers first
        committed = await asyncio.wait_for(target.committed(), bound)
        dead = dead_letters_of(target.dead_lettered()) if "dead_letters" in caps else {}
        events = target.events() if "events" in caps else []
        # What the observers count as recovered: committed, or dead-lettered as expected.
        final = {mid for ids in committed.values() for mid in ids}
        final |= set(dead) & set(self.expected_dead)
        await self.settle(final, timeout)
        timeline = events + [f.as_event() for f in self.faults if f.mono is not None]
        verdict = self.history.check(
            committed, dead, timeline, self.expected_dead, ordered="unordered" not in caps
        )
        # A chaosgate adapter (chaos.peers) keeps the ids whose result it waited for and never
        # got (a future still pending): those did not vanish, they hang.
        kept = getattr(target, "outstanding", ())
        pending = set(kept) & set(verdict.lost) if isinstance(kept, list | tuple | set) else ()
        for mid in sorted(pending):
            verdict.explanations[mid] = (
                f"{mid}: never came back -- its result still pending when committed() gave up "
                "waiting (hung: the adapter's records hold the stacks)"
            )
        return self.judge(verdict, events)

    def judge(
        self, verdict: Verdict, events: list[dict[str, Any]] | None = None, *, enforce: bool = True
    ) -> Verdict:
        """Hold a verdict (and the events, for the target's own figures) against the SLO; with
        ``enforce=False``, only record what it breaches (a scenario that expects a weakness)."""
        self.checked = True
        self.verdict = verdict
        self.events = list(events or [])
        self.refresh()
        for fault in self.faults:
            if not (fault.fired and fault.pid and self.events):
                continue
            claimed = None
            if fault.kind in _PROCESS_FAULTS:
                claimed = recovery_of(fault.mono or 0.0, fault.pid, self.events)
            elif fault.kind == "failpoint" and fault.pid != os.getpid():
                found = recovery_of(fault.mono or 0.0, fault.pid, self.events)
                if found.detection is not None:  # it took its worker down: measured too
                    claimed = found
            if claimed is not None:
                _combine(fault, claimed)
        self.breaches = breaches(self.slo, verdict, self.faults, self.events)
        if self.breaches and enforce:
            lines = self.breaches + verdict.details() + list(verdict.explanations.values())[:20]
            raise AssertionError("SLO breached:\n  " + "\n  ".join(lines))
        if enforce and (why := self.ineffective()):
            raise NoEffect(
                "a fault had no effect, so the scenario proves nothing: " + "; ".join(why)
            )
        return verdict

    def figures(self) -> dict[str, Any]:
        """p50 and p99 (ms) of detection, restart and recovery over the process faults."""
        found: dict[str, Any] = {"faults": sum(1 for f in self.faults if f.fired)}
        for figure in ("detection", "restart", "recovery"):
            values = sorted(
                getattr(f.recovery, figure) * 1000
                for f in self.faults
                if f.recovery is not None and getattr(f.recovery, figure) is not None
            )
            if values:
                found[f"{figure}_p50_ms"] = round(statistics.median(values), 1)
                found[f"{figure}_p99_ms"] = round(percentile(values, 99), 1)
        return found

    def record(self) -> dict[str, Any]:
        """The scenario as plain data, for reports."""
        self.refresh()
        v = self.verdict
        return {
            "nodeid": self.nodeid,
            "seed": self.seed,
            "slo": self.slo,
            "checked": self.checked,
            "faults": [f.as_dict() for f in self.faults],
            "verdict": None
            if v is None
            else {
                "ok": v.ok,
                "submitted": v.submitted,
                "committed": v.committed,
                **{a: getattr(v, a) for a in _ANOMALIES},
                "expected_dead": v.expected_dead,
                "explanations": v.explanations,
            },
            "breaches": self.breaches,
            "figures": self.figures(),
            "observed": self.observed,
            "examples": self.examples,
            "steps": self.steps,
            "events": self.events,
        }

    def close(self) -> None:
        for task, _ in self._observers.values():
            task.cancel()
        self._observers.clear()
        self._undo.close()


def _combine(fault: Fault, claimed: Recovery) -> None:
    """The target's own figures beside the harness's: detection and restart are the target's
    (the harness cannot see inside it); recovery stays the harness's, the claim kept beside it
    and flagged when it is much shorter than what the harness observed."""
    ours = fault.recovery.recovery if fault.recovery is not None else None
    fault.recovery = Recovery(
        fault.pid or 0, claimed.worker, claimed.detection, claimed.restart, ours
    )
    fault.claimed_recovery = claimed.recovery
    if claimed.recovery is not None and ours is not None:
        gap_ms = (ours - claimed.recovery) * 1000
        if gap_ms > DISAGREE_MS and ours > 2 * claimed.recovery:
            fault.disagreement = (
                f"the target's events claim recovery in {claimed.recovery * 1000:.0f} ms; the "
                f"harness saw everything acknowledged before the fault committed after "
                f"{ours * 1000:.0f} ms"
            )


def category(breach: str) -> str:
    """A breach's category: the word it starts with (``lost=3, ...`` -> ``lost``)."""
    return breach.split("=", 1)[0].split(" ", 1)[0].rstrip(":")


def breaches(
    slo: Mapping[str, Any], verdict: Verdict, faults: list[Fault], events: list[dict[str, Any]]
) -> list[str]:
    """One sentence per objective the run missed, each starting with its category."""
    found = []
    for anomaly in _ANOMALIES:
        n = len(getattr(verdict, anomaly))
        if n > slo.get(anomaly, 0):
            found.append(f"{anomaly}={n}, allowed {slo.get(anomaly, 0)}")
    for figure in ("detection", "restart", "recovery"):
        if slo.get(figure) is None:
            continue
        for fault in faults:
            measured = fault.kind in _PROCESS_FAULTS or fault.recovery is not None
            if not measured or not fault.fired or (fault.harmless and not fault.pending):
                continue
            value = None if fault.recovery is None else getattr(fault.recovery, figure)
            if value is None and not events and figure != "recovery":
                continue  # a target without events: measured from its committed state alone
            if value is None and figure == "recovery" and fault.pending == 0:
                continue  # nothing was outstanding at the fault: nothing to recover
            if value is None:
                found.append(f"{figure} of {fault.kind} of {fault.target}: never observed")
            elif value > slo[figure]:
                found.append(
                    f"{figure} of {fault.kind} of {fault.target}: {value * 1000:.0f} ms, "
                    f"allowed {slo[figure] * 1000:.0f} ms"
                )
    if slo.get("mode") is not None:
        final = final_mode(events)
        if final != slo["mode"]:
            found.append(f"mode: the target ended in mode {final!r}, expected {slo['mode']!r}")
    return found


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (inclusive, linear), or the only value."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def final_mode(events: list[dict[str, Any]]) -> str | None:
    """The worker mode the events leave the target in (the last start, step down or climb)."""
    modes = [
        e["mode"]
        for e in events
        if e.get("kind") in ("opened", "degraded", "recovered") and e.get("mode")
    ]
    return modes[-1] if modes else None


async def _observe(
    scenario: Scenario, target: Any, fault: Fault, acked: set[str], pidfd: int | None
) -> None:
    """The harness's own account of one process fault (see ``Scenario._observe``)."""
    try:
        await asyncio.to_thread(_victim_effect, fault, pidfd)  # closes the pidfd
        expected = scenario.expected_dead
        now = getattr(target, "committed_now", None)  # without it, committed() waits for the
        first = True  # work: recovery is then an upper bound, and pending unknown
        while True:
            age = _since(fault)
            every = FINE_POLL if age < FINE_FOR else POLL if age < SLOW_AFTER else SLOW_POLL
            every = max(every, min(2 * scenario.read_took, SLOW_POLL))  # a third of the time
            seen = await scenario.committed_ids(since=fault.mono or 0.0, max_age=every)
            if expected and "dead_letters" in getattr(target, "capabilities", ()):
                seen = seen | (set(dead_letters_of(target.dead_lettered())) & set(expected))
            left = acked - seen
            if first and now is not None:
                fault.pending = len(left)
                if left:
                    fault.effect = (
                        f"{fault.effect or 'fired'}; {len(left)} acknowledged uncommitted"
                    )
                elif fault.no_effect is None:
                    fault.no_effect = (
                        "no acknowledged work was outstanding when it hit (all of it was "
                        "already committed)"
                    )
            first, fault.judged = False, True
            if not left:
                if fault.pending or now is None:
                    fault.recovery = Recovery(fault.pid or 0, None, None, None, _since(fault))
                return
            await asyncio.sleep(every)
    finally:
        fault.judged = True  # also when the target failed a read, or the observer was cancelled


def _victim_effect(fault: Fault, pidfd: int | None) -> None:
    """What happened to the victim itself: for a signal that ends it, its exit (the pidfd
    turns readable); for a freeze, its stopped state."""
    try:
        pid = fault.pid or 0
        if fault.kind == "freeze":
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                state = _state(pid)
                if state in ("T", "t"):
                    fault.effect = "stopped (state T)"
                    return
                if state is None:
                    break
                time.sleep(0.005)
            fault.no_effect = f"pid {pid} was not seen stopped after SIGSTOP (state {state})"
        elif fault.kind in ("kill", "terminate") and pidfd is not None:
            ready, _, _ = select.select([pidfd], [], [], EXIT_WAIT)
            if ready:
                fault.effect = f"exited +{_since(fault) * 1000:.1f} ms (pidfd)"
            else:
                fault.no_effect = f"pid {pid} still alive {EXIT_WAIT:.0f} s after {fault.detail}"
        elif fault.kind == "break_pipes":
            fault.effect = fault.detail or "sockets shut down"
    finally:
        if pidfd is not None:
            _close(pidfd)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _close(fd: int | None) -> None:
    """Close a pinned pidfd; None: the process had exited before it could be pinned."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)


def _since(fault: Fault) -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC) - (fault.mono or 0.0)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _thaw_quietly(pid: int) -> None:
    with contextlib.suppress(Exception):
        _process_faults.thaw(pid)


def unfired_message(faults: list[Fault]) -> str:
    text = "planned fault(s) never fired, so the scenario proves nothing: " + "; ".join(
        f"{f.kind} of {f.target} ({f.detail or 'no detail'}): fired {f.fired} of {f.planned}"
        for f in faults
    )
    if any(f.kind == "workload" for f in faults):
        text += (
            " -- a workload fault acts only in a task that hands each payload to "
            "chaos.workload.apply(key, id, payload): does the target's task?"
        )
    return text
