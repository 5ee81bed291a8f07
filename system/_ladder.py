"""The fallback ladder at run time: which rung to step down to, and when to climb back.

A supervisor that cannot go on (``StepDown``: the system refused a process or a thread, workers
die before they are ready, or the restart intensity is spent) makes the pool take the next rung
(``_fallback.next_rung``: half the processes, then threads, then inline); with none left the
pool is broken. After ``fallback_cooldown`` seconds without trouble, doubled for every step down
so far, the pool climbs back one rung. The pool does the switching (``Crew.reconfigure``); this
class only decides, from what it is told and the time it is given.
"""

from __future__ import annotations

from ._fallback import next_rung

Rung = tuple[str, int]  # (mode, workers)


class Ladder:
    def __init__(self, cooldown: float | None):
        self.cooldown = cooldown
        self.climb: list[Rung] = []  # rungs stepped down from, to climb back to
        self.degrades = 0

    def below(self, rung: Rung) -> Rung | None:
        return next_rung(*rung)

    def stepped_down(self, was: Rung) -> None:
        self.degrades += 1
        self.climb.append(was)

    def climb_due(self, now: float, since: float) -> Rung | None:
        """The rung to climb back to, if ``now`` is far enough from the last switch (``since``)."""
        if not self.climb or self.cooldown is None:
            return None
        if now - since < self.cooldown * 2 ** (self.degrades - 1):
            return None  # the wait doubles with every step down, so a flapping rung settles
        return self.climb.pop()
