"""A worker's progress cell: four integers in a small shared file, written by the worker, read
by the supervisor -- the heartbeat that needs no message and survives the worker's death.

    [0] offset of the message being applied now (-1 between batches)
    [1] messages started (moves while a batch is applied)
    [2] event-loop ticks (moves every heartbeat interval while the loop runs)
    [3] pid of the writer

A worker is alive while [1] or [2] moves. A handler that deadlocks, spins or is frozen
(SIGSTOP) moves neither: past ``hang_timeout`` the supervisor calls it hung. After a death, [0]
says which message was in flight -- the same one at K deaths in a row is a poison message.
A memory-mapped file (``<data dir>/run/worker-<n>.cell``) serves process, thread and inline
workers alike; a write costs a store into memory, no system call.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

SLOTS = 4
SIZE = 8 * SLOTS


class ProgressCell:
    def __init__(self, path: str | os.PathLike[str], *, create: bool = False):
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(exist_ok=True)
            with open(self.path, "wb") as f:
                f.write((-1).to_bytes(8, "little", signed=True) + bytes(SIZE - 8))
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.cells = memoryview(self._map).cast("q")

    def read(self) -> tuple[int, int, int, int]:
        c = self.cells
        return c[0], c[1], c[2], c[3]

    def close(self) -> None:
        self.cells.release()
        self._map.close()
