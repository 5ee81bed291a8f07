"""chaos._guard: every call into a target bounded (awaited or blocking its thread), a hang's
evidence gathered and its processes killed, anything a target raises contained."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from chaos import ChaosError, ContractError, Guarded, TargetError, TargetHung
from chaos._guard import GRACE, format_error, interruptible

BOUND = 1.0


def _sleep_forever() -> None:
    time.sleep(3600)


class Wedged:
    """A target with one child process whose calls hang in each of the two ways."""

    capabilities = frozenset()

    def __init__(self) -> None:
        self.child = multiprocessing.get_context("spawn").Process(target=_sleep_forever)
        self.stopped = False

    async def start(self) -> None:
        self.child.start()

    async def committed(self) -> dict:
        await asyncio.Event().wait()  # awaits what never comes
        return {}

    async def submit(self, key: str, payload: object, id: str) -> None:
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # blocks the thread, event loop and all

    def worker_pids(self) -> list[int]:
        return [self.child.pid]

    async def stop(self) -> None:
        self.stopped = True
        self.child.join(1)


def tree_of(target: Wedged):
    return lambda: [psutil.Process(target.child.pid)] if target.child.is_alive() else []


async def test_an_awaited_call_past_its_bound_is_a_hang_with_dumps_and_the_tree_killed() -> None:
    target = Wedged()
    guarded = Guarded(target, BOUND, tree=tree_of(target))
    await guarded.start()
    t0 = time.monotonic()
    with pytest.raises(TargetHung, match=r"committed\(\) did not return within 1 s") as hung:
        await guarded.committed()
    took = time.monotonic() - t0
    assert BOUND <= took < BOUND + 15, took  # the bound, plus the time py-spy takes
    assert "waited at committed (test_chaos_guard.py" in str(hung.value)
    assert "1 target process(es) killed" in str(hung.value)
    assert f"target process {target.child.pid}" in hung.value.dumps
    assert "harness thread MainThread" in hung.value.dumps
    target.child.join(5)
    assert target.child.exitcode == -9
    # A hung target answers nothing more -- but it may still stop.
    t0 = time.monotonic()
    with pytest.raises(TargetHung, match=r"submit\(\) not tried: .*committed\(\)"):
        await guarded.submit("k", 1, "m1")
    assert time.monotonic() - t0 < 0.5
    await guarded.stop()
    assert target.stopped
    guarded.close()


async def test_a_call_that_blocks_the_main_thread_is_interrupted() -> None:
    target = Wedged()
    guarded = Guarded(target, BOUND, tree=tree_of(target))
    await guarded.start()
    t0 = time.monotonic()
    with interruptible(), pytest.raises(TargetHung, match="it blocked its thread") as hung:
        await guarded.submit("k", 1, "m1")
    took = time.monotonic() - t0
    assert BOUND + GRACE <= took < BOUND + GRACE + 15, took
    assert "waited at submit (test_chaos_guard.py" in str(hung.value)
    target.child.join(5)
    assert target.child.exitcode == -9
    guarded.close()


class Recursive(Exception):
    def __init__(self) -> None:
        super().__init__("recursive")
        self.__cause__ = self  # a cause that is itself


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class NotAnException(BaseException):
    pass


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


class Raising:
    """A target whose submit raises ``error`` (a factory), the way a broken adapter might."""

    capabilities = frozenset()

    def __init__(self, error) -> None:
        self.error = error

    async def submit(self, key: str, payload: object, id: str) -> None:
        raise self.error()

    def worker_pids(self) -> list[int]:
        raise self.error()


PATHOLOGICAL = {
    "recursive cause": Recursive,
    "__str__ raises": BadStr,
    "BaseException subclass": NotAnException,
    "SystemExit": lambda: SystemExit(3),
    "unpicklable": Unpicklable,
    "deep recursion": lambda: _catch(lambda: _recurse(0)),
}


def _catch(fn):
    try:
        fn()
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


@pytest.mark.parametrize("name", PATHOLOGICAL)
async def test_whatever_a_target_raises_is_contained(name: str) -> None:
    guarded = Guarded(Raising(PATHOLOGICAL[name]), BOUND)
    for call in (lambda: asyncio.wait_for(guarded.submit("k", 1, "m"), 5), None):
        with pytest.raises(TargetError) as caught:
            if call is not None:
                await call()
            else:
                guarded.worker_pids()
        error = caught.value
        text = str(error)
        assert error.__cause__ is None and error.__suppress_context__
        assert len(text) < 5000 and text.count("\n") < 200
        assert type(error.original).__name__ in text
        pickle.loads(pickle.dumps(TargetError("x", ValueError("y"))))  # plain to report
    guarded.close()


async def test_the_harness_own_errors_and_cancellation_pass_through() -> None:
    guarded = Guarded(Raising(lambda: ChaosError("ours")), BOUND)
    with pytest.raises(ChaosError, match="ours"):
        await guarded.submit("k", 1, "m")
    slow = Guarded(Wedged(), 30.0)
    task = asyncio.ensure_future(slow.committed())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.hung is None
    guarded.close()
    slow.close()


def test_a_traceback_is_readable_and_bounded() -> None:
    text = format_error(_catch(lambda: _recurse(0)), limit=2000)
    assert "RecursionError" in text and len(text) <= 2100
    assert "_recurse" in text


ROOT = Path(__file__).resolve().parent.parent


PATHOLOGICAL_TARGETS = ("Recursive", "BadStr", "NotAnException", "DeepRecursion")


def test_schedules_against_targets_raising_pathological_exceptions(tmp_path) -> None:
    """No INTERNALERROR, no crash: the gate names the target's error (exit 10). The four runs
    go side by side (each is a pytest of its own, mostly waiting on its schedule)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    runs = {
        target: subprocess.Popen(
            [
                *(sys.executable, "-m", "pytest", "scenarios/test_fault_schedules.py"),
                *("--chaos-target", f"pathological:{target}", "--chaos-gate", "--chaos-seed", "1"),
                *("--chaos-report", str(tmp_path / target), "-p", "no:cacheprovider", "-q"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for target in PATHOLOGICAL_TARGETS
    }
    try:
        for target, run in runs.items():
            out = run.communicate(timeout=300)[0]
            assert "INTERNALERROR" not in out, out[-3000:]
            assert run.returncode == 10, out[-3000:]
            report = tmp_path / target / "latest" / "report.json"
            (finding,) = json.loads(report.read_text())["run"]["gate"]["findings"]
            assert finding["category"] == "target_error", finding
            assert f"{target if target != 'DeepRecursion' else 'RecursionError'}" in finding["text"]
            assert "gate: WEAKNESS (exit 10)" in out
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait(timeout=30)


class Unsafe:
    """committed() breaks while a submit is in flight, as an adapter with unguarded state does."""

    capabilities = frozenset()

    def __init__(self) -> None:
        self.submitting = asyncio.Event()

    async def submit(self, key: str, payload: object, id: str) -> None:
        self.submitting.set()
        await asyncio.sleep(0.2)
        self.submitting.clear()

    async def committed(self) -> dict:
        if self.submitting.is_set():
            raise RuntimeError("dictionary changed size during iteration")
        return {}


async def test_a_read_that_breaks_while_submits_go_on_breaks_the_contract() -> None:
    guarded = Guarded(Unsafe(), BOUND)
    assert await guarded.committed() == {}  # alone, it works
    submit = asyncio.ensure_future(guarded.submit("k", 1, "m"))
    await asyncio.wait_for(guarded.target.submitting.wait(), 5)
    with pytest.raises(ContractError, match=r"committed\(\) raised while a submit\(\) was in"):
        await guarded.committed()
    await submit
    guarded.close()


class ListsTheDead:
    """worker_pids() goes on listing a worker long dead (an adapter that never refreshes)."""

    capabilities = frozenset()

    def __init__(self, dead: int, live: int) -> None:
        self.pids = [dead, live]

    def worker_pids(self) -> list[int]:
        return list(self.pids)


async def test_a_dead_worker_listed_for_long_breaks_the_contract(monkeypatch) -> None:
    import chaos._scenario as scenario_module
    from chaos import Scenario

    monkeypatch.setattr(scenario_module, "DEAD_LISTED", 0.5)
    dead = multiprocessing.get_context("spawn").Process(target=_sleep_forever)
    live = multiprocessing.get_context("spawn").Process(target=_sleep_forever)
    dead.start()
    live.start()
    try:
        dead.kill()
        dead.join(5)
        chaos = Scenario("t", 1)
        chaos.target = ListsTheDead(dead.pid, live.pid)
        t0 = time.monotonic()
        with pytest.raises(ContractError, match=rf"still lists pid\(s\) \[{dead.pid}\]"):
            await chaos.workers(2, timeout=30)
        assert time.monotonic() - t0 < 5  # the contract's grace, not the whole timeout
        assert await chaos.workers(1) == [live.pid]
    finally:
        live.kill()
        live.join(5)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.12 keeps ast's state per thread")
def test_tracebacks_formatted_in_threads_do_not_corrupt_ast() -> None:
    """The cause of "INTERNALERROR> SystemError: AST constructor recursion depth mismatch": the
    race shows without the plugin's patch, and never with it."""

    def seen(*patched: str) -> int:
        run = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "ast_race.py"), "4", *patched],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert seen() > 0  # the race is real here
    assert seen("patched") == 0
