"""When to restart a dead worker: exponential backoff with jitter, and an intensity limit.

Backoff is per worker slot: the n-th consecutive death waits ``min(cap, base * 2**(n-1))``, less a
random fraction ``jitter`` of it (so restarts of many slots do not stampede). A worker that stayed
up for ``reset_after`` seconds, or committed work before it died, starts again from ``base``: the
backoff is for a crash loop, a worker that dies again and again without getting anything done
(a worker killed after each batch of useful work is restarted at once; the intensity limit still
counts it). Intensity is pool-wide, as in OTP supervisors: more than ``max_restarts`` restarts
within ``window`` seconds and the policy answers ``None`` (give up: the pool steps down a rung,
or reports itself broken on the last). Time comes from an injectable clock.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    base: float = 0.001  # the first restart is all but immediate (a warm spare takes ~ms)
    cap: float = 2.0
    jitter: float = 0.5
    max_restarts: int = 100
    window: float = 60.0
    reset_after: float = 5.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _recent: deque[float] = field(default_factory=deque, init=False, repr=False)
    _streak: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and 0 <= self.jitter <= 1):
            raise ValueError(
                f"RestartPolicy needs base > 0, cap >= base and 0 <= jitter <= 1; got "
                f"base={self.base}, cap={self.cap}, jitter={self.jitter}"
            )
        if self.max_restarts < 0 or self.window <= 0:
            raise ValueError("RestartPolicy needs max_restarts >= 0 and window > 0")

    def on_death(self, slot: int, uptime: float, progressed: bool = False) -> float | None:
        """Delay before restarting ``slot``, whose worker lived ``uptime`` s and committed work
        (``progressed``) or not; None: give up."""
        now = self.clock()
        while self._recent and self._recent[0] <= now - self.window:
            self._recent.popleft()
        if len(self._recent) >= self.max_restarts:
            return None
        self._recent.append(now)
        streak = 1 if progressed or uptime >= self.reset_after else self._streak.get(slot, 0) + 1
        self._streak[slot] = streak
        delay = min(self.cap, self.base * 2 ** (streak - 1))
        return delay * (1 - self.jitter * self.rng.random())

    def forget(self) -> None:
        """Start afresh: no recent restarts, no streaks (e.g. after the pool was reconfigured)."""
        self._recent.clear()
        self._streak.clear()

    def restarts_in_window(self) -> int:
        return len(self._recent)

    def why_give_up(self, worker: int, last_exit: str) -> str:
        return (
            f"worker {worker} died ({last_exit}) and the restart intensity is exceeded: "
            f"{self.restarts_in_window()} restarts within {self.window}s "
            f"(RestartPolicy(max_restarts={self.max_restarts}, window={self.window})). Every "
            "acknowledged message is in the intake log: fix the cause and reopen the data dir"
        )


def not_starting(worker: int, times: int, last_exit: str) -> str:
    """Why a rung is given up when its workers die before they are ready."""
    return (
        f"worker {worker} died before it was ready {times} times in a row (last exit: "
        f"{last_exit}); its traceback is on the pool's stderr. Is the handler importable in a "
        "fresh process (not defined in __main__ of `python -c` or a notebook)? Can the data dir "
        "be written? Nothing acknowledged is lost: fix the cause and reopen the data dir"
    )
