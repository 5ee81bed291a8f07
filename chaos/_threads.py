"""Thread exhaustion: make the kernel (or the C library) really refuse the target a new thread.

- ``pids_limit(pid, extra=0)``: the target goes into a pids cgroup (v1 or v2) whose ``pids.max``
  is its current thread count plus ``extra``; the next ``clone()`` fails with EAGAIN, and
  ``threading.Thread.start()`` raises ``RuntimeError: can't start new thread``.
- ``thread_stack_limit(pid)``: where no pids cgroup is to be had, ``RLIMIT_AS`` drops to the
  target's current size plus less than one thread stack (``RLIMIT_STACK``, 8 MiB by default), so
  the stack mmap of a new thread fails -- the same RuntimeError. Other large allocations in the
  target fail too while it lasts (that is what a full address space does).
- ``thread_limit(pid)``: the first of the two that this machine offers.
- ``hogging_threads(n)``: *this* process starts up to ``n`` idle threads (stopping early if it is
  refused one) and holds them until the block ends.
Each reverts itself on the way out, also when the block fails.
"""

from __future__ import annotations

import contextlib
import resource
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import _cgroups
from ._memory import MB, address_space_limit
from ._process_faults import check_target


@contextlib.contextmanager
def pids_limit(pid: int, extra: int = 0, *, allow_outside: bool = False) -> Iterator[Path]:
    """Cap the tasks (threads + processes) of the target *and its descendants* at their current
    count + ``extra``: none of them can start a thread or a process beyond that."""
    proc = check_target(pid, allow_outside=allow_outside)
    children = proc.children(recursive=True)
    limit = proc.num_threads() + sum(c.num_threads() for c in children)
    tree = tuple(c.pid for c in children)
    cap = str(max(0, limit + extra))  # below the current count: nothing new, the rest lives on
    with _cgroups.limited(pid, "pids", {"pids.max": cap}, also=tree) as group:
        yield group


@contextlib.contextmanager
def thread_stack_limit(pid: int, *, allow_outside: bool = False) -> Iterator[object]:
    """Leave the target less address space than one more thread stack needs."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    stack = 8 * MB if stack in (resource.RLIM_INFINITY, -1) else stack
    with address_space_limit(pid, stack / MB / 4, allow_outside=allow_outside) as limit:
        yield limit


@contextlib.contextmanager
def thread_limit(pid: int, *, allow_outside: bool = False) -> Iterator[str]:
    """Refuse the target new threads by the best means here; yields which one was used."""
    ok, why = _cgroups.available("pids")
    if ok:
        with pids_limit(pid, allow_outside=allow_outside):
            yield f"pids cgroup ({why})"
    else:
        with thread_stack_limit(pid, allow_outside=allow_outside):
            yield f"RLIMIT_AS below one thread stack (no pids cgroup: {why})"


@dataclass
class Hog:
    threads: list[threading.Thread] = field(default_factory=list)
    refused: RuntimeError | None = None  # set when the process could not get another thread


@contextlib.contextmanager
def hogging_threads(n: int) -> Iterator[Hog]:
    """Hold up to ``n`` idle threads in this process for the block."""
    release = threading.Event()
    hog = Hog()
    try:
        for i in range(n):
            t = threading.Thread(target=release.wait, name=f"chaosgate-hog-{i}", daemon=True)
            try:
                t.start()
            except RuntimeError as e:
                hog.refused = e
                break
            hog.threads.append(t)
        yield hog
    finally:
        release.set()
        for t in hog.threads:
            t.join()
