"""Process-tree helpers shared by injectors and tests: who descends from whom, and who is gone.

Polling with a deadline (never a bare sleep as synchronisation): ``wait_until`` and ``wait_gone``
check every ``interval`` seconds and give up with a clear error or the list of survivors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import psutil

T = TypeVar("T")


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (children, grandchildren, ...); [] if ``pid`` is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def describe(proc: psutil.Process | None) -> str:
    """A process's command line (cut short), or its name; "?" once it is gone."""
    if proc is None:
        return ""
    try:
        return " ".join(proc.cmdline())[:200] or proc.name()
    except psutil.Error:
        return "?"


def is_helper(proc: psutil.Process) -> bool:
    """multiprocessing's (or loky's) forkserver or resource tracker: a shared helper, not a
    worker (the processes the forkserver forks carry its command line too: not helpers)."""
    line = describe(proc)
    if "resource_tracker" in line:
        return True
    if "forkserver" in line:
        try:
            return "forkserver" not in describe(proc.parent())
        except psutil.Error:
            return False
    return False


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its parent's wait counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: Iterable[int], timeout: float, interval: float = 0.02) -> set[int]:
    """Wait until every pid has exited; return those alive at ``timeout`` (empty: all gone)."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in left if not is_gone(pid)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy and return it; fail at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return result
