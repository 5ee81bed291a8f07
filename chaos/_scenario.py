"""A scenario's faults and verdict: the ``chaos`` fixture of the pytest plugin.

``Scenario`` injects faults on the scenario's behalf and keeps the schedule: each fault is
*planned* when asked for and *fired* when it really happened (a signal delivered, a failpoint
firing counted in the run-wide log, a limit applied, a bad payload submitted). A planned fault
that never fired fails the scenario -- it would prove nothing. Everything it started is reverted
at teardown: frozen processes thawed, limits lifted, failpoints cleared.

``await chaos.verify()`` reads the target's committed state, runs the checker on the history,
measures each process fault's recovery (from the target's events, or from its committed state
alone for a target without events) and holds it all against the scenario's
``chaos_slo(...)`` marker; a breach fails with one line per breach and the anomalies explained.
``record()`` is the JSON-ready account of the scenario that reports are made from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _failpoints, _pipes, _process_faults
from ._checker import History, Verdict
from ._errors import ChaosError
from ._recovery import Recovery, recovery_of
from ._target import drained, submit_traffic

SLO_KEYS = {
    "lost": "most lost messages allowed (default 0)",
    "duplicated": "most duplicated messages allowed (default 0)",
    "reordered": "most reordered messages allowed (default 0)",
    "unexpected": "most unexpected messages allowed (default 0)",
    "recovery": "seconds from each process fault until its in-flight work is committed again",
    "detection": "seconds from each process fault until the target noticed it",
    "restart": "seconds from each process fault until a replacement was ready",
    "mode": "the worker mode the target must end in (e.g. 'inline' after a step down)",
}
_DEFAULT_SLO = {"lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0}
_PROCESS_FAULTS = {"kill", "terminate", "freeze", "break_pipes"}


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
    recovery: Recovery | None = None

    def fire(self, mono: float | None = None, ts: float | None = None) -> Fault:
        self.fired += 1
        if self.mono is None:
            self.mono = mono if mono is not None else time.clock_gettime(time.CLOCK_MONOTONIC)
            self.ts = ts if ts is not None else time.time()
        return self

    def as_event(self) -> dict[str, Any]:
        """The fault as a timeline event, for the checker's explanations."""
        return {"kind": "fault", "mono": self.mono, "pid": self.pid, "reason": self.describe()}

    def describe(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recovery"] = None if self.recovery is None else self.recovery.as_dict()
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
    checked: bool = False
    rng: random.Random = field(init=False, repr=False)
    _undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _failpoint_sites: dict[str, Fault] = field(default_factory=dict, repr=False)
    _pollers: dict[int, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- traffic ------------------------------------------------------------------------

    async def traffic(
        self, n: int, *, prefix: str, keys: int = 8, drain_every: int | None = None
    ) -> None:
        """Submit the list-append workload to the target, recorded in the history."""
        await submit_traffic(
            self.target, self.history, n, prefix=prefix, keys=keys, drain_every=drain_every
        )

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until the target has processed everything it acknowledged."""
        await drained(self.target, timeout)

    async def workers(self, n: int = 1, timeout: float = 30.0) -> list[int]:
        """The target's worker pids, once it has at least ``n``."""
        deadline = time.monotonic() + timeout
        while len(pids := self.target.worker_pids()) < n:
            if time.monotonic() > deadline:
                raise ChaosError(f"the target had {len(pids)} worker(s) after {timeout} s, not {n}")
            await asyncio.sleep(0.01)
        return sorted(pids)

    # --- faults -------------------------------------------------------------------------

    def plan(self, kind: str, target: str, *, pid: int | None = None, detail: str = "") -> Fault:
        """Record a fault that the scenario injects itself; call ``.fire()`` once it happened."""
        fault = Fault(kind, target, pid=pid, detail=detail)
        self.faults.append(fault)
        return fault

    def _signal(self, kind: str, pids: tuple[int, ...], sig: int) -> list[Fault]:
        name = signal.Signals(sig).name
        faults = []
        for injected in _process_faults.send_signals(pids, sig, kind=kind):
            fault = self.plan(kind, f"pid {injected.pid}", pid=injected.pid, detail=name)
            faults.append(fault.fire(injected.mono, injected.ts))
            self._watch_recovery(fault)
        return faults

    def kill(self, pid: int, *more: int, sig: int = signal.SIGKILL) -> Fault:
        """Send ``sig`` (SIGKILL) to ``pid`` -- and to ``more`` pids in the same instant: all
        are pinned and checked first, then signalled back to back. The first pid's fault."""
        return self._signal("kill", (pid, *more), sig)[0]

    def terminate(self, pid: int) -> Fault:
        return self._signal("terminate", (pid,), signal.SIGTERM)[0]

    def freeze(self, pid: int) -> Fault:
        """SIGSTOP ``pid``; it gets SIGCONT at teardown if it is still there."""
        fault = self._signal("freeze", (pid,), signal.SIGSTOP)[0]
        self._undo.callback(_thaw_quietly, pid)
        return fault

    def break_pipes(self, pid: int) -> Fault:
        """Shut every socket of ``pid`` down from outside (fired if it had one)."""
        broken = _pipes.break_sockets(pid)
        fault = self.plan("break_pipes", f"pid {pid}", pid=pid)
        if broken:
            fault.fire(broken[0].mono, broken[0].ts)
            fault.detail = (
                f"{len(broken)} socket(s): fds {' '.join(str(b.detail['fd']) for b in broken)}"
            )
            self._watch_recovery(fault)
        return fault

    def failpoints(self, spec: str) -> list[Fault]:
        """Configure failpoints (counts afresh) before starting the target; each site with an
        action other than ``off`` is a planned fault, fired when the run-wide log counts it."""
        parsed = _failpoints.parse(spec)
        _failpoints.set_failpoints(spec)
        self._undo.callback(_failpoints.set_failpoints, "", replace=True)
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
        fired = _failpoints.fires()
        for site, fault in self._failpoint_sites.items():
            times = fired.get(site, [])
            fault.fired = len(times)
            if times and fault.mono is None:
                mono, pid = times[0]
                now = time.clock_gettime(time.CLOCK_MONOTONIC)
                fault.mono = mono if mono is not None else now
                fault.pid = pid
                fault.ts = time.time() - (now - fault.mono)

    def unfired(self) -> list[Fault]:
        self.refresh()
        return [f for f in self.faults if f.fired < f.planned]

    # --- recovery of targets without events ----------------------------------------------

    def _watch_recovery(self, fault: Fault) -> None:
        """For a target without events: poll its committed state until every message
        acknowledged before the fault is committed (or dead-lettered)."""
        target = self.target
        if target is None or "events" in getattr(target, "capabilities", ()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        acked = {s.id for s in self.history.submits if s.acked}
        task = loop.create_task(_committed_again(target, acked, fault))
        self._pollers[id(fault)] = (task, acked)

    # --- the verdict ----------------------------------------------------------------------

    async def verify(self, target: Any = None, *, timeout: float = 60.0) -> Verdict:
        """Check the target's committed state against the history and the SLO; raise an
        AssertionError naming every breach (see the module doc)."""
        target = target or self.target
        if target is None:
            raise ChaosError("chaos.verify(): no target; start one with chaos_target()")
        caps = getattr(target, "capabilities", frozenset())
        committed = await target.committed()
        dead = target.dead_lettered() if "dead_letters" in caps else []
        events = target.events() if "events" in caps else []
        final = {mid for ids in committed.values() for mid in ids} | set(dead)
        deadline = time.monotonic() + timeout  # one deadline for all the faults
        for fault in self.faults:
            task, acked = self._pollers.pop(id(fault), (None, set()))
            if task is None:
                continue
            if acked <= final:  # it has recovered, or is about to see it
                left = max(0.0, deadline - time.monotonic())
                with contextlib.suppress(asyncio.TimeoutError):
                    fault.recovery = await asyncio.wait_for(task, left)
            else:  # some of it never came back: no recovery to wait for
                task.cancel()
        timeline = events + [f.as_event() for f in self.faults if f.fired and f.pid]
        return self.judge(self.history.check(committed, dead, timeline), events)

    def judge(
        self, verdict: Verdict, events: list[dict[str, Any]] | None = None, *, enforce: bool = True
    ) -> Verdict:
        """Hold a verdict (and the events, for recovery figures) against the SLO; with
        ``enforce=False``, only record what it breaches (a scenario that expects a weakness)."""
        self.checked = True
        self.verdict = verdict
        self.events = list(events or [])
        self.refresh()
        for fault in self.faults:
            if not (fault.fired and fault.pid and self.events):
                continue
            if fault.kind in _PROCESS_FAULTS:
                fault.recovery = recovery_of(fault.mono or 0.0, fault.pid, self.events)
            elif fault.kind == "failpoint" and fault.pid != os.getpid():
                found = recovery_of(fault.mono or 0.0, fault.pid, self.events)
                if found.detection is not None:  # it took its worker down: measured too
                    fault.recovery = found
        self.breaches = breaches(self.slo, verdict, self.faults, self.events)
        if self.breaches and enforce:
            lines = self.breaches + verdict.details() + list(verdict.explanations.values())[:20]
            raise AssertionError("SLO breached:\n  " + "\n  ".join(lines))
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
                **{a: getattr(v, a) for a in ("lost", "duplicated", "reordered", "unexpected")},
                "dead_lettered": v.dead_lettered,
                "explanations": v.explanations,
            },
            "breaches": self.breaches,
            "figures": self.figures(),
            "observed": self.observed,
            "steps": self.steps,
            "events": self.events,
        }

    def close(self) -> None:
        for task, _ in self._pollers.values():
            task.cancel()
        self._pollers.clear()
        self._undo.close()


def breaches(
    slo: Mapping[str, Any], verdict: Verdict, faults: list[Fault], events: list[dict[str, Any]]
) -> list[str]:
    """One sentence per objective the run missed."""
    found = []
    for anomaly in ("lost", "duplicated", "reordered", "unexpected"):
        n = len(getattr(verdict, anomaly))
        if n > slo.get(anomaly, 0):
            found.append(f"{anomaly}={n}, allowed {slo.get(anomaly, 0)}")
    for figure in ("detection", "restart", "recovery"):
        if slo.get(figure) is None:
            continue
        for fault in faults:
            measured = fault.kind in _PROCESS_FAULTS or fault.recovery is not None
            if not measured or not fault.fired:
                continue
            value = None if fault.recovery is None else getattr(fault.recovery, figure)
            if value is None and not events and figure != "recovery":
                continue  # a target without events: measured from its committed state alone
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
            found.append(f"the target ended in mode {final!r}, expected {slo['mode']!r}")
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


async def _committed_again(target: Any, acked: set[str], fault: Fault) -> Recovery:
    dead_letters = getattr(target, "dead_lettered", None)
    while True:
        committed = await target.committed()
        seen = {mid for ids in committed.values() for mid in ids}
        if dead_letters is not None and "dead_letters" in getattr(target, "capabilities", ()):
            seen |= set(dead_letters())
        if acked <= seen:
            return Recovery(fault.pid or 0, None, None, None, _since(fault))
        await asyncio.sleep(0.02)


def _since(fault: Fault) -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC) - (fault.mono or 0.0)


def _thaw_quietly(pid: int) -> None:
    with contextlib.suppress(Exception):
        _process_faults.thaw(pid)


def unfired_message(faults: list[Fault]) -> str:
    return "planned fault(s) never fired, so the scenario proves nothing: " + "; ".join(
        f"{f.kind} of {f.target} ({f.detail or 'no detail'}): fired {f.fired} of {f.planned}"
        for f in faults
    )
