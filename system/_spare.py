"""A warm spare: a worker process started ahead, that serves a lane only once one needs it.

A replacement after ``kill -9`` then costs no fork, no interpreter start and no imports: the
supervisor hands the spare its lane (``Assign``, the lane's whole ``WorkerSpec``) and the spare
claims the partitions and says ``Ready``. Then another spare is started, in the background.
A spare is no worker of the pool's (``worker_pids`` leaves it out); one that dies unused is
replaced after a pause, and one that cannot be had (the system refuses a process) only means
the next replacement is forked as before -- a spare never steps the pool down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from ._frames import Assign
from ._runners import WorkerHandle
from ._worker import WorkerSpec

log = logging.getLogger("system")

PAUSE = 1.0  # after a spare died unused, or could not be started (doubling, to a minute)


class Spare:
    def __init__(self, launch: Callable[[], Awaitable[WorkerHandle]], wanted: Callable[[], bool]):
        self._launch, self._wanted = launch, wanted
        self.handle: WorkerHandle | None = None
        self._need = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    def start_once(self, after: Callable[[], Awaitable[object]]) -> None:
        """Keep a spare from when ``after()`` is done (the first workers ready) on; a later
        call (a new rung) only wakes the keeper."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(after), name="spare")
        else:
            self._need.set()

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    def take(self, spec: WorkerSpec) -> WorkerHandle | None:
        """The spare, now serving ``spec``'s lane; None if there is none ready."""
        handle, self.handle = self.handle, None
        self._need.set()
        if handle is None or handle.exited.done():
            return None
        try:
            handle.channel.send_nowait(Assign(spec))
        except EOFError:
            _end(handle)
            return None
        return handle

    async def _keep(self, after: Callable[[], Awaitable[object]]) -> None:
        with contextlib.suppress(Exception):
            await after()
        self._need.set()
        pause = PAUSE
        while True:
            await self._need.wait()
            self._need.clear()
            if self.handle is not None or not self._wanted():
                continue
            launching = asyncio.ensure_future(self._launch())
            try:
                handle = await asyncio.shield(launching)
            except asyncio.CancelledError:  # never leave a process behind: wait, then kill it
                with contextlib.suppress(Exception):
                    _end(await asyncio.wait_for(launching, 10.0))
                raise
            except Exception as e:  # refused: the next replacement is forked as before
                log.info("no warm spare worker for now (%r); trying again in %.0f s", e, pause)
                await asyncio.sleep(pause)
                pause = min(60.0, pause * 2)
                self._need.set()
                continue
            pause = PAUSE
            if not self._wanted():
                _end(handle)
                continue
            self.handle = handle
            handle.exited.add_done_callback(functools.partial(self._died, handle))

    def _died(self, handle: WorkerHandle, _: object) -> None:
        if self.handle is handle:  # died unused: another, after a pause
            self.handle = None
            handle.channel.close()
            asyncio.get_running_loop().call_later(PAUSE, self._need.set)

    def drop(self) -> None:
        """No spare wanted (another mode): kill the one there is."""
        handle, self.handle = self.handle, None
        if handle is not None:
            _end(handle)

    async def close(self) -> None:
        """Stop keeping a spare; the one there is is killed and seen gone (5 s at most)."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        handle, self.handle = self.handle, None
        if handle is not None:
            _end(handle)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(handle.exited), 5.0)


def _end(handle: WorkerHandle) -> None:
    handle.kill()
    handle.channel.close()
