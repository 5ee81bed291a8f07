"""MiniPool with one realistic bug planted per subclass. Each docstring says the bug, the category
a gate should report for it, and what it takes to show it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from .pool import Message, MiniPool, Slot, transaction


class AcksEarlyDropsCrashed(MiniPool):
    """Bug: when a worker dies, what it had in flight is dropped instead of sent again, as if it
    had been acknowledged. Category: lost (the unapplied part of a dead worker's in-flight work;
    needs a kill of a worker holding queued work)."""

    def _requeue(self, slot: Slot, retried: list[Message]) -> None:
        pass  # BUG: forgotten


class ResubmitsCommittedOnRecovery(MiniPool):
    """Bug: a start on an existing data dir replays EVERY intake row, through a "fast path" that
    appends without the applied check. Category: duplicated (every message applied before the
    restart; needs the whole pool stopped or killed and started again on the same data dir)."""

    def _recover(self) -> None:
        assert self._db is not None
        rows = self._db.execute("SELECT id, key, payload FROM intake ORDER BY seq")  # BUG: all
        for mid, key, blob in rows.fetchall():
            self._route(Message(mid, key, blob, check=False))  # BUG: no applied check


class RequeuesRetriesAtBack(MiniPool):
    """Bug: a replacement worker gets first what was submitted while it was starting, and only
    then what its predecessor had in flight, so newer messages of a key commit before older ones.
    Category: reordered (needs a kill of a worker with unapplied work in flight, and submits of
    the same keys before the replacement is ready: a window of about 30 ms)."""

    def _resend_order(self, slot: Slot) -> list[Message]:
        order = [*slot.waiting, *slot.retry]  # BUG: the retried ones last
        slot.retry.clear()
        slot.waiting.clear()
        return order


class RestartsAfterSeconds(MiniPool):
    """Bug: a replacement worker starts 6 s after a death. Category: recovery (nothing is lost,
    it comes late)."""

    def restart_delay(self, slot: Slot) -> float:
        return 6.0  # BUG


class DropsOneIn500(MiniPool):
    """Bug: every 500th message is acknowledged (and made durable) but never sent to a worker.
    Category: lost (no fault needed; a restart on the same data dir would recover them)."""

    def __init__(self, data_dir: str | Path, workers: int = 2, **options: Any):
        super().__init__(data_dir, workers, **options)
        self._routed = 0

    def _route(self, message: Message) -> None:
        self._routed += 1
        if self._routed % 500 == 0:
            return  # BUG: dropped
        super()._route(message)


class DeadLettersOnCrash(MiniPool):
    """Bug: when a worker dies, its in-flight messages are dead-lettered ("worker died") instead
    of retried. Category: dead_lettered (needs a kill of a worker holding work; messages it had
    applied but not acknowledged are then committed AND dead-lettered)."""

    def _requeue(self, slot: Slot, retried: list[Message]) -> None:
        for message in retried:
            self._dead_letter(message.id, "worker died")  # BUG


class AcksBeforeDurable(MiniPool):
    """Bug: submit returns before the intake row is written; rows are written by a background
    task every 200 ms. Category: lost (after a SIGKILL of the whole pool process and a restart:
    the messages acknowledged in the last 200 ms that no worker had applied yet)."""

    FLUSH_EVERY = 0.2

    def __init__(self, data_dir: str | Path, workers: int = 2, **options: Any):
        super().__init__(data_dir, workers, **options)
        self._unwritten: dict[str, tuple[str, bytes]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _write_intake(self, id: str, key: str, blob: bytes) -> bool:
        assert self._db is not None
        sql = "SELECT 1 FROM intake WHERE id = ?"
        if id in self._unwritten or self._db.execute(sql, (id,)).fetchone():
            return False
        self._unwritten[id] = (key, blob)  # BUG: acknowledged, not yet durable
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())
        return True

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_EVERY)
            self._flush()

    def _flush(self) -> None:
        rows = [(mid, key, blob) for mid, (key, blob) in self._unwritten.items()]
        self._unwritten.clear()
        assert self._db is not None
        with transaction(self._db) as db:
            sql = "INSERT OR IGNORE INTO intake(id, key, payload) VALUES (?, ?, ?)"
            db.executemany(sql, rows)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._db is not None and not self._stopping:
            self._flush()
        await super().stop()


class OrphansWorkers(MiniPool):
    """Bug: stop() ends only the workers it started first (the list kept at start); replacements
    started after a death are left running, and they do not exit on EOF. Category: leak (needs a
    worker death before stop; the orphans stay listed in worker_pids() after stop, and live until
    killed -- or until the forkserver exits, which PR_SET_PDEATHSIG ties them to)."""

    worker_options = {**MiniPool.worker_options, "exit_on_eof": False}  # BUG: linger on EOF

    async def start(self) -> None:
        await super().start()
        self._first = [slot.process for slot in self._slots]

    def _to_stop(self) -> list[Any]:
        return [p for p in super()._to_stop() if p in self._first]  # BUG: the first ones only


class AppliesRetriedTwice(MiniPool):
    """Bug: a worker's dedup is an in-memory set of the ids it applied (lost with it), not the
    durable applied table, so a replacement applies again what its predecessor applied but had
    not acknowledged yet. Category: duplicated (needs a kill of a worker within its 20 ms
    acknowledgement window, e.g. one busy with a slow message after fast ones)."""

    worker_options = {**MiniPool.worker_options, "dedup": "memory"}  # BUG


class RetriesOnce(MiniPool):
    """Bug: a message is retried after one worker death only; in flight during a second death it
    is silently dropped. Category: lost (needs repeated kills while retried work is in flight)."""

    def _requeue(self, slot: Slot, retried: list[Message]) -> None:
        super()._requeue(slot, [m for m in retried if m.attempt == 0])  # BUG: drops the rest


class LazyWorkers(MiniPool):
    """No bug: starts no worker until the first message (then all of them). worker_pids() is
    empty until then; the harness must aim its faults at live workers holding work."""

    lazy = True


class HangsAfterFault(MiniPool):
    """Bug: after its first worker death the pool wedges, as a ``multiprocessing.Pool`` does when
    a worker dies holding its queue's lock: the dead worker is not replaced and its work never
    comes back, ``committed()`` waits for it for ever, and ``stop()`` blocks its thread on the
    lock the dead worker held (``Pool.terminate()`` in ``_help_stuff_finish``). Category: hung
    (needs one worker death); the gate must end each scenario within its bound, with dumps."""

    wedged = False

    def _worker_died(self, slot: Slot) -> None:
        self.wedged = True  # BUG: no replacement, nothing retried

    async def committed(self) -> dict[str, list[Any]]:
        if self.wedged:
            await asyncio.Event().wait()  # BUG: the results never come
        return await super().committed()

    async def stop(self) -> None:
        if self.wedged:
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # BUG: blocks the caller's thread, event loop and all
        await super().stop()
