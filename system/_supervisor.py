"""A supervisor per worker: launch, session, death, restart -- and the watch over its worker.

``run`` launches a worker for its lane, reads its frames (``Ready`` opens the lane to the
dispatcher, ``Ack`` pops what it covers, ``Rewind`` puts the in-flight work back, ``State``
answers a query), sees its exit on the sentinel fd, reads the acks it sent before dying, puts
what it had in flight back in front (``Router.close``) and asks the ``RestartPolicy`` for a
delay. It ends when the pool stops, or when the rung cannot go on (``StepDown``: the system
refused a worker, workers die before they are ready, or the restart intensity is spent) or the
supervisor itself failed (``PoolBroken``): then it tells the crew's ``ended`` at once, before any
other supervisor of the rung starts another worker.

It owns what the watch (``_watch``) judges its worker by: the progress cell and ``Liveness``,
the ``MemoryTrend``, and the ``PoisonStreak`` (the message in flight at ``poison_after`` deaths
in a row is dead-lettered by the next worker).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from chaos import failpoints
from chaos.failpoints import failpoint

from ._crewing import Crewing, StepDown
from ._errors import PoolBroken, WorkerLost
from ._events import monotonic
from ._fallback import is_refusal
from ._frames import ID, OFFSET, Ack, Applied, Exit, Query, Ready, Rewind, Rewound, State, Stop
from ._progress import ProgressCell
from ._restart import not_starting
from ._router import Lane
from ._runners import WorkerHandle
from ._watchdog import Liveness, MemoryTrend, PoisonStreak
from ._worker import EXIT_MEMORY

MAX_FAILED_STARTS = 5  # consecutive deaths before "ready": a worker that cannot start at all


class Supervisor:
    def __init__(self, crew: Crewing, lane: Lane, poison: dict[int, str] | None = None):
        self.crew, self.lane, self.index = crew, lane, lane.index
        c = crew.config
        self.handle: WorkerHandle | None = None
        self.ready = asyncio.Event()
        self.started_at = 0.0
        self.was_ready = False
        self.progressed = False
        self.failed_starts = 0  # consecutive deaths before ready
        self.cell = ProgressCell(crew.data_dir / "run" / f"worker-{self.index}.cell", create=True)
        self.liveness = Liveness(c.hang_timeout)
        self.memory = MemoryTrend(c.memory_horizon)
        self.streak = PoisonStreak(c.poison_after)
        self.poison = dict(poison or {})  # offset -> reason, for the next worker
        self.hanging = False
        self.recycling: str | None = None  # why the worker was asked to stop after its message
        self.restarts = 0
        self.recycles = 0
        self.queries: dict[int, asyncio.Future[bytes]] = {}
        self._told_to_stop: WorkerHandle | None = None

    async def run(self) -> None:
        outcome: StepDown | PoolBroken | None
        try:
            outcome = await self._supervise()
        except PoolBroken as e:
            outcome = e
        if outcome is None:
            return
        try:
            self.crew.ended(self.index, outcome)
        except Exception as e:  # e.g. the event log cannot be written: the pool is broken
            if isinstance(outcome, PoolBroken):
                raise
            err = PoolBroken(f"the supervisor of worker {self.index} failed: {e!r}")
            err.__cause__ = e
            self.crew.ended(self.index, err)

    async def _supervise(self) -> StepDown | None:
        crew, i = self.crew, self.index
        try:
            cause: Exit | None = None
            delay = 0.0
            while not crew.stopping:
                try:
                    if failpoints.ACTIVE:
                        failpoint("worker.spawn", worker=i)
                    spec = crew.spec(self.lane, str(self.cell.path), self.poison)
                    spare = crew.take_spare(spec)
                    handle = spare or await crew.launch(spec)
                except Exception as e:
                    if is_refusal(e) or self._failed_start():
                        return StepDown(f"starting worker {i} failed: {e!r}", e)
                    cause = Exit.failed(f"spawn failed: {e!r}")
                    crew.events.emit("died", i, None, **cause.as_event(), inflight=0, uptime=0.0)
                    await asyncio.sleep(crew.restart.on_death(i, 0.0) or 0.0)
                    continue
                self._started(handle, cause, delay)
                cause = await self._session(handle)
                if crew.stopping:
                    break
                if cause.recycled:
                    delay = 0.0
                    continue  # asked for (memory): not a failure, no backoff
                if self.was_ready:
                    self.failed_starts = 0
                elif spare is not None:  # a spare that died before it served (say, the same
                    pass  # kill took it too) says nothing of starting one: the next is forked
                elif self._failed_start():
                    return StepDown(not_starting(i, self.failed_starts, cause.text()))
                delay_or_none = crew.restart.on_death(
                    i, monotonic() - self.started_at, progressed=self.progressed
                )
                if delay_or_none is None:
                    return StepDown(crew.restart.why_give_up(i, cause.text()))
                delay = delay_or_none
                await asyncio.sleep(delay)
            return None
        except asyncio.CancelledError:
            if self.handle is not None:
                self.handle.kill()
            raise
        except Exception as e:
            err = PoolBroken(f"the supervisor of worker {i} failed: {e!r}")
            raise err from e

    def _started(self, handle: WorkerHandle, cause: Exit | None, delay: float) -> None:
        self.handle, self.started_at, self.was_ready = handle, monotonic(), False
        self.progressed = False  # it committed work (an Ack that moved something)
        self.hanging, self.recycling = False, None
        if self.crew.stopping:  # started while the pool was stopping
            with contextlib.suppress(EOFError):
                handle.channel.send_nowait(Stop())
        self.memory.samples.clear()
        events = self.crew.events
        events.emit(
            "started",
            self.index,
            handle.pid,
            mode=handle.mode,
            partitions=len(self.lane.partitions),
        )
        if cause is not None and cause.recycled:
            self.recycles += 1  # asked for: not counted as a failure
        elif cause is not None:
            self.restarts += 1
            events.emit(
                "restarted",
                self.index,
                handle.pid,
                attempt=self.restarts,
                delay=round(delay, 6),
                after=cause.as_event(),
            )

    async def _session(self, handle: WorkerHandle) -> Exit:
        reader = asyncio.create_task(self._read(handle))
        either: set[asyncio.Future[Any]] = {handle.exited, reader}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not handle.exited.done():
            # The channel ended but the worker is still there (a broken channel): it is lost.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(handle.exited), 2.0)
            if not handle.exited.done():
                handle.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(handle.exited), 5.0)
        # Read what it sent before it died: acks of work it did commit.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 1.0)
        reader.cancel()
        handle.channel.close()
        cause = handle.exited.result() if handle.exited.done() else Exit.failed("abandoned")
        return self._ended(handle, cause)

    def _ended(self, handle: WorkerHandle, cause: Exit) -> Exit:
        """Account for a worker's end: its work back in front, its queries failed, poison."""
        self.ready.clear()
        self.handle = None
        self.fail_queries(WorkerLost(f"worker {self.index} exited: {cause.text()}"))
        held = self.lane.inflight or self.lane.applied
        last = held[-1][OFFSET] if held else None  # the replay must reach this
        lost = self.crew.router.close(self.lane)
        in_flight = self.cell.read()[0]
        events = self.crew.events
        if self.recycling and cause.exitcode == 0:
            cause = Exit(cause.exitcode, cause.signal, cause.error, recycled=self.recycling)
        elif cause.exitcode == EXIT_MEMORY:
            # Not a requested recycle: it counts against the restart policy (backoff, intensity,
            # then a step down), so a worker that cannot even checkpoint does not loop forever.
            where = "in the handler" if in_flight >= 0 else "between messages (e.g. a checkpoint)"
            limit = self.crew.config.memory_hard_limit
            events.emit(
                "recycled",
                self.index,
                handle.pid,
                offset=in_flight,
                reason=f"MemoryError {where} under memory_hard_limit={limit}",
            )
        if not cause.recycled and self.streak.death(in_flight):
            self._poison(in_flight, cause)
        kind = (
            "stopped" if (self.crew.stopping or cause.recycled) and cause.exitcode == 0 else "died"
        )
        events.emit(
            kind,
            self.index,
            handle.pid,
            **cause.as_event(),
            inflight=lost,
            inflight_last=last,
            uptime=round(monotonic() - self.started_at, 6),
        )
        return cause

    def _poison(self, offset: int, cause: Exit) -> None:
        after = self.crew.config.poison_after
        reason = (
            f"in flight during {after} consecutive deaths of worker {self.index} "
            f"(last: {cause.text()}); poison_after={after}"
        )
        self.poison[offset] = reason
        mid = next((m[ID] for m in self.lane.unsent if m[OFFSET] == offset), None)
        self.crew.events.emit("poisoned", self.index, None, id=mid, offset=offset, reason=reason)

    async def _read(self, handle: WorkerHandle) -> None:
        channel, router, events = handle.channel, self.crew.router, self.crew.events
        while True:
            try:
                frame = await channel.recv()
            except EOFError:
                return
            if type(frame) is Applied:
                router.applied(self.lane, frame.position)
            elif type(frame) is Ack:
                n = router.ack(self.lane, frame.position, frame.offsets)
                self.progressed = self.progressed or n > 0
                if self.poison:
                    for offset in [o for o in self.poison if o <= frame.position]:
                        del self.poison[offset]
                events.emit(
                    "checkpointed",
                    self.index,
                    handle.pid,
                    messages=n,
                    position=frame.position,
                    partitions=len(frame.offsets),
                )
                for mid, offset, reason in frame.dead:
                    events.emit(
                        "dead_lettered",
                        self.index,
                        handle.pid,
                        id=mid,
                        offset=offset,
                        reason=reason,
                    )
            elif type(frame) is Rewind:
                n = router.rewind(self.lane)
                channel.send_nowait(Rewound())
                events.emit("rewound", self.index, handle.pid, position=frame.position, messages=n)
            elif type(frame) is State:
                fut = self.queries.pop(frame.rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(frame.state)
            elif type(frame) is Ready:
                events.emit(
                    "ready",
                    self.index,
                    handle.pid,
                    replay=len(self.lane.unsent),
                    startup=round(monotonic() - self.started_at, 6),
                )
                self.was_ready = True
                self.ready.set()
                router.open(self.lane, channel, handle.kill)

    def _failed_start(self) -> bool:
        """Count a worker that died before it was ready; True when that happened too often."""
        self.failed_starts += 1
        return self.failed_starts >= MAX_FAILED_STARTS

    # -- asked by the pool -----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to checkpoint and leave (once: a second call tells it nothing new)."""
        handle = self.handle
        if handle is not None and self._told_to_stop is not handle:
            self._told_to_stop = handle
            with contextlib.suppress(EOFError):
                handle.channel.send_nowait(Stop())

    def query(self, rid: int, key: str) -> asyncio.Future[bytes]:
        """Ask the ready worker for ``key``'s state (the future fails if the worker dies)."""
        assert self.handle is not None
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.queries[rid] = fut
        try:
            self.handle.channel.send_nowait(Query(rid, key))
        except EOFError:
            self.queries.pop(rid, None)
            raise
        return fut

    def fail_queries(self, err: Exception) -> None:
        for fut in self.queries.values():
            if not fut.done():
                fut.set_exception(err)
        self.queries.clear()
