"""What the pool holds, counted: the figures of ``stats()`` and the events ``drain`` and
``submit`` wait on. The intake writer adds, the router takes away as acks come; both say when."""

from __future__ import annotations

import asyncio


class Tally:
    def __init__(self, max_outstanding: int):
        self.max_outstanding = max_outstanding
        self.submitted = 0  # logged by this pool
        self.recovered = 0  # found in the log at start, not committed: replayed
        self.committed = 0
        self.offsets: dict[int, int] = {}  # each partition's committed offset, as acks tell
        self.outstanding = 0  # logged (or recovered) and not yet committed
        self.writing = False  # submits taken by the intake writer and not yet answered
        self.room = asyncio.Event()  # set while outstanding < max_outstanding (backpressure)
        self.room.set()
        self.idle = asyncio.Event()  # set while nothing is outstanding or being written

    def quiet(self) -> bool:
        return self.outstanding == 0 and not self.writing

    def added(self, n: int) -> None:
        self.outstanding += n
        self.update()

    def done(self, n: int) -> None:
        self.outstanding -= n
        self.committed += n
        if self.outstanding < self.max_outstanding:
            self.room.set()
        self.update()

    def update(self) -> None:
        if self.quiet():
            self.idle.set()
        else:
            self.idle.clear()

    def release(self) -> None:
        """The pool ended: wake every waiter (it then finds out why)."""
        self.room.set()
        self.idle.set()
