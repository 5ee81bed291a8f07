"""The fallback ladder at run time: step down when a rung cannot go on, climb back later.

A mixin of ``Pool``. A supervisor that cannot start a worker (the system refused a process or
a thread, or workers die before they are ready) or that exceeds the restart intensity calls
``_step_down``: the pool takes the next rung (``_fallback.next_rung``: half the processes, then
threads, then inline) by ``_reconfigure`` -- stop every worker, put every unacknowledged message
back, re-route them by partition to the new slots, start them -- or, with no rung left, reports
itself broken. ``_try_climb`` (from the watchdog) goes back up one rung after
``fallback_cooldown`` seconds, doubled for every step down so far, without trouble.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ._errors import PoolBroken
from ._events import monotonic
from ._fallback import next_rung
from ._runners import exit_text

if TYPE_CHECKING:
    from ._pool import _Slot

MAX_FAILED_STARTS = 5  # consecutive deaths before "ready": a worker that cannot start at all


class Ladder:
    """Fallback-ladder methods of ``Pool`` (see the module docstring)."""

    def _failed_start(self, slot: _Slot) -> bool:
        """Count a worker that died before it was ready; True when that happened too often."""
        slot.failed_starts += 1
        return slot.failed_starts >= MAX_FAILED_STARTS

    def _why_give_up(self, slot: _Slot, cause: dict[str, Any], before_ready: bool = False) -> str:
        r = self.restart
        if before_ready:
            return (
                f"worker {slot.index} died before it was ready {slot.failed_starts} times in a "
                f"row (last exit: {exit_text(cause)}); its traceback is on the pool's stderr. "
                "Is the handler importable in a fresh process (not defined in __main__ of "
                "`python -c` or a notebook)? Can the data dir be written? Nothing acknowledged is "
                "lost: fix the cause and reopen the data dir"
            )
        return (
            f"worker {slot.index} died ({exit_text(cause)}) and the restart "
            f"intensity is exceeded: {r.restarts_in_window()} restarts within {r.window}s "
            f"(RestartPolicy(max_restarts={r.max_restarts}, window={r.window})). Every "
            "acknowledged message is in the intake log: fix the cause and reopen the data dir"
        )

    def _step_down(self, reason: str, slot: _Slot, error: BaseException | None = None) -> None:
        """Take the next rung of the fallback ladder, or give up when there is none."""
        rung = next_rung(self.mode, self.workers)
        if rung is None:
            err = PoolBroken(reason)
            err.__cause__ = error
            self._events.emit("gave_up", slot.index, None, reason=reason)
            self._set_broken(err)
        elif not self._reconfiguring:
            self._reconfiguring = True  # now, not when the task first runs: no second one
            self._degrades += 1
            self._climb.append((self.mode, self.workers))
            self._reconfigure_task = asyncio.create_task(
                self._reconfigure(*rung, reason=reason, kind="degraded")
            )

    async def _reconfigure(self, mode: str, workers: int, *, reason: str, kind: str) -> None:
        """Stop every worker, then serve the same partitions with ``workers`` ``mode`` workers.

        Nothing is lost or applied twice: each old worker checkpoints as it stops (or is killed,
        its uncommitted work replayed), every unacknowledged message goes back to be sent, and
        the new workers claim the partitions with newer epochs, fencing off any straggler.
        """
        self._reconfiguring = True
        old, supervisors = self._slots, self._supervisors
        for slot in old:
            if slot.handle is not None:
                with contextlib.suppress(EOFError):
                    slot.handle.channel.send_nowait(("stop",))
        _, late = await asyncio.wait(supervisors, timeout=self.hang_grace + 5.0)
        for task in late:
            handle = old[supervisors.index(task)].handle
            if handle is not None:
                handle.kill()
        if late:
            _, still = await asyncio.wait(late, timeout=5.0)
            for task in still:
                task.cancel()
        messages = sorted(m for slot in old for m in (*slot.inflight, *slot.unsent))
        poison = {o: why for slot in old for o, why in slot.poison.items()}
        for slot in old:
            if slot.cell is not None:
                slot.cell.close()
        before = (self.mode, self.workers)
        self.mode, self.workers = mode, workers
        self._slots = self._make_slots()
        for m in messages:
            slot = self._slots[m[3] % workers]
            slot.unsent.append(m)
            if m[0] in poison:
                slot.poison[m[0]] = poison[m[0]]
        self.restart.forget()  # a new configuration starts with a fresh restart budget
        self._last_step = monotonic()
        self._events.emit(
            kind,
            None,
            None,
            reason=reason,
            mode=mode,
            workers=workers,
            was_mode=before[0],
            was_workers=before[1],
            replaying=len(messages),
        )
        self._reconfiguring = False
        for slot in old:
            slot.ready.set()  # wake queries waiting on an old slot: they look up the new one
        self._supervisors = [
            asyncio.create_task(self._supervise(s), name=f"supervise-{s.index}")
            for s in self._slots
        ]
        self._wake.set()

    def _try_climb(self, now: float) -> None:
        """After ``fallback_cooldown`` s without trouble, try the rung we stepped down from."""
        cooldown = self.fallback_cooldown
        if not self._climb or cooldown is None or self._reconfiguring or self._closing:
            return
        if self._final is not None:
            return  # broken or closed: nothing to climb back to
        if now - self._last_step < cooldown * 2 ** (self._degrades - 1):
            return  # the wait doubles with every step down, so a flapping rung settles
        mode, workers = self._climb.pop()
        self._reconfiguring = True
        self._reconfigure_task = asyncio.create_task(
            self._reconfigure(
                mode,
                workers,
                kind="recovered",
                reason=f"no trouble for {now - self._last_step:.0f} s (fallback_cooldown)",
            )
        )
