"""The pool's life, written down: new -> open -> closing -> closed, and how it ended.

A pool is ``NEW`` until ``start()``, ``OPEN`` while it takes submits, ``CLOSING`` from the first
``close()`` and ``CLOSED`` once everything is shut. Apart from that, it may *end* early: broken
(``PoolBroken``: no rung of the fallback ladder left, or a supervisor failed) -- then every
waiter gets that error, and so does every later call. ``close()`` ends it too, with
``PoolClosed`` for whatever still waits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from enum import Enum

from ._errors import PoolBroken, PoolClosed, UsageError

log = logging.getLogger("system")


class State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_NEXT = {
    State.NEW: {State.OPEN},
    State.OPEN: {State.CLOSING},
    State.CLOSING: {State.CLOSED},
    State.CLOSED: set(),
}


class Lifecycle:
    def __init__(self) -> None:
        self.state = State.NEW
        self.broken: PoolBroken | None = None
        self.final: Exception | None = None  # what every waiter gets once the pool has ended
        self._ended: asyncio.Event | None = None
        self.stop_signal: int | None = None  # SIGTERM or SIGINT, once one asked to stop

    def on_signals(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """On SIGTERM or SIGINT: remember it, say so, and set the returned event."""
        stopped = asyncio.Event()

        def on_signal(signum: int) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum
                log.warning("received %s: draining and stopping", signal.Signals(signum).name)
                stopped.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        return stopped

    def move(self, to: State) -> None:
        if to not in _NEXT[self.state]:
            raise RuntimeError(f"a pool cannot go from {self.state.value} to {to.value}")
        if to is State.OPEN:
            self._ended = asyncio.Event()
        self.state = to

    @property
    def started(self) -> bool:
        return self.state is not State.NEW

    def end(self, err: Exception) -> None:
        """The pool ended with ``err`` (the first one counts); wake everything that waits."""
        if isinstance(err, PoolBroken) and self.broken is None:
            self.broken = err
        if self.final is None:
            self.final = err
        if self._ended is not None:
            self._ended.set()

    def check_started(self) -> None:
        if self.state is State.NEW:
            raise UsageError("the pool is not started; use `async with Pool(...)` or start()")

    def check_open(self) -> None:
        """Raise unless submits are taken: not started, closing or closed, or ended."""
        self.check_started()
        if self.state is not State.OPEN:
            raise PoolClosed("the pool is closed (or closing); open a new Pool to submit more")
        if self.final is not None:
            raise self.final

    def check_final(self) -> None:
        if self.final is not None:
            raise self.final

    async def until(self, event: asyncio.Event) -> None:
        """Wait for ``event``; raise what the pool ended with if it ends first."""
        if self.final is None and not event.is_set() and self._ended is not None:
            waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._ended.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        self.check_final()
