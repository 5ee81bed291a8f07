"""A hung worker: dumped with py-spy into ``<data dir>/dumps/``, told, then stopped.

A process gets SIGTERM (and SIGCONT, so that a frozen one can handle it), ``hang_grace``, then
SIGKILL. A thread or inline worker cannot be killed: it is abandoned, and its replacement claims
the partitions with a newer epoch, fencing off whatever it does if it ever wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

from ._events import EventLog
from ._runners import WorkerHandle


async def stop_hung(
    handle: WorkerHandle,
    index: int,
    *,
    data_dir: Path,
    events: EventLog,
    silence: float,
    hang_timeout: float,
    hang_grace: float,
    offset: int,
    mid: str | None,
) -> None:
    """Dump the hung worker's stacks, say so (``hung``), then SIGTERM, a grace period, SIGKILL."""
    try:
        path, blocked = await asyncio.wait_for(dump(handle, index, data_dir), 15.0)
    except Exception as e:  # no dump (no thread, no process, no time): still stop it
        path, blocked = None, f"no stack dump: {e!r}"
    events.emit(
        "hung",
        index,
        handle.pid,
        silence=round(silence, 3),
        hang_timeout=hang_timeout,
        offset=offset,
        id=mid,
        dump=path,
        blocked=blocked,
    )
    if handle.mode != "process":
        handle.abandon()
        return
    if not handle.exited.done():  # (an exited worker's pid may belong to another process)
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGTERM)
            os.kill(handle.pid, signal.SIGCONT)  # a frozen process gets to handle it
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(handle.exited), hang_grace)
    if not handle.exited.done():
        events.emit("killed", index, handle.pid, reason="hung past hang_grace")
        handle.kill()


async def dump(handle: WorkerHandle, index: int, data_dir: Path) -> tuple[str | None, str | None]:
    """py-spy dump of the worker into <data dir>/dumps/; (path, the blocked frame)."""
    from chaos import dump_stacks  # only when a worker hangs

    try:
        stacks = await asyncio.to_thread(dump_stacks, handle.pid, timeout=5.0)
    except RuntimeError:  # no thread to be had: dump from the loop rather than not at all
        stacks = dump_stacks(handle.pid, timeout=5.0)
    folder = data_dir / "dumps"
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = folder / f"{stamp}-worker{index}-pid{handle.pid}.txt"
    header = f"# hung worker {index} (pid {handle.pid}); method: {stacks.method}"
    if stacks.reason:
        header += f" ({stacks.reason})"
    path.write_text(f"{header}\n{stacks.text}\n")
    path.with_suffix(".json").write_text(json.dumps(stacks.as_dict(), indent=1))
    blocked = stacks.blocked_frames()
    if handle.mode != "process":  # one process, many threads: the worker's own matters
        mine = f"chaosgate-worker-{index}"
        blocked = [(t, f) for t, f in blocked if t.name == mine] or blocked
    if blocked:
        thread, frame = blocked[0]
        return str(path), f"{frame} in thread {thread.name!r}: {thread.waiting}"
    busy = [t for t in stacks.threads if t.active and t.frames]
    return str(path), (f"{busy[0].frames[0]} in thread {busy[0].name!r} (busy)" if busy else None)
