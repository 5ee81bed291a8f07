"""The pool: the facade that opens a data dir, wires the parts, and answers the user.

The parts, and how a message flows through them, are drawn in the package's docstring
(``system/__init__.py``).

Every message is in exactly one place until its ack pops it: the intake writer's batch, or a
lane's ``unsent``, ``inflight`` or ``applied``. An ack means committed, so counts never drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from ._checkpoint import forget_results
from ._config import PoolConfig
from ._core import Handler
from ._crew import Crew
from ._errors import PoolBroken, PoolClosed, UsageError, WorkerLost
from ._events import monotonic
from ._intake_writer import IntakeWriter
from ._ladder import Ladder
from ._lifecycle import Lifecycle, State
from ._opening import Opened, open_data_dir, resolve_mode, travels
from ._restart import RestartPolicy
from ._router import Router
from ._runners import launch
from ._tally import Tally
from ._watch import watch
from ._worker import WorkerSpec

log = logging.getLogger("system")


class Pool:
    """A resilient, exactly-once, key-affine worker pool. Use ``async with Pool(...) as pool``.

    Settings are ``PoolConfig``'s fields, as keywords (``Pool(handler, "data", workers=2)``) or
    as one ``config=PoolConfig(...)``.
    """

    def __init__(
        self,
        handler: Handler,
        data_dir: str | os.PathLike[str],
        *,
        initial_state: Any = None,
        restart: RestartPolicy | None = None,
        config: PoolConfig | None = None,
        **settings: Any,
    ):
        if config is None:
            config = PoolConfig.create("Pool()", **settings)
        elif settings:
            raise UsageError(f"give settings in config= or as keywords, not both: {settings}")
        self._picklable = travels(handler, initial_state, config.mode)
        self.config = config
        self.handler = handler
        self.initial_state = initial_state
        self.data_dir = Path(data_dir)
        self.restart = restart or RestartPolicy()
        self.mode_reason = "asked for"
        self._mode = config.mode
        self._partitions = config.partitions
        self._life = Lifecycle()
        self._rids = itertools.count()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing: asyncio.Future[None] | None = None

    # -- what it is now ----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._crew.mode if self._life.started else self._mode

    @property
    def workers(self) -> int:
        return self._router.workers if self._life.started else self.config.workers

    @property
    def partitions(self) -> int | None:
        return self._partitions

    @property
    def closed(self) -> bool:
        return self._life.state is State.CLOSED

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Pool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._life.started:
            raise UsageError("the pool is already started; start() it once")
        self._loop = asyncio.get_running_loop()
        c = self.config
        self._opened: Opened = open_data_dir(self.data_dir, c)
        opened = self._opened
        self.data_dir, intake, events = opened.data_dir, opened.intake, opened.events
        self._partitions = partitions = intake.partitions
        if c.mode == "auto":
            self._mode, self.mode_reason = resolve_mode(c, self._picklable)
        self._ctx = multiprocessing.get_context(c.start_method)
        if c.start_method == "forkserver":
            self._ctx.set_forkserver_preload(["system._worker"])
        self._tally = tally = Tally(c.max_outstanding)
        self._router = Router(c, c.workers, partitions, tally)
        rows = intake.read_after(self._opened.committed, partitions)
        tally.recovered = self._router.route(rows)
        tally.offsets.update(self._opened.committed)
        events.emit(
            "opened",
            mode=self._mode,
            workers=c.workers,
            partitions=partitions,
            replaying=tally.recovered,
            pid_pool=os.getpid(),
            mode_reason=self.mode_reason,
        )
        self._writer = IntakeWriter(intake, self._router, events, c)
        self._crew = Crew(
            config=c,
            router=self._router,
            events=events,
            restart=self.restart,
            data_dir=self.data_dir,
            spec=functools.partial(
                WorkerSpec.build, self.handler, self.initial_state, str(self.data_dir), c
            ),
            launch=lambda mode, spec: launch(mode, spec, self._ctx),
            ladder=Ladder(c.fallback_cooldown),
            on_broken=self._fail_waiters,
        )
        self._crew.start(self._mode)
        self._tasks = [
            asyncio.create_task(self._router.run(), name="dispatch"),
            asyncio.create_task(self._writer.run(), name="intake"),
            asyncio.create_task(
                watch(c, lambda: self._crew.supervisors, lambda: self._crew.mode, self._crew.climb),
                name="watchdog",
            ),
        ]
        self._life.move(State.OPEN)

    async def close(self, grace: float = 10.0) -> None:
        """Stop intake, drain, checkpoint, stop the workers; SIGKILL stragglers at ``grace``.

        Once begun, a close goes on to the end even if its caller is cancelled; a second call
        waits for the same one, and a call after one that failed tries again."""
        if not self._life.started or self.closed:
            return
        if self._closing is None or self._closing.done():
            self._closing = asyncio.ensure_future(self._close(grace))
        await asyncio.shield(self._closing)

    async def _close(self, grace: float) -> None:
        if self._life.state is State.OPEN:
            self._life.move(State.CLOSING)
        self._crew.halt()
        deadline = monotonic() + grace
        drained = True
        if self._life.broken is None:
            try:
                await self.drain(timeout=grace)
            except (TimeoutError, PoolBroken):
                drained = False
        await self._crew.close(deadline)
        # Submits already taken by the intake writer are durable: let it answer them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, deadline - monotonic())):
                while self._writer.writing:
                    await asyncio.sleep(0.005)
        self._fail_waiters(PoolClosed("the pool was closed before this was done"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._crew.cancel()
        self._writer.close()
        t = self._tally
        self._opened.close(
            "stopped", drained=drained, committed=t.committed, outstanding=t.outstanding
        )
        self._life.move(State.CLOSED)

    def add_signal_handlers(self) -> asyncio.Event:
        """Close gracefully on SIGTERM or SIGINT; the returned event is set with the signal."""
        return self._life.on_signals(self._loop)

    @property
    def stop_signal(self) -> int | None:
        """The signal that asked the pool to stop (see ``add_signal_handlers``), if any."""
        return self._life.stop_signal

    def _fail_waiters(self, err: Exception) -> None:
        """The pool ended (broken, or closed): every waiter gets ``err``."""
        self._life.end(err)
        self._writer.fail(err)
        self._tally.release()
        for sup in self._crew.supervisors:
            sup.fail_queries(err)

    # -- intake ----------------------------------------------------------------------------------
    async def submit(self, key: str, payload: Any, id: str | None = None) -> int:
        """Durably log a message; return its offset (the first one's, if ``id`` was seen before)."""
        return (await self.submit_many([(key, payload, id)]))[0]

    async def submit_many(self, items: Iterable[tuple[Any, ...]]) -> list[int]:
        """Durably log ``(key, payload[, id])`` items in one group commit; return their offsets."""
        self._life.check_open()
        entries = self._writer.prepare_many(items)
        return await self._writer.submit(entries, self._life.check_open)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every message submitted so far is committed (or dead-lettered)."""
        self._life.check_started()
        t0 = monotonic()
        tally = self._tally
        self._router.draining += 1
        self._router.wake.set()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._life.check_final()
                    await tally.idle.wait()
                    self._life.check_final()
                    if tally.quiet():
                        break
                    tally.idle.clear()
        finally:
            self._router.draining -= 1
        self._opened.events.emit(
            "drained", committed=tally.committed, seconds=round(monotonic() - t0, 6)
        )

    # -- reading ---------------------------------------------------------------------------------
    async def query(self, key: str, timeout: float = 30.0) -> Any:
        """The current state of ``key`` in its worker (every message it was sent is applied)."""
        if self._life.state in (State.NEW, State.CLOSED):
            raise UsageError("query() needs a started, open pool")
        async with asyncio.timeout(timeout):
            while True:
                sup = self._crew.supervisor_of(key)  # anew each time: a step down changes them
                await self._life.until(sup.ready)
                if sup.handle is None:
                    await asyncio.sleep(0.01)  # an old one, woken by a reconfiguration
                    continue
                rid = next(self._rids)
                try:
                    return pickle.loads(await sup.query(rid, key))
                except (EOFError, WorkerLost):
                    await asyncio.sleep(0.01)  # the replacement will answer
                finally:
                    sup.queries.pop(rid, None)

    def result(self, id: str) -> tuple[bool, Any]:
        """``(True, value)`` once message ``id``'s output is committed, else ``(False, None)``."""
        return self._opened.store.result(id)

    async def forget(self, *ids: str) -> int:
        """Drop the stored results of ``ids`` (read them first); never stored again (their
        offsets are committed). In a thread, so a worker holding the store's lock never
        stalls the loop."""
        return await asyncio.to_thread(forget_results, self.data_dir, self.config.durability, ids)

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._opened.store.dead_letters()

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """An async stream of every lifecycle event from now on (also in events.jsonl)."""
        return self._opened.events.stream()

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes (none in thread or inline mode)."""
        sups = self._crew.supervisors
        return [s.handle.pid for s in sups if s.handle is not None and s.handle.mode == "process"]

    def stats(self) -> dict[str, Any]:
        t = self._tally
        return {
            "mode": self.mode,
            "partitions": self._partitions,
            "submitted": t.submitted,
            "recovered": t.recovered,
            "committed": t.committed,
            "outstanding": t.outstanding,
            **self._crew.stats(),
            "time": time.time(),
        }
