"""The crew: one supervisor per lane for the current rung (mode, workers), and its changes.

``start`` puts a supervisor on every lane of the router. ``stop`` is the only way every worker
is stopped: each is asked to checkpoint and leave, and one still there at the deadline is killed.
``reconfigure`` serves the same partitions with another rung: stop every worker, put every
unacknowledged message back and re-route it to the new lanes (poison marks follow their
messages), and start the new supervisors. Nothing is lost or applied twice: each old worker
checkpoints as it stops (or is killed, its uncommitted work replayed), and the new workers
claim the partitions with newer epochs, fencing off any straggler.

A supervisor that cannot go on (``StepDown``) makes the crew take the next rung of the ``Ladder``;
with none left, or when a supervisor fails, the pool is broken (``on_broken``). ``climb``, from
the watch, goes back up a rung after ``fallback_cooldown`` seconds without trouble.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ._config import PoolConfig
from ._crewing import Crewing, StepDown
from ._errors import PoolBroken
from ._events import EventLog, monotonic
from ._frames import OFFSET, PARTITION
from ._ladder import Ladder
from ._restart import RestartPolicy
from ._router import Lane, Router
from ._runners import WorkerHandle
from ._spare import Spare
from ._supervisor import Supervisor
from ._worker import SPARE, WorkerSpec

log = logging.getLogger("system")


class Crew:
    def __init__(
        self,
        *,
        config: PoolConfig,
        router: Router,
        events: EventLog,
        restart: RestartPolicy,
        data_dir: Path,
        spec: Callable[[str, Lane, str, dict[int, str]], WorkerSpec],
        launch: Callable[[str, WorkerSpec], Awaitable[WorkerHandle]],
        ladder: Ladder,
        on_broken: Callable[[PoolBroken], None],
    ):
        self.config, self.router, self.events, self.restart = config, router, events, restart
        self.data_dir, self._spec, self._launch = data_dir, spec, launch
        self.ladder, self._on_broken = ladder, on_broken
        self.broken = False
        self.mode = config.mode
        self.supervisors: list[Supervisor] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.reconfiguring = False
        self.closing = False  # set by the pool's close(): no rung starts a worker any more
        self.reconfigure_task: asyncio.Task[None] | None = None
        self.last_switch = 0.0  # when the rung last changed (monotonic)
        self._crewing: Crewing | None = None
        self.side_tasks: set[asyncio.Task[Any]] = set()  # every rung's hang handlers
        self.spare: Spare | None = None
        if config.warm_spare:
            spare_spec = spec("process", Lane(SPARE, ()), "", {})
            self.spare = Spare(
                launch=lambda: launch("process", spare_spec),
                wanted=lambda: self.mode == "process" and not self.closing,
            )

    def start(self, mode: str, poison: dict[int, dict[int, str]] | None = None) -> None:
        """A supervisor, and its task, on every lane of the router."""
        self.mode = mode
        crewing = Crewing(
            self.config,
            mode,
            self.router,
            self.events,
            self.restart,
            self.data_dir,
            spec=lambda lane, cell, marks: self._spec(mode, lane, cell, marks),
            launch=lambda spec: self._launch(mode, spec),
            take_spare=self._take_spare,
            ended=self._ended,
            stopping=self.closing,
            side_tasks=self.side_tasks,
        )
        self._crewing = crewing
        self.supervisors = [
            Supervisor(crewing, lane, (poison or {}).get(lane.index)) for lane in self.router.lanes
        ]
        self.tasks = [
            asyncio.create_task(sup.run(), name=f"supervise-{sup.index}")
            for sup in self.supervisors
        ]
        if self.spare is not None and mode == "process":
            self.spare.start_once(self._all_ready)

    def _take_spare(self, spec: WorkerSpec) -> WorkerHandle | None:
        if self.spare is None or self.mode != "process":
            return None
        return self.spare.take(spec)

    def _ended(self, worker: int, outcome: StepDown | PoolBroken) -> None:
        if isinstance(outcome, PoolBroken):
            log.error("supervisor of worker %s failed", worker, exc_info=outcome)
            self._broke(outcome)
            return
        rung = self.ladder.below((self.mode, self.router.workers))
        if rung is None:
            err = PoolBroken(outcome.reason)
            err.__cause__ = outcome.error
            self.events.emit("gave_up", worker, None, reason=outcome.reason)
            self._broke(err)
        elif not self.reconfiguring:
            self.ladder.stepped_down((self.mode, self.router.workers))
            self.reconfigure_soon(*rung, reason=outcome.reason, kind="degraded")

    def _broke(self, err: PoolBroken) -> None:
        self.broken = True
        self._on_broken(err)

    def climb(self, now: float) -> None:
        """After ``fallback_cooldown`` s without trouble, try the rung we stepped down from."""
        if self.reconfiguring or self.closing or self.broken:
            return
        rung = self.ladder.climb_due(now, self.last_switch)
        if rung is not None:
            why = f"no trouble for {now - self.last_switch:.0f} s (fallback_cooldown)"
            self.reconfigure_soon(*rung, kind="recovered", reason=why)

    async def _all_ready(self) -> None:
        """Until every worker of the rung is ready (start_timeout at most): the spare waits."""
        waits = [asyncio.ensure_future(sup.ready.wait()) for sup in self.supervisors]
        try:
            await asyncio.wait(waits, timeout=self.config.start_timeout)
        finally:
            for w in waits:
                w.cancel()

    def halt(self) -> None:
        """The pool is closing: a worker that ends now is not replaced, on any rung."""
        self.closing = True
        if self._crewing is not None:
            self._crewing.stopping = True

    def stats(self) -> dict[str, Any]:
        sups = self.supervisors
        return {
            "restarts": sum(s.restarts for s in sups),
            "recycles": sum(s.recycles for s in sups),
            "spare": self.spare.pid if self.spare is not None else None,
            "workers": [
                {
                    "worker": s.index,
                    "pid": s.handle.pid if s.handle else None,
                    "ready": s.ready.is_set(),
                    "inflight": len(s.lane.inflight),  # sent, not yet applied
                    "applied": len(s.lane.applied),  # applied, not yet committed
                    "unsent": len(s.lane.unsent),
                    "restarts": s.restarts,
                }
                for s in sups
            ],
        }

    def supervisor_of(self, key: str) -> Supervisor:
        return self.supervisors[self.router.lane_of_key(key).index]

    async def stop(
        self, timeout: float, kill_reason: str | None = None, *, closing: bool = False
    ) -> None:
        """Ask every worker to leave; kill the ones still there after ``timeout`` seconds.

        A supervisor between workers (a restart backoff, or a launch under way) is cancelled at
        once when the pool closes, and given 5 s more otherwise (a launch that ends meanwhile
        sees the rung stopping and stops its worker, rather than orphaning it)."""
        if self._crewing is not None:
            self._crewing.stopping = True
        for sup in self.supervisors:
            sup.stop()
        if not self.tasks:
            return
        tasks = dict(zip(self.tasks, self.supervisors, strict=True))
        _, late = await asyncio.wait(tasks, timeout=timeout)
        dying = set()
        for task in late:
            handle = tasks[task].handle
            if handle is None:
                if closing:
                    task.cancel()  # between workers: nothing to stop
                else:
                    dying.add(task)
                continue
            if kill_reason is not None:
                self.events.emit("killed", tasks[task].index, handle.pid, reason=kill_reason)
            handle.kill()
            dying.add(task)
        if dying:
            _, still = await asyncio.wait(dying, timeout=5.0)
            for task in still:
                task.cancel()

    async def close(self, deadline: float) -> None:
        """Every worker asked to leave, once a reconfiguration under way is done; killed at
        ``deadline`` (monotonic)."""
        for sup in self.supervisors:
            sup.stop()
        if self.reconfigure_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.reconfigure_task), 15.0)
        await self.stop(max(0.5, deadline - monotonic()), "grace expired", closing=True)

    def reconfigure_soon(self, mode: str, workers: int, *, reason: str, kind: str) -> None:
        self.reconfiguring = True  # now, not when the task first runs: no second one,
        if self._crewing is not None:  # and no worker of this rung starts meanwhile
            self._crewing.stopping = True
        self.reconfigure_task = asyncio.create_task(
            self.reconfigure(mode, workers, reason=reason, kind=kind)
        )

    async def reconfigure(self, mode: str, workers: int, *, reason: str, kind: str) -> None:
        """Stop every worker, then serve the same partitions with ``workers`` ``mode`` workers."""
        self.reconfiguring = True
        old = self.supervisors
        await self.stop(self.config.hang_grace + 5.0)
        marks = {o: why for sup in old for o, why in sup.poison.items()}
        for sup in old:
            sup.cell.close()
        before = (self.mode, self.router.workers)
        messages = self.router.regroup(workers)
        poison: dict[int, dict[int, str]] = {}
        for m in messages:
            if m[OFFSET] in marks:
                lane = self.router.lane_of(m[PARTITION]).index
                poison.setdefault(lane, {})[m[OFFSET]] = marks[m[OFFSET]]
        self.restart.forget()  # a new configuration starts with a fresh restart budget
        if self.spare is not None and mode != "process":
            self.spare.drop()
        self.last_switch = monotonic()
        self.events.emit(
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
        self.reconfiguring = False
        for sup in old:
            sup.ready.set()  # wake queries waiting on an old supervisor: they look up the new one
        self.start(mode, poison)

    async def cancel(self) -> None:
        """Cancel every task left (supervisors, hang handlers, a reconfiguration); the spare
        is killed."""
        if self.spare is not None:
            await self.spare.close()
        tasks = [*self.tasks, *self.side_tasks]
        if self.reconfigure_task is not None:
            tasks.append(self.reconfigure_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sup in self.supervisors:
            with contextlib.suppress(Exception):
                sup.cell.close()
