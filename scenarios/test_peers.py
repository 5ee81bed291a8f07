from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from chaos import SystemTarget, load_target
from chaos._cells import judge_cell, strict_params
from chaos._matrix import FAMILIES
from chaos.peers import LokyTarget, MultiprocessingPoolTarget, ProcessPoolTarget
from chaos.pytest_plugin import chosen_target

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

MB = 2**20
WORKERS = 2
TARGETS: dict[str, Any] = {
    "system": SystemTarget,
    "ProcessPoolExecutor": ProcessPoolTarget,
    "multiprocessing.Pool": MultiprocessingPoolTarget,
    "loky": LokyTarget,
}
SPECS = {  # the same pools, as a served process builds them
    "system": "chaos:SystemTarget",
    "ProcessPoolExecutor": "chaos.peers:ProcessPoolTarget",
    "multiprocessing.Pool": "chaos.peers:MultiprocessingPoolTarget",
    "loky": "chaos.peers:LokyTarget",
}
SYSTEM_OPTIONS = {"hang_timeout": 2.0, "heartbeat_interval": 0.1, "memory_interval": 0.1}
PEER_OPTIONS = {"collect_timeout": 3.0, "stop_timeout": 3.0}  # how long "never" is, here
PY = f"CPython {sys.version_info.major}.{sys.version_info.minor}"
YOURS = "yours"  # the column of the run's --chaos-target, when one is given

# What each pool does with each fault on this Python version: the class, and why ("a|b": either,
# where the pool's own threads race and both are the same weakness seen from two sides).
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    **{("system", f): ("recovered", "") for f in FAMILIES},
    ("system", "memory_growth"): ("recycled", ""),
    ("system", "sigterm"): ("drained", ""),
    ("system", "bad_result"): (
        "n/a",
        "its handler keeps its state in the worker: no task result travels back to unpickle",
    ),
    ("ProcessPoolExecutor", "exhaustion"): (
        "n/a",
        "the killed worker breaks the executor (BrokenProcessPool) before it would start "
        "another process: the cap has nothing to refuse, and the kill alone decides",
    ),
    ("multiprocessing.Pool", "exhaustion"): (
        "hung",
        "the killed worker's task never comes back, and the replacement it forks is refused",
    ),
    ("loky", "exhaustion"): (
        "lost|broken",  # either, by a race of loky's threads (broken: 2 of about 15 runs)
        "a worker killed while no process can start fails the pending futures "
        "(TerminatedWorkerError); whether the next submit is refused as well (RuntimeError: "
        "no thread for a new executor) depends on how far loky's threads got",
    ),
    ("ProcessPoolExecutor", "sigterm"): (
        "lost",
        "SIGTERM to its process tree ends the workers mid-task (they have no handler): the "
        "executor breaks, and what was in flight or queued is lost",
    ),
    ("multiprocessing.Pool", "sigterm"): (
        "lost",
        "SIGTERM to its process tree ends the workers mid-task, and terminate() at the stop "
        "drops what was queued",
    ),
    ("loky", "sigterm"): (
        "lost",
        "SIGTERM to its process tree ends the workers mid-task: the pending futures fail",
    ),
    ("ProcessPoolExecutor", "kill_busy"): (
        "broken",
        "SIGKILL of one worker fails every pending future with BrokenProcessPool, never-started "
        "ones included, and the executor refuses all further work",
    ),
    ("ProcessPoolExecutor", "kill_idle"): (
        "broken",
        "SIGKILL of idle workers breaks the whole executor (BrokenProcessPool)",
    ),
    ("ProcessPoolExecutor", "bad_argument"): (
        "broken",
        "an argument that raises on unpickle breaks the executor (BrokenProcessPool)",
    ),
    ("ProcessPoolExecutor", "bad_result"): (
        "broken",
        "a result that raises on unpickle breaks the executor (BrokenProcessPool)",
    ),
    ("ProcessPoolExecutor", "memory_growth"): ("grew", "workers are never recycled for memory"),
    ("ProcessPoolExecutor", "kill_all"): (
        "broken",
        "SIGKILL of every busy worker fails every pending future (BrokenProcessPool), and the "
        "executor refuses all further work",
    ),
    ("ProcessPoolExecutor", "freeze"): (
        "hung",
        "a stopped worker is never noticed: its task never returns, and shutdown() blocks on it",
    ),
    ("ProcessPoolExecutor", "deadlock"): (
        "hung",
        "there is no task timeout: a deadlocked task never returns, and shutdown() blocks on it",
    ),
    ("ProcessPoolExecutor", "busy_loop"): (
        "hung",
        "there is no task timeout: a spinning task never returns, and shutdown() blocks on it",
    ),
    ("ProcessPoolExecutor", "pipe_outside"): (
        "n/a",
        "its workers talk over pipes, not sockets: the channel is broken from inside instead",
    ),
    ("ProcessPoolExecutor", "pipe_inside"): (
        "broken",
        "a worker whose channel breaks dies, and the executor with it (BrokenProcessPool)",
    ),
    ("ProcessPoolExecutor", "payload_catalog"): (
        "broken",
        "submit() refuses no bad payload: unpicklable ones fail their futures later, and one "
        "that raises on unpickle breaks the executor (BrokenProcessPool)",
    ),
    ("ProcessPoolExecutor", "rlimit_as"): (
        "lost",
        "a MemoryError in a task fails its future: the message is never tried again",
    ),
    ("ProcessPoolExecutor", "oom_kill"): (
        "broken",
        "a worker ended by the kernel's OOM killer breaks the executor (BrokenProcessPool)",
    ),
    ("multiprocessing.Pool", "kill_busy"): (
        "hung",
        "SIGKILL of a busy worker loses its task silently: the result never arrives",
    ),
    ("multiprocessing.Pool", "kill_idle"): (
        "hung",
        "SIGKILL of an idle worker that holds the task queue's lock (here: every idle worker, so "
        "that the holder is among them) wedges the pool: no task runs again, and even "
        "terminate() blocks",
    ),
    ("multiprocessing.Pool", "bad_argument"): (
        "hung",
        "an argument that raises on unpickle kills the worker's task: its result never arrives",
    ),
    ("multiprocessing.Pool", "bad_result"): (
        "hung",
        "a result that raises on unpickle kills the result handler: nothing arrives any more",
    ),
    ("multiprocessing.Pool", "memory_growth"): ("grew", "workers are never recycled for memory"),
    ("multiprocessing.Pool", "kill_all"): (
        "hung",
        "SIGKILL of busy workers loses their tasks silently: the results never arrive",
    ),
    ("multiprocessing.Pool", "freeze"): (
        "hung",
        "a stopped worker is never noticed: its result never arrives, and terminate() blocks",
    ),
    ("multiprocessing.Pool", "deadlock"): (
        "hung",
        "there is no task timeout: a deadlocked task's result never arrives",
    ),
    ("multiprocessing.Pool", "busy_loop"): (
        "hung",
        "there is no task timeout: a spinning task's result never arrives",
    ),
    ("multiprocessing.Pool", "pipe_outside"): (
        "n/a",
        "its workers talk over pipes, not sockets: the channel is broken from inside instead",
    ),
    ("multiprocessing.Pool", "pipe_inside"): (
        "hung",
        "a worker whose channel breaks exits and is replaced, but its task's result never arrives",
    ),
    ("multiprocessing.Pool", "payload_catalog"): (
        "hung",
        "unpicklable payloads fail their tasks; one that raises on unpickle kills its task "
        "silently: its result never arrives",
    ),
    ("multiprocessing.Pool", "rlimit_as"): (
        "lost",
        "a MemoryError in a task fails it: the message is never tried again",
    ),
    ("multiprocessing.Pool", "oom_kill"): (
        "hung",
        "a worker ended by the kernel's OOM killer loses its task silently: the result never "
        "arrives",
    ),
    ("loky", "kill_busy"): (
        "lost",
        "SIGKILL of a worker fails the pending futures with TerminatedWorkerError; the next "
        "get_reusable_executor() starts afresh",
    ),
    ("loky", "kill_idle"): (
        "lost",
        "SIGKILL of idle workers fails the futures submitted next (TerminatedWorkerError)",
    ),
    ("loky", "bad_argument"): (
        "lost",
        "an argument that raises on unpickle breaks the executor: every pending future fails "
        "(BrokenProcessPool); the next get_reusable_executor() starts afresh",
    ),
    ("loky", "bad_result"): (
        "lost",
        "a result that raises on unpickle breaks the executor: every pending future fails "
        "(BrokenProcessPool); the next get_reusable_executor() starts afresh",
    ),
    ("loky", "kill_all"): (
        "lost",
        "SIGKILL of the busy workers fails the pending futures (TerminatedWorkerError); the "
        "next get_reusable_executor() starts afresh",
    ),
    ("loky", "freeze"): (
        "hung",
        "a stopped worker is never noticed: its task never returns",
    ),
    ("loky", "deadlock"): ("hung", "there is no task timeout: a deadlocked task never returns"),
    ("loky", "busy_loop"): ("hung", "there is no task timeout: a spinning task never returns"),
    ("loky", "pipe_outside"): (
        "n/a",
        "its workers talk over pipes, not sockets: the channel is broken from inside instead",
    ),
    ("loky", "pipe_inside"): (
        "lost",
        "a worker whose channel breaks dies: the pending futures fail (TerminatedWorkerError)",
    ),
    ("loky", "payload_catalog"): (
        "lost",
        "submit() refuses no bad payload: unpicklable ones fail their futures (PicklingError), "
        "one that raises on unpickle breaks the executor (BrokenProcessPool); loky flags it "
        "broken before it fails the futures, so the next get_reusable_executor() starts afresh",
    ),
    ("loky", "rlimit_as"): (
        "lost",
        "a MemoryError in a task fails its future: the message is never tried again",
    ),
    ("loky", "oom_kill"): (
        "lost",
        "a worker ended by the kernel's OOM killer fails the pending futures "
        "(TerminatedWorkerError)",
    ),
    ("loky", "memory_growth"): (
        "recycled",
        "a worker is recycled once it has grown past loky's 300 MB leak threshold",
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every pool x every family; with ``--chaos-target``, a column for that target too."""
    if "family" not in metafunc.fixturenames:
        return
    found = strict_params(TARGETS, FAMILIES, EXPECTED, PY)
    if chosen_target(metafunc.config) is not None:
        found += [pytest.param(YOURS, family, id=f"{YOURS}-{family}") for family in FAMILIES]
    metafunc.parametrize(("target_name", "family"), found)


@pytest.mark.slow
# multiprocessing.Pool's result handler thread dies of a bad result: that is the weakness under
# test (seen as results that never come), not an error of this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_fault_against_each_pool(
    request: pytest.FixtureRequest, chaos, tmp_path: Path, target_name: str, family: str
):
    if target_name == "loky":
        pytest.importorskip("loky", reason="loky is not installed (pip install loky)")
    if target_name == YOURS:
        factory, options = load_target(chosen_target(request.config)), {}
    else:
        factory = TARGETS[target_name]
        options = dict(SYSTEM_OPTIONS) if target_name == "system" else dict(PEER_OPTIONS)
    if target_name == "system" and family == "memory_growth":
        options["memory_soft_limit"] = 300 * MB
    expected = None if target_name == YOURS else EXPECTED[(target_name, family)]
    spec = SPECS.get(target_name) or chosen_target(request.config)
    await judge_cell(
        chaos, tmp_path, target_name, family, factory, options,
        workers=WORKERS, expected=expected, spec=spec,
    )  # fmt: skip
