"""Watchdog verdicts, as pure functions of what was observed and when (so tests can be exact).

- ``Liveness``: a worker is alive while its progress cell moves (a message started, or its event
  loop ticked); ``hung(now)`` once neither moved for ``hang_timeout`` seconds. One timeout serves
  as both heartbeat and per-message progress deadline: a handler that takes longer than it on
  one message is hung.
- ``MemoryTrend``: RSS samples of a worker; ``verdict(soft_limit)`` says "over" when the last
  sample is above the soft limit, "trend" when a least-squares line through the recent samples
  crosses it within ``horizon`` seconds, else None.
- ``PoisonStreak``: the offset in flight at each death of a slot; K deaths in a row with the same
  one make it poison.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Liveness:
    hang_timeout: float
    last_seen: tuple[int, int] = (-1, -1)
    last_change: float = 0.0

    def reset(self, now: float, seen: tuple[int, int]) -> None:
        self.last_seen, self.last_change = seen, now

    def observe(self, now: float, seen: tuple[int, int]) -> None:
        if seen != self.last_seen:
            self.reset(now, seen)

    def silence(self, now: float) -> float:
        return now - self.last_change

    def hung(self, now: float) -> bool:
        return self.silence(now) > self.hang_timeout


@dataclass
class MemoryTrend:
    horizon: float = 5.0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=10))

    def add(self, now: float, rss: int) -> None:
        self.samples.append((now, rss))

    def slope(self) -> float:
        """Bytes per second, by least squares over the samples (0 with fewer than 4)."""
        if len(self.samples) < 4:
            return 0.0
        xs, ys = zip(*self.samples, strict=True)
        if max(xs) - min(xs) <= 0:
            return 0.0
        return statistics.linear_regression(xs, ys).slope

    def verdict(self, soft_limit: int) -> str | None:
        if not self.samples:
            return None
        rss = self.samples[-1][1]
        if rss > soft_limit:
            return "over"
        slope = self.slope()
        if slope > 0 and rss + slope * self.horizon > soft_limit:
            return "trend"
        return None


@dataclass
class PoisonStreak:
    limit: int = 3
    offset: int = -1
    count: int = 0

    def death(self, in_flight: int) -> bool:
        """Record a death with ``in_flight`` (-1: none); True when it makes that offset poison."""
        if in_flight < 0:
            self.offset, self.count = -1, 0
            return False
        if in_flight == self.offset:
            self.count += 1
        else:
            self.offset, self.count = in_flight, 1
        if self.count >= self.limit:
            self.offset, self.count = -1, 0
            return True
        return False
