"""Memory faults: a leak in this process, RLIMIT_AS on any pid, a memory cgroup around a pid.

- ``leaking(mb_per_s)``: a thread in *this* process allocates (and touches) memory at a steady
  rate until the block ends, then frees it -- RSS really grows.
- ``address_space_limit(pid, extra_mb)``: ``prlimit(RLIMIT_AS)`` on any pid (Linux): the soft
  limit drops to the target's current virtual size plus ``extra_mb``, so its next big allocation
  fails -- in Python, ``MemoryError``. The hard limit is left alone, so the old soft limit can
  always be put back (on the way out).
- ``memory_cgroup(pid, limit_mb)``: the target goes into a memory cgroup (v1 or v2) limited to
  ``limit_mb`` of newly charged memory; past it the kernel reclaims, then its OOM killer sends
  SIGKILL. Unavailable machines get ``InjectorUnavailable`` saying why (see ``_cgroups``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import _cgroups
from ._process_faults import check_target

MB = 2**20


@dataclass
class Leak:
    mb_per_s: float
    chunks: list[bytearray] = field(default_factory=list)

    @property
    def allocated_mb(self) -> int:
        return len(self.chunks)


@contextlib.contextmanager
def leaking(mb_per_s: float, max_mb: int | None = None) -> Iterator[Leak]:
    """Grow this process's memory by ``mb_per_s`` (up to ``max_mb``) until the block ends."""
    if mb_per_s <= 0:
        raise ValueError(f"mb_per_s must be > 0; got {mb_per_s}")
    leak = Leak(mb_per_s)
    stop = threading.Event()

    def grow() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - t0) * mb_per_s) + 1
            while len(leak.chunks) < due and (max_mb is None or len(leak.chunks) < max_mb):
                leak.chunks.append(bytearray(MB))  # zero-filled: every page is touched
            stop.wait(min(0.05, 1 / mb_per_s))

    thread = threading.Thread(target=grow, name="chaosgate-leak", daemon=True)
    thread.start()
    try:
        yield leak
    finally:
        stop.set()
        thread.join()
        leak.chunks.clear()


@dataclass(frozen=True)
class Limit:
    pid: int
    soft: int
    previous: tuple[int, int]


@contextlib.contextmanager
def address_space_limit(
    pid: int, extra_mb: float, *, allow_outside: bool = False
) -> Iterator[Limit]:
    """Lower ``pid``'s RLIMIT_AS to its current size + ``extra_mb``; restore it afterwards."""
    proc = check_target(pid, allow_outside=allow_outside)
    previous = proc.rlimit(psutil.RLIMIT_AS)
    soft = proc.memory_info().vms + int(extra_mb * MB)
    hard = previous[1]
    if hard != psutil.RLIM_INFINITY:
        soft = min(soft, hard)
    proc.rlimit(psutil.RLIMIT_AS, (soft, hard))
    try:
        yield Limit(pid, soft, previous)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.rlimit(psutil.RLIMIT_AS, previous)


@contextlib.contextmanager
def memory_cgroup(pid: int, limit_mb: float, *, allow_outside: bool = False) -> Iterator[Path]:
    """Run ``pid`` in a memory cgroup capped at ``limit_mb``; put it back afterwards."""
    check_target(pid, allow_outside=allow_outside)
    h = _cgroups.hierarchy("memory")
    limit = str(int(limit_mb * MB))
    settings = {"memory.max": limit} if h and h.version == 2 else {"memory.limit_in_bytes": limit}
    with _cgroups.limited(pid, "memory", settings) as group:
        yield group
