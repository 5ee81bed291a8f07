"""Process faults: SIGKILL, SIGTERM, SIGSTOP/SIGCONT (freeze) on a pid, behind a blast-radius guard.

The guard: by default only descendants of the calling process may be hurt -- never pid 1 (or 0
and negative pids, which would signal whole process groups), never the caller itself, and never a
process this caller did not start (directly or through its children). ``allow_outside=True``
lifts the descendant rule for a deliberate target; pid 1 and the caller stay refused.

A signal goes through a pidfd opened *before* the checks (``pidfd_open`` + ``pidfd_send_signal``,
Linux 5.3+), so a pid recycled between the check and the signal can never be hit. Each injector
returns an ``Injected`` record with the fault's CLOCK_MONOTONIC time, comparable with the
``mono`` of the target's events: detection and recovery are measured from it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from ._errors import BlastRadiusError
from ._processes import descendants, describe, is_gone, is_helper


@dataclass(frozen=True)
class Injected:
    """A fault that happened: what, to whom, and when (CLOCK_MONOTONIC and wall clock)."""

    kind: str
    pid: int
    mono: float
    ts: float
    detail: dict[str, Any] = field(default_factory=dict)


def _refuse_obvious(pid: object) -> None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        raise BlastRadiusError(
            f"refusing to target pid {pid!r}: pid 1 is init, and 0 or negative pids signal whole "
            "process groups; pass the pid of one process you started"
        )
    if pid == os.getpid():
        raise BlastRadiusError(
            f"refusing to target pid {pid}: that is this process (the caller); start the target "
            "as a child process"
        )


def check_target(pid: int, *, allow_outside: bool = False) -> psutil.Process:
    """The process ``pid`` if this caller may hurt it; else ``BlastRadiusError`` saying why."""
    _refuse_obvious(pid)
    try:
        proc = psutil.Process(pid)
        zombie = proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        zombie = True
    if zombie:
        raise ProcessLookupError(f"no process {pid}: it has exited (or never existed)")
    if not allow_outside and pid not in {p.pid for p in descendants(os.getpid())}:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            raise ProcessLookupError(f"no process {pid}: it exited while being checked")
        raise BlastRadiusError(
            f"refusing to target pid {pid} ({describe(proc)}): it is not a descendant of this "
            f"process (pid {os.getpid()}); chaos only hurts processes its caller started. Pass "
            "allow_outside=True to target it anyway"
        )
    return proc


def send_signal(pid: int, sig: int, *, allow_outside: bool = False, kind: str = "") -> Injected:
    """Send ``sig`` to ``pid`` (race-free through a pidfd) if the guard allows it."""
    _refuse_obvious(pid)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessLookupError(f"no process {pid}: it has exited (or never existed)") from None
    try:
        check_target(pid, allow_outside=allow_outside)
        mono, ts = time.clock_gettime(time.CLOCK_MONOTONIC), time.time()
        signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)
    name = signal.Signals(sig).name
    return Injected(kind or name, pid, mono, ts, {"signal": f"{name}(-{int(sig)})"})


def send_signals(
    pids: Sequence[int], sig: int, *, allow_outside: bool = False, kind: str = ""
) -> list[Injected]:
    """Send ``sig`` to every pid at (nearly) the same instant: all are checked and pinned with
    pidfds first, then signalled back to back, so the first death cannot warn the others."""
    pidfds: dict[int, int] = {}
    try:
        for pid in dict.fromkeys(pids):  # each once
            _refuse_obvious(pid)
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                raise ProcessLookupError(f"no process {pid}: it has exited") from None
            check_target(pid, allow_outside=allow_outside)
        sent = []
        name = signal.Signals(sig).name
        for pid, pidfd in pidfds.items():
            mono, ts = time.clock_gettime(time.CLOCK_MONOTONIC), time.time()
            signal.pidfd_send_signal(pidfd, sig)
            sent.append(Injected(kind or name, pid, mono, ts, {"signal": f"{name}(-{int(sig)})"}))
        return sent
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def kill(pid: int, *, allow_outside: bool = False) -> Injected:
    """SIGKILL: the process ends at once, with no chance to clean up (``kill -9``)."""
    return send_signal(pid, signal.SIGKILL, allow_outside=allow_outside)


def terminate(pid: int, *, allow_outside: bool = False) -> Injected:
    """SIGTERM: the polite request to stop, which a process may handle (or ignore)."""
    return send_signal(pid, signal.SIGTERM, allow_outside=allow_outside)


def freeze(pid: int, *, allow_outside: bool = False) -> Injected:
    """SIGSTOP: the process stops being scheduled -- alive, holding its resources, silent."""
    return send_signal(pid, signal.SIGSTOP, allow_outside=allow_outside, kind="freeze")


def thaw(pid: int, *, allow_outside: bool = False) -> Injected:
    """SIGCONT: a frozen process runs again."""
    return send_signal(pid, signal.SIGCONT, allow_outside=allow_outside, kind="thaw")


@contextlib.contextmanager
def frozen(pid: int, *, allow_outside: bool = False) -> Iterator[Injected]:
    """Freeze ``pid`` for the block; thaw it on the way out, also when the block fails."""
    fault = freeze(pid, allow_outside=allow_outside)
    try:
        yield fault
    finally:
        with contextlib.suppress(ProcessLookupError):
            thaw(pid, allow_outside=allow_outside)


def pick(pids: Sequence[int], rng: random.Random | int) -> int:
    """One of ``pids``, chosen by a seeded RNG (or a seed), in a stable order."""
    if not pids:
        raise ValueError("no process to pick from: the target has no live workers")
    r = rng if isinstance(rng, random.Random) else random.Random(rng)
    return r.choice(sorted(pids))


def workers_of(target: Any) -> list[int]:
    """The worker pids of ``target``: anything with ``worker_pids()``, or the live descendants
    of a pid (multiprocessing's forkserver and resource tracker left out: helpers, not workers).
    """
    if hasattr(target, "worker_pids"):
        return list(target.worker_pids())
    if isinstance(target, int):
        return [p.pid for p in descendants(target) if not is_gone(p.pid) and not is_helper(p)]
    raise TypeError(
        f"cannot find the workers of {type(target).__name__}: pass a pid or an object with "
        "worker_pids()"
    )
