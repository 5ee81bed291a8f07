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
