"""The fallback ladder: process workers -> fewer process workers -> threads -> inline.

``choose_mode`` picks the first rung at start (``mode="auto"``) from the free memory and the
worker count; ``next_rung`` is the step down when the current rung cannot go on: spawning a
worker was refused (``OSError`` ENOMEM/EAGAIN, ``MemoryError``, ``RuntimeError("can't start new
thread")``), workers cannot start at all, or the restart intensity was exceeded. Each step keeps
the semantics (the same worker core, the same store); only the runner and the count change.
"""

from __future__ import annotations

import errno

MB = 2**20
#: What one worker process is assumed to need (a Python interpreter with uvloop and SQLite).
WORKER_MEMORY = 64 * MB


def choose_mode(
    workers: int, available: int, per_worker: int = WORKER_MEMORY, spare: int = 0
) -> tuple[str, str]:
    """``(mode, why)`` for ``mode="auto"``, from ``available`` bytes of free memory; ``spare``:
    processes started ahead besides the workers (the warm spare)."""
    need = (workers + spare) * per_worker
    who = f"{workers} workers" + (" and a warm spare" if spare == 1 else "")
    who += f" and {spare} spares" if spare > 1 else ""
    if available >= 2 * need:
        return "process", f"{available // MB} MB free, {who} need about {need // MB}"
    if available >= per_worker:
        return "thread", (
            f"only {available // MB} MB free: {who} as processes would need about "
            f"{need // MB} MB (twice that to be safe); threads share this process's memory"
        )
    return "inline", f"only {available // MB} MB free: no room for worker processes or threads"


def next_rung(mode: str, workers: int) -> tuple[str, int] | None:
    """The rung below ``(mode, workers)``: half the processes, then threads, then inline."""
    if mode == "process":
        return ("process", workers // 2) if workers > 1 else ("thread", max(1, workers))
    if mode == "thread":
        return ("inline", 1)
    return None


def is_refusal(e: BaseException) -> bool:
    """Did the system refuse a process or a thread (rather than something else go wrong)?"""
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, OSError) and e.errno in (errno.ENOMEM, errno.EAGAIN):
        return True
    return isinstance(e, RuntimeError) and "can't start new thread" in str(e)
