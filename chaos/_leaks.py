"""Leaked processes: what a target left running after its ``stop()`` -- a weakness of the target.

``Leftovers.now()`` notes the processes that descend from this one before a target starts;
``saw(pids)`` remembers every worker pid the target showed (with its start time, so that a pid
reused by another process later is never mistaken for it); ``reap()``, after the target's stop,
waits a moment for stragglers, then finds each process that is still alive and is either a new
descendant of this process or a worker the target showed (a worker orphaned by its dead parent
is no longer our descendant: its start time identifies it). Each is described by pid and command
line, SIGKILLed through a pidfd, and returned as one ``TargetLeak`` (an AssertionError: the gate
counts it as a weakness, category ``leak``).

multiprocessing's forkserver and resource tracker (and loky's) are shared helpers of the test
process, started once and kept by design: they are not leaks.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from ._guard import TargetHung
from ._processes import descendants, describe, is_helper, wait_gone

__all__ = ["Leftovers", "TargetHung", "TargetLeak"]

GRACE = 5.0  # seconds a stopped target's processes have to exit by themselves


class TargetLeak(AssertionError):
    """The target left processes running after ``stop()`` (they were killed)."""


@dataclass
class Leftovers:
    before: set[int]
    shown: dict[int, float] = field(default_factory=dict)  # pid -> create_time

    @classmethod
    def now(cls) -> Leftovers:
        return cls({p.pid for p in descendants(os.getpid())})

    def saw(self, pids: Iterable[int]) -> None:
        for pid in pids:
            if pid not in self.shown:
                with contextlib.suppress(psutil.Error):
                    self.shown[pid] = psutil.Process(pid).create_time()

    def alive(self) -> list[psutil.Process]:
        """The target's processes alive now: new descendants and the workers it showed."""
        return [p for pid in sorted(self._candidates()) if (p := self._same(pid)) is not None]

    def reap(self, grace: float = GRACE) -> TargetLeak | None:
        """Kill what the target left behind; the leak as an error to raise, or None."""
        candidates = self._candidates()
        if not candidates:
            return None
        left = wait_gone(candidates, grace)
        procs = [p for pid in sorted(left) if (p := self._same(pid)) is not None]
        if not procs:
            return None
        described = [f"pid {p.pid} ({describe(p)})" for p in procs]
        for proc in procs:
            _kill(proc)
        wait_gone({p.pid for p in procs}, grace)
        return TargetLeak(
            f"the target left {len(procs)} process(es) running after stop(): "
            + "; ".join(described)
            + " -- killed now. A pool must stop every process it started (its workers, their "
            "replacements, their children), also after a fault"
        )

    def _candidates(self) -> set[int]:
        mine = {p.pid: p for p in descendants(os.getpid())}
        found = {pid for pid in mine if pid not in self.before and not is_helper(mine[pid])}
        return found | {pid for pid in self.shown if self._same(pid) is not None}

    def _same(self, pid: int) -> psutil.Process | None:
        """The live process ``pid``, if it is the one we mean (not a reused pid, not a zombie)."""
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if pid in self.shown and proc.create_time() != self.shown[pid]:
                return None
            if pid not in self.shown and pid not in {p.pid for p in descendants(os.getpid())}:
                return None
            return proc
        except psutil.Error:
            return None


def _kill(proc: psutil.Process) -> None:
    """SIGKILL through a pidfd, after checking it is still the same process."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return
    try:
        if proc.is_running():  # psutil compares the start time: not a reused pid
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except (OSError, psutil.Error):
        pass
    finally:
        os.close(fd)
