"""The pool's watchdog: hung workers (progress cells), memory (RSS), poison (deaths in a row).

A mixin of ``Pool``: it reads and changes the pool's slots and events. Every heartbeat interval
``_watch`` compares each worker's progress cell with what it saw before (see ``_progress`` and
``_watchdog``); a worker with no progress for ``hang_timeout`` -- or not ready ``start_timeout``
after it started -- is dumped with py-spy into ``<data dir>/dumps/`` and stopped: SIGTERM,
``hang_grace``, SIGKILL (a thread or inline worker is abandoned instead: it cannot be killed, and
its replacement fences it off). Every memory interval, process workers' RSS is sampled against
``memory_soft_limit``: over it, or trending to it, a worker gets SIGUSR1 and stops after its
current message (a recycle). ``_poison`` marks the message in flight at ``poison_after``
consecutive deaths of a worker, to be dead-lettered by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import psutil

from ._events import monotonic
from ._runners import WorkerHandle, exit_text

if TYPE_CHECKING:
    from ._pool import _Slot


class Watching:
    """Watchdog methods of ``Pool`` (see the module docstring)."""

    def _poison(self, slot: _Slot, offset: int, detail: dict[str, Any]) -> None:
        reason = (
            f"in flight during {self.poison_after} consecutive deaths of worker {slot.index} "
            f"(last: {exit_text(detail)}); poison_after={self.poison_after}"
        )
        slot.poison[offset] = reason
        mid = next((m[1] for m in slot.unsent if m[0] == offset), None)
        self._events.emit("poisoned", slot.index, None, id=mid, offset=offset, reason=reason)

    async def _watch(self) -> None:
        """Every heartbeat interval: is each worker alive? Every memory interval: its RSS."""
        next_memory = 0.0
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            now = monotonic()
            for slot in self._slots:
                handle, cell, live = slot.handle, slot.cell, slot.liveness
                if handle is None or cell is None or live is None:
                    continue
                if not slot.was_ready:
                    # Starting: allowed a while longer (imports, claiming partitions), but not
                    # for ever -- a worker frozen or stuck before "ready" is hung too.
                    if now - slot.started_at > self.start_timeout:
                        if not slot.hanging:
                            slot.hanging = True
                            task = asyncio.create_task(
                                self._on_hang(slot, handle, now - slot.started_at)
                            )
                            self._side_tasks.add(task)
                            task.add_done_callback(self._side_tasks.discard)
                    live.reset(now, cell.read()[1:3])
                    continue
                live.observe(now, cell.read()[1:3])
                if live.hung(now) and not slot.hanging:
                    slot.hanging = True
                    task = asyncio.create_task(self._on_hang(slot, handle, live.silence(now)))
                    self._side_tasks.add(task)
                    task.add_done_callback(self._side_tasks.discard)
            self._try_climb(now)
            if self.memory_soft_limit and self.mode == "process" and now >= next_memory:
                next_memory = now + self.memory_interval
                self._watch_memory(now)

    def _watch_memory(self, now: float) -> None:
        assert self.memory_soft_limit is not None
        for slot in self._slots:
            handle = slot.handle
            if handle is None or not slot.was_ready or slot.recycling or slot.hanging:
                continue
            try:
                rss = psutil.Process(handle.pid).memory_info().rss
            except psutil.Error:
                continue
            slot.memory.add(now, rss)
            verdict = slot.memory.verdict(self.memory_soft_limit)
            if verdict is None:
                continue
            slot.recycling = (
                "rss over memory_soft_limit"
                if verdict == "over"
                else f"rss trend crosses memory_soft_limit within {self.memory_horizon} s"
            )
            self._events.emit(
                "recycled",
                slot.index,
                handle.pid,
                reason=slot.recycling,
                rss=rss,
                soft_limit=self.memory_soft_limit,
                slope_bytes_per_s=round(slot.memory.slope()),
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGUSR1)  # stop after the current message

    async def _on_hang(self, slot: _Slot, handle: WorkerHandle, silence: float) -> None:
        """Dump the hung worker's stacks, then SIGTERM, a grace period, SIGKILL."""
        in_flight = slot.cell.read()[0] if slot.cell else -1
        mid = next((m[1] for m in slot.inflight if m[0] == in_flight), None)
        try:
            path, blocked = await asyncio.wait_for(self._dump(slot, handle), 15.0)
        except Exception as e:  # no dump (no thread, no process, no time): still stop it
            path, blocked = None, f"no stack dump: {e!r}"
        self._events.emit(
            "hung",
            slot.index,
            handle.pid,
            silence=round(silence, 3),
            hang_timeout=self.hang_timeout,
            offset=in_flight,
            id=mid,
            dump=path,
            blocked=blocked,
        )
        if handle.mode != "process":
            handle.abandon()  # a thread cannot be killed: replace it, fenced off by epoch
            return
        if not handle.exited.done():  # (an exited worker's pid may belong to another process)
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGTERM)
                os.kill(handle.pid, signal.SIGCONT)  # a frozen process gets to handle it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(handle.exited), self.hang_grace)
        if not handle.exited.done():
            self._events.emit("killed", slot.index, handle.pid, reason="hung past hang_grace")
            handle.kill()

    async def _dump(self, slot: _Slot, handle: WorkerHandle) -> tuple[str | None, str | None]:
        """py-spy dump of the worker into <data dir>/dumps/; (path, the blocked frame)."""
        from chaos import dump_stacks  # only when a worker hangs

        try:
            dump = await asyncio.to_thread(dump_stacks, handle.pid, timeout=5.0)
        except RuntimeError:  # no thread to be had: dump from the loop rather than not at all
            dump = dump_stacks(handle.pid, timeout=5.0)
        folder = self.data_dir / "dumps"
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        path = folder / f"{stamp}-worker{slot.index}-pid{handle.pid}.txt"
        header = f"# hung worker {slot.index} (pid {handle.pid}); method: {dump.method}"
        if dump.reason:
            header += f" ({dump.reason})"
        path.write_text(f"{header}\n{dump.text}\n")
        path.with_suffix(".json").write_text(json.dumps(dump.as_dict(), indent=1))
        blocked = dump.blocked_frames()
        if handle.mode != "process":  # one process, many threads: the worker's own matters
            mine = f"chaosgate-worker-{slot.index}"
            blocked = [(t, f) for t, f in blocked if t.name == mine] or blocked
        if blocked:
            thread, frame = blocked[0]
            return str(path), f"{frame} in thread {thread.name!r}: {thread.waiting}"
        busy = [t for t in dump.threads if t.active and t.frames]
        return str(path), (
            f"{busy[0].frames[0]} in thread {busy[0].name!r} (busy)" if busy else None
        )
