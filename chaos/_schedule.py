"""Property-based fault schedules: Hypothesis interleaves traffic and faults, the checker judges.

``FaultSchedule`` is a ``RuleBasedStateMachine``. Each example starts a fresh target, submits a
first batch (so that workers exist and hold work, also in a pool that starts them lazily), and
runs a random sequence of steps -- submit a batch of messages, SIGKILL a worker, freeze one
(SIGSTOP), break its sockets, submit a poisoned payload, make a worker leak memory, drain (each
drain checks the history so far) -- then drains and holds the history against the SLO (lost,
duplicated, reordered, unexpected, unexpected dead letters: 0; every acknowledged message
committed exactly once, in order per key).

Schedules have teeth: every example must acknowledge at least ``MIN_ACKED`` messages and, for a
target with worker processes, land at least one process fault that the harness saw leave
acknowledged work uncommitted; an example whose random steps did not is topped up at its end
(a batch, then SIGKILL of a worker while that batch is outstanding). Each example's account --
steps, acknowledged, faults planned/fired/effective, verdict -- goes to the report, not only the
last one's. A failing
schedule shrinks to a minimal one, which Hypothesis prints as steps
(``state.kill_worker(which=1)``...) and ``Scenario.steps`` keeps for the report; the same
``--chaos-seed`` replays it. Steps that need a capability the target lacks are not drawn.

Every wait is bounded. Each call into an example's target is bounded by ``target_timeout``
(``chaos._guard``): a target that hangs fails its example as hung, with stack dumps, and its
processes are killed; a call that blocks the schedule's event-loop thread abandons that thread
(the next examples run on a fresh loop). Shrinking a failure has a time budget
(``SHRINK_BUDGET``: 60 s for ``ci``, or 4 x ``target_timeout`` if less; 300 s for ``soak``):
past it, the smallest failing schedule reached so far is the one replayed and reported, with a
note in its steps.

Profiles: ``ci`` (a few short schedules, within the suite's budget) and ``soak`` (many long
ones; give it time: ``--timeout 0``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ._errors import BlastRadiusError, ChaosError
from ._guard import TargetHung, made_by
from ._payloads import CATALOG
from ._pipes import breakable_sockets
from ._scenario import Scenario
from ._target import SystemTarget

T = TypeVar("T")

_ALWAYS: dict[str, Any] = {
    "deadline": None,  # steps wait on real processes
    "database": None,  # a failure replays from --chaos-seed, not from a local cache
    "phases": (Phase.explicit, Phase.generate, Phase.shrink),
    "suppress_health_check": list(HealthCheck),
    "report_multiple_bugs": False,
}
PROFILES = {
    "ci": settings(max_examples=10, stateful_step_count=10, **_ALWAYS),
    "soak": settings(max_examples=200, stateful_step_count=40, **_ALWAYS),
}
# What the schedules ask of the target: quick hang detection, memory recycling for leaks.
TARGET_OPTIONS = {
    "workers": 2,
    "partitions": 8,
    "hang_timeout": 0.5,
    "heartbeat_interval": 0.05,
    "hang_grace": 0.3,
    "start_timeout": 2.0,
    "memory_soft_limit": 200 * 2**20,
    "memory_interval": 0.05,
    "checkpoint_interval": 0.05,
}
LEAK_MB = 48
MIN_ACKED = 20  # acknowledged messages every example must have
TOP_UP_TRIES = 3  # closing kills tried for an example whose steps hurt no outstanding work
MAX_EXAMPLES_KEPT = 300  # examples described in the report (shrinking can run many)
# Seconds Hypothesis may spend shrinking a failure:
SHRINK_BUDGET: dict[str, float] = {"ci": 60, "soak": 300}


class LoopThread:
    """An event loop in a thread, so that Hypothesis's synchronous rules can drive an async
    target (and the target's own tasks run between steps, as they would in production)."""

    def __init__(self) -> None:
        self.guards: list[Any] = []  # the targets' guards: one may report this thread blocked
        self._open()

    def _open(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="chaos-schedule", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on the loop; a step past ``timeout`` -- or blocked in a target call
        past its bound -- fails as hung, and a blocked loop is abandoned for a fresh one."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(0.2)
            except concurrent.futures.TimeoutError:
                pass
            blocked = next(
                (h for g in self.guards if (h := g.blocking(self.thread.ident)) is not None), None
            )
            if blocked is not None:
                self._abandon()
                raise TargetHung(
                    f"{blocked} (the schedule's event loop is abandoned)", blocked.dumps
                )
            if time.monotonic() > deadline:
                break
        future.cancel()  # not left running behind the step that gave up on it
        try:
            waiting = asyncio.run_coroutine_threadsafe(_waiting(), self.loop).result(5)
        except concurrent.futures.TimeoutError:
            self._abandon()
            waiting = ["  (the loop's thread is blocked: abandoned for a fresh loop)"]
        raise TargetHung(
            f"a step took more than {timeout} s; the target's tasks were waiting at:\n"
            + "\n".join(waiting)
        )

    def _abandon(self) -> None:
        """The loop's thread is blocked in a target's code for good: leave it (a daemon) and
        carry on with a fresh loop."""
        self._open()

    def close(self) -> None:
        async def wind_down() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(wind_down(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if not self.thread.is_alive():
            self.loop.close()


def _rss(pids: list[int]) -> dict[int, int]:
    """Each live pid's resident memory, in bytes."""
    import psutil

    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid).memory_info().rss
    return found


async def _waiting() -> list[str]:
    """Where each task of this loop is suspended (innermost frame), for a step that hangs."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        stack = task.get_stack()
        where = f"{stack[-1].f_code.co_filename}:{stack[-1].f_lineno}" if stack else "?"
        coro: Any = task.get_coro()  # a coroutine (typed as its ABC, without __qualname__)
        found.append(f"  {task.get_name()}: {coro.__qualname__} at {where}")
    return found


@dataclass
class ScheduleRun:
    """How many schedules ran; the last one's steps and fired faults, and its scenario."""

    examples: int = 0
    steps: int = 0
    faults: int = 0
    last: Scenario | None = None
    failing: Scenario | None = None  # the last example that breached the SLO (or hung)
    hung: TargetHung | None = None  # the first hang of any example's target
    shrink_cut: bool = False  # shrinking stopped at its time budget
    failed_at: float | None = None  # time.monotonic() of the first failing example


def run_schedules(
    factory: Callable[..., Any],
    workdir: Path,
    chaos: Scenario,
    *,
    profile: str = "ci",
    target_options: dict[str, Any] | None = None,
) -> ScheduleRun:
    """Run fault schedules against targets made by ``factory(data_dir, **options)``, seeded
    and judged by ``chaos`` (the test's scenario). Raises the minimal failing schedule's error
    (Hypothesis has printed its steps); either way ``chaos`` ends up with the last schedule's
    steps, faults, events and verdict (on failure: the minimal schedule's)."""
    from hypothesis import seed as hypothesis_seed

    runner = LoopThread()
    result = ScheduleRun()
    counter = itertools.count()
    # The system pool's own settings (quick hang detection, memory recycling) go to it only:
    # another pool's factory gets just what the caller gives.
    system = isinstance(factory, type) and issubclass(factory, SystemTarget)
    options = {**(TARGET_OPTIONS if system else {}), **(target_options or {})}

    class Schedule(FaultSchedule):
        def __init__(self) -> None:
            n = next(counter)
            scenario = Scenario(f"{chaos.nodeid} example {n}", chaos.seed, dict(chaos.slo))
            scenario.loop = runner.loop
            scenario.target_timeout = chaos.target_timeout
            self.number = n
            self.accounts = chaos.examples
            self.run = result
            target = scenario.guard(made_by(factory, workdir / f"example-{n}", **options))
            for done in runner.guards:  # the examples before are over: their watchdogs too
                done.close()
            runner.guards = [target]
            result.examples += 1
            result.last = scenario
            super().__init__(runner, target, scenario)

    budget = SHRINK_BUDGET[profile]  # ci: a few examples' worth of hung calls at most
    budget = min(budget, 4 * chaos.target_timeout) if profile == "ci" else budget
    try:
        with shrink_budget(budget):
            run_state_machine_as_test(
                hypothesis_seed(chaos.seed)(Schedule), settings=PROFILES[profile]
            )
    finally:
        runner.close()
        for guard in runner.guards:
            guard.close()
        result.shrink_cut = result.failed_at is not None and (
            time.monotonic() - result.failed_at > budget
        )
        chaos.hung = chaos.hung or result.hung
        # The failing example's account, if any: a failure that depends on timing may not come
        # back on Hypothesis' final replay (FlakyFailure), and its breaches must not be lost.
        last = result.failing or result.last
        if last is not None:
            if result.shrink_cut:
                last.steps.append(
                    f"(shrinking stopped at its {budget:g} s budget: the smallest "
                    "failing schedule reached by then)"
                )
            result.steps, result.faults = len(last.steps), sum(f.fired > 0 for f in last.faults)
            chaos.steps, chaos.faults, chaos.events = last.steps, last.faults, last.events
            chaos.verdict, chaos.breaches = last.verdict, last.breaches
    return result


@contextlib.contextmanager
def shrink_budget(seconds: float) -> Any:
    """Hypothesis stops shrinking after ``seconds`` (its engine's ``MAX_SHRINKING_SECONDS``,
    300 by default, read when shrinking starts) and reports the smallest failure it reached."""
    from hypothesis.internal.conjecture import engine

    if not hasattr(engine, "MAX_SHRINKING_SECONDS"):  # a Hypothesis without it: its default
        yield
        return
    before = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = seconds  # type: ignore[assignment]  # typed int: a float works
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = before


class _Inject(Protocol):
    """A fault of the scenario's on one pid (``kill``, ``freeze``, ``break_pipes``)."""

    def __call__(self, pid: int, /, *, harmless: bool) -> object: ...


class FaultSchedule(RuleBasedStateMachine):
    """Random interleavings of traffic and faults against one fresh target (see module doc)."""

    def __init__(self, runner: LoopThread, target: Any, scenario: Scenario) -> None:
        super().__init__()
        self.runner = runner
        self.chaos = scenario
        self.chaos.target = target
        self.caps = frozenset(getattr(target, "capabilities", ()))
        self.batch = 0
        self.started = False
        self.had_workers = False
        self.number = getattr(self, "number", 0)
        self.accounts: list[dict[str, Any]] = getattr(self, "accounts", [])
        try:
            self.runner.run(target.start())
        except BaseException:  # Hypothesis will not call teardown: stop what did start
            with contextlib.suppress(Exception):
                self.runner.run(target.stop(), timeout=60)
            raise
        self.started = True

    def _step(self, text: str) -> None:
        self.chaos.steps.append(text)

    def _victim(self, which: int) -> int | None:
        """A worker process, waiting a little for one (it may be restarting): the same steps
        should hit a worker however the pool's timing plays out, so that schedules replay."""
        pids = sorted(self.chaos.worker_pids())
        if not pids and self.had_workers:  # between a death and its replacement, maybe
            try:
                pids = self.runner.run(self.chaos.workers(1, timeout=2.0))
            except ChaosError:  # none came (e.g. stepped down to threads)
                return None
        if not pids:  # a pool without worker processes (threads, inline): nothing to hurt
            return None
        self.had_workers = True
        return pids[which % len(pids)]

    @initialize(n=st.integers(MIN_ACKED, 80), keys=st.integers(1, 6))
    def first_batch(self, n: int, keys: int) -> None:
        """Every example starts with work: its workers exist (also a lazy pool's) and hold it."""
        self.submit(n, keys)
        try:
            self.runner.run(self.chaos.workers(1, timeout=1.0))
            self.had_workers = True
        except ChaosError:  # a pool without worker processes (threads, inline)
            pass

    @rule(n=st.integers(1, 80), keys=st.integers(1, 6))
    def submit(self, n: int, keys: int) -> None:
        self.batch += 1
        self._step(f"submit {n} messages over {keys} keys")
        self.runner.run(self.chaos.traffic(n, prefix=f"b{self.batch}-", keys=keys))

    @rule(which=st.integers(0, 7))
    def kill_worker(self, which: int) -> None:
        self._fault("kill", which, self.chaos.kill)

    @precondition(lambda self: "events" in self.caps)  # a pool that can see a hang
    @rule(which=st.integers(0, 7))
    def freeze_worker(self, which: int) -> None:
        self._fault("freeze", which, self.chaos.freeze)

    @rule(which=st.integers(0, 7))
    def break_pipes(self, which: int) -> None:
        pid = self._victim(which)
        try:
            breakable = pid is not None and breakable_sockets(pid)
        except ProcessLookupError:
            breakable = False
        if not breakable:
            self._step(f"break pipes of worker #{which}: no worker with a socket of its own")
            return
        self._fault("break pipes", which, self.chaos.break_pipes)

    @precondition(lambda self: "dead_letters" in self.caps)
    @rule(fault=st.sampled_from(CATALOG))
    def poison(self, fault: Any) -> None:
        self.batch += 1
        mid, key = f"poison{self.batch}-{fault.name}", f"k{self.batch % 6}"
        planned = self.chaos.plan("payload", f"message {mid}", detail=fault.name, harmless=True)
        self._step(f"submit a poisoned payload ({fault.name})")
        # The contract (scenarios/test_payloads.py): refused at submit, or acknowledged and
        # then committed or dead-lettered; never acknowledged and lost.
        try:
            self.runner.run(self.chaos.target.submit(key, fault.make(), mid))
        except Exception as e:
            self.chaos.history.submitted(mid, key, acked=False)
            planned.effect = f"refused at submit: {type(e).__name__}"
        else:
            self.chaos.history.submitted(mid, key)
            self.chaos.expect_dead_letters([mid])
            planned.effect = "accepted"
        planned.fire()

    @precondition(lambda self: "leak" in self.caps)
    @rule()
    def leak(self) -> None:
        self.batch += 1
        mid, key = f"leak{self.batch}", f"k{self.batch % 6}"
        fault = self.chaos.plan(
            "leak", f"message {mid}", detail=f"{LEAK_MB} MB kept by a worker", harmless=True
        )
        self._step(f"submit a message that makes its worker keep {LEAK_MB} MB more")
        before = _rss(self.chaos.worker_pids())
        self.runner.run(self.chaos.target.submit(key, {"leak_mb": LEAK_MB}, mid))
        self.chaos.history.submitted(mid, key)
        fault.fire()
        self.runner.run(self.chaos.drain())
        after = _rss(self.chaos.worker_pids())
        grew = [p for p in after if p in before and after[p] - before[p] > LEAK_MB * 2**19]
        if grew:
            fault.effect = (
                f"RSS of pid {grew[0]} grew by {(after[grew[0]] - before[grew[0]]) >> 20} MB"
            )
        elif set(before) - set(after):
            fault.effect = f"worker(s) {sorted(set(before) - set(after))} replaced after it"
        else:
            fault.no_effect = "no worker's RSS grew by half the leak, and none was replaced"

    @rule()
    def drain(self) -> None:
        """Drain, then check the history so far (a failure shows at the drain that saw it)."""
        self._step("drain, then check")
        self.runner.run(self.chaos.verify(), timeout=180)

    def _fault(self, what: str, which: int, inject: _Inject) -> None:
        pid = self._victim(which)
        if pid is None:
            self._step(f"{what} worker #{which}: no worker to hurt")
            return
        before = len(self.chaos.faults)
        try:
            inject(pid, harmless=True)  # a step may find nothing to hurt; the example may not
        except (ProcessLookupError, ValueError, BlastRadiusError) as e:  # it exited meanwhile
            self._step(f"{what} worker #{which} (pid {pid}): gone before the fault ({e})")
            return
        if any(not f.fired for f in self.chaos.faults[before:]):  # e.g. no socket left to break
            del self.chaos.faults[before:]
            self._step(f"{what} worker #{which} (pid {pid}): gone before the fault")
            return
        self._step(f"{what} worker #{which} (pid {pid})")

    def _effective(self) -> int:
        self.runner.run(self.chaos.effects_known())
        return sum(
            1
            for f in self.chaos.faults
            if f.kind in ("kill", "freeze", "break_pipes") and f.effective
        )

    def _top_up(self) -> None:
        """Give an example without teeth its minimum: acknowledged work, and a process fault
        that hit some of it while it was outstanding."""
        acked = len(self.chaos.history.acked())
        if acked < MIN_ACKED:
            self.submit(MIN_ACKED - acked, 3)
        if not self.had_workers:
            return
        for _ in range(TOP_UP_TRIES):
            if self._effective():
                return
            # 40 messages of 5 ms each: the victim holds work when the kill lands, however
            # loaded the machine (without work, a fast pool may have committed it all -- or
            # hold it only in its queue, where a bug about in-flight work never shows).
            self.batch += 1
            self._step("submit 40 messages of 5 ms work over 4 keys")
            self.runner.run(self.chaos.traffic(40, prefix=f"b{self.batch}-", keys=4, work=0.005))
            self._fault("closing kill", 0, self.chaos.kill)
        self.chaos.require_effective(1)  # checked by verify: "no effect" if none landed

    def teardown(self) -> None:
        try:
            if self.started:
                self._top_up()
                self._step("drain, then check")
                self.runner.run(self.chaos.verify(), timeout=180)
        finally:
            self._account()
            self.chaos.close()  # thaw what is still frozen
            with contextlib.suppress(Exception):
                self.runner.run(self.chaos.target.stop(), timeout=60)

    def _account(self) -> None:
        """This example, for the report."""
        c, v = self.chaos, self.chaos.verdict
        run = getattr(self, "run", None)
        if (c.breaches or c.hung) and run is not None:
            run.failing = c
            run.hung = run.hung or c.hung
            run.failed_at = run.failed_at or time.monotonic()
        if len(self.accounts) >= MAX_EXAMPLES_KEPT:
            return
        self.accounts.append(
            {
                "example": self.number,
                "steps": len(c.steps),
                "acked": len(c.history.acked()),
                "planned": len(c.faults),
                "fired": sum(1 for f in c.faults if f.fired),
                "effective": sum(1 for f in c.faults if f.effective),
                "verdict": "unchecked" if v is None else v.summary(),
                "breaches": list(c.breaches),
            }
        )
