"""The pool: durable intake, key-affine dispatch, and supervision of the workers.

::

    submit(key, payload, id) ──► _pending ──► intake writer thread: IntakeLog.append
          ▲ returns the offset once durable         │  (group commit; ids deduplicated)
          │                                         ▼ new rows, in offset order
     backpressure: waits while            slot.unsent   (partition p belongs to slot p % workers)
     max_outstanding are uncommitted              │  dispatcher: at most max_inflight per slot,
                                                  ▼  max_batch messages per channel write
                                          slot.inflight ──("batch")──► worker: WorkerCore.apply
                                                  ▲                         │ checkpoint (N msgs,
                                                  └─────("ack", position)───┘ T seconds, flush)

    supervisor, one task per slot: launch ─► ready ─► ... ─► exit seen on the sentinel fd
        ─► read the acks it sent before dying ─► rewind inflight to the front of unsent
        ─► RestartPolicy: backoff delay (or give up past the intensity limit) ─► relaunch;
        the replacement claims the partitions (fencing) and skips what was already committed.

Every message is in exactly one place until its ack pops it: the log (not yet routed), a slot's
``unsent`` or a slot's ``inflight``. An ack means committed, so counts never drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chaos import _failpoints
from chaos._failpoints import failpoint

from ._checkpoint import CheckpointStore
from ._core import Handler
from ._errors import DataDirError, PayloadError, PoolBroken, PoolClosed, UsageError, WorkerLost
from ._events import EventLog, monotonic
from ._fallback import WORKER_MEMORY, choose_mode, is_refusal
from ._intake import IntakeLog, check_data_dir, lock_data_dir
from ._ladder import Ladder
from ._message import Wire, check_key, partition_of
from ._progress import ProgressCell
from ._restart import RestartPolicy
from ._runners import MODES, WorkerHandle, exit_text, launch
from ._watchdog import Liveness, MemoryTrend, PoisonStreak
from ._watching import Watching
from ._worker import EXIT_MEMORY, WorkerSpec

log = logging.getLogger("system")
_PICKLE = pickle.HIGHEST_PROTOCOL


@dataclass
class _Slot:
    index: int
    partitions: tuple[int, ...]
    unsent: deque[Wire] = field(default_factory=deque)
    inflight: deque[Wire] = field(default_factory=deque)
    handle: WorkerHandle | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    flush_sent: bool = False
    started_at: float = 0.0
    was_ready: bool = False
    failed_starts: int = 0  # consecutive deaths before ready
    cell: ProgressCell | None = None
    liveness: Liveness | None = None
    memory: MemoryTrend = field(default_factory=MemoryTrend)
    streak: PoisonStreak = field(default_factory=PoisonStreak)
    poison: dict[int, str] = field(default_factory=dict)  # offset -> reason, for the next worker
    hanging: bool = False
    recycling: str | None = None  # why the worker was asked to stop after its current message
    restarts: int = 0
    recycles: int = 0
    queries: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)


class Pool(Watching, Ladder):
    """A resilient, exactly-once, key-affine worker pool. Use ``async with Pool(...) as pool``."""

    def __init__(
        self,
        handler: Handler,
        data_dir: str | os.PathLike[str],
        *,
        workers: int = 4,
        mode: str = "process",
        partitions: int | None = None,
        initial_state: Any = None,
        checkpoint_every: int = 5000,
        checkpoint_interval: float = 0.05,
        durability: str = "fsync",
        max_inflight: int = 10_000,
        max_batch: int = 1_000,
        max_outstanding: int = 200_000,
        max_batch_bytes: int = 16 * 2**20,
        max_payload_bytes: int = 256 * 2**20,
        hang_timeout: float = 10.0,
        hang_grace: float = 2.0,
        start_timeout: float = 10.0,
        heartbeat_interval: float = 0.2,
        retries: int = 2,
        retry_backoff: float = 0.01,
        poison_after: int = 3,
        memory_soft_limit: int | None = None,
        memory_hard_limit: int | None = None,
        memory_interval: float = 0.5,
        memory_horizon: float = 5.0,
        restart: RestartPolicy | None = None,
        start_method: str = "forkserver",
        fallback_cooldown: float | None = 60.0,
        worker_memory: int = WORKER_MEMORY,
    ):
        if mode not in (*MODES, "auto"):
            raise UsageError(f"mode must be one of auto, {', '.join(MODES)}; got {mode!r}")
        if durability not in ("fsync", "process"):
            raise UsageError(f"durability must be 'fsync' or 'process'; got {durability!r}")
        for name, value in [
            ("workers", workers),
            ("checkpoint_every", checkpoint_every),
            ("max_inflight", max_inflight),
            ("max_batch", max_batch),
            ("max_outstanding", max_outstanding),
            ("max_batch_bytes", max_batch_bytes),
            ("max_payload_bytes", max_payload_bytes),
        ]:
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an int >= 1; got {value!r}")
        if partitions is not None and (not isinstance(partitions, int) or partitions < workers):
            raise UsageError(
                f"partitions must be an int >= workers ({workers}); got {partitions!r}"
            )
        if not 0 < heartbeat_interval <= hang_timeout / 2:
            raise UsageError(
                f"heartbeat_interval must be > 0 and at most hang_timeout / 2 "
                f"({hang_timeout / 2}); got {heartbeat_interval!r}"
            )
        if not start_timeout > 0:
            raise UsageError(f"start_timeout must be > 0 seconds; got {start_timeout!r}")
        if memory_hard_limit is not None:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            if memory_hard_limit < 64 * 2**20 or (0 <= hard < memory_hard_limit):
                raise UsageError(
                    f"memory_hard_limit={memory_hard_limit:,} bytes is unusable: it caps a "
                    "worker's whole address space (RLIMIT_AS: interpreter, uvloop, SQLite, "
                    "thread stacks), so give at least 64 MiB"
                    + (f", and at most this process's hard limit {hard:,}" if hard >= 0 else "")
                )
        if poison_after < 1 or retries < 0:
            raise UsageError(
                f"poison_after must be >= 1 and retries >= 0; got {poison_after}, {retries}"
            )
        if not checkpoint_interval > 0:
            raise UsageError(
                f"checkpoint_interval must be > 0 seconds; got {checkpoint_interval!r}"
            )
        self._picklable = True
        for what, obj in [("handler", handler), ("initial_state", initial_state)]:
            try:
                pickle.dumps(obj)
            except Exception as e:
                self._picklable = False
                if mode == "process":
                    raise UsageError(
                        f"{what} {obj!r:.80} cannot be sent to worker processes ({e}); define it "
                        "at module level, or use mode='thread'"
                    ) from e
        self.handler = handler
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.mode = mode
        self.partitions = partitions
        self.initial_state = initial_state
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.durability = durability
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self.max_outstanding = max_outstanding
        self.max_batch_bytes = max_batch_bytes
        self.max_payload_bytes = max_payload_bytes
        self.hang_timeout = hang_timeout
        self.hang_grace = hang_grace
        self.start_timeout = start_timeout
        self.heartbeat_interval = heartbeat_interval
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.poison_after = poison_after
        self.memory_soft_limit = memory_soft_limit
        self.memory_hard_limit = memory_hard_limit
        self.memory_interval = memory_interval
        self.memory_horizon = memory_horizon
        self.restart = restart or RestartPolicy()
        self.start_method = start_method
        self.fallback_cooldown = fallback_cooldown
        self.worker_memory = worker_memory
        self._climb: list[tuple[str, int]] = []  # rungs stepped down from, to climb back to
        self._last_step = 0.0
        self._reconfiguring = False
        self._degrades = 0
        self._reconfigure_task: asyncio.Task[None] | None = None
        self._supervisors: list[asyncio.Task[None]] = []
        self.mode_reason = "asked for"
        self._started = False
        self._closing = False
        self._closed = False
        self._broken: PoolBroken | None = None
        self._final: Exception | None = None  # what every waiter gets once the pool has ended
        self._pending: list[
            tuple[list[tuple[str, str, int, bytes, bool]], asyncio.Future[Any]]
        ] = []
        self._writing = False
        self._writer_inline = False  # no thread for the intake writer: write in the loop
        self._writing_batch: list[tuple[Any, asyncio.Future[Any]]] | None = None
        self._outstanding = 0
        self._submitted = 0
        self._committed = 0
        self._recovered = 0
        self._draining = 0
        self._ids = itertools.count()
        self._id_prefix = os.urandom(6).hex()
        self._rids = itertools.count()
        self._tasks: list[asyncio.Task[Any]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()  # hang handlers
        self.stop_signal: int | None = None  # set by the handlers of add_signal_handlers()

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Pool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            raise UsageError("the pool is already started; start() it once")
        self._loop = asyncio.get_running_loop()
        self.data_dir = check_data_dir(self.data_dir, create=True)
        opened: list[Any] = []  # closed again if anything below fails: a failed start holds nothing
        try:
            self._lock = lock_data_dir(self.data_dir)
            opened.append(self._lock)
            self._intake = IntakeLog(self.data_dir, self.partitions, durability=self.durability)
            opened.append(self._intake)
            self.partitions = self._intake.partitions
            if self.workers > self.partitions:
                raise UsageError(
                    f"workers ({self.workers}) > partitions ({self.partitions}) of this data "
                    "dir; use at most as many workers as partitions"
                )
            try:
                self._store = CheckpointStore(self.data_dir, durability=self.durability)
            except sqlite3.DatabaseError as e:
                raise DataDirError(
                    f"{self.data_dir / 'checkpoints.db'} is not a usable checkpoint store ({e}); "
                    "restore it from a backup, or use another data dir"
                ) from e
            opened.append(self._store)
            self._events = EventLog(self.data_dir / "events.jsonl")
            opened.append(self._events)
            committed = self._store.committed()
        except BaseException:
            for thing in reversed(opened):
                thing.close()
            raise
        if self.mode == "auto":
            if self._picklable:
                available = psutil.virtual_memory().available
                self.mode, self.mode_reason = choose_mode(
                    self.workers, available, self.worker_memory
                )
            else:
                self.mode, self.mode_reason = "thread", "the handler cannot be sent to processes"
        self._ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            self._ctx.set_forkserver_preload(["system._worker"])
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chaosgate-intake")
        self._wake = asyncio.Event()
        self._has_pending = asyncio.Event()
        self._idle = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ended = asyncio.Event()  # set when the pool is closed or broken
        w = self.workers
        self._slots = self._make_slots()
        for row in self._intake.read_after(committed, self.partitions):
            self._slots[row[3] % w].unsent.append((*row, 1))
            self._recovered += 1
        self._outstanding = self._recovered
        self._update_idle()
        self._events.emit(
            "opened",
            mode=self.mode,
            workers=w,
            partitions=self.partitions,
            replaying=self._recovered,
            pid_pool=os.getpid(),
            mode_reason=self.mode_reason,
        )
        self._supervisors = [
            asyncio.create_task(self._supervise(s), name=f"supervise-{s.index}")
            for s in self._slots
        ]
        self._tasks = [asyncio.create_task(self._dispatch(), name="dispatch")]
        self._tasks.append(asyncio.create_task(self._write_intake(), name="intake"))
        self._tasks.append(asyncio.create_task(self._watch(), name="watchdog"))
        self._started = True
        self._wake.set()

    def _make_slots(self) -> list[_Slot]:
        w = self.workers
        slots = [_Slot(i, tuple(range(i, self.partitions, w))) for i in range(w)]
        for slot in slots:
            slot.cell = ProgressCell(
                self.data_dir / "run" / f"worker-{slot.index}.cell", create=True
            )
            slot.liveness = Liveness(self.hang_timeout)
            slot.memory = MemoryTrend(self.memory_horizon)
            slot.streak = PoisonStreak(self.poison_after)
        return slots

    async def close(self, grace: float = 10.0) -> None:
        """Stop intake, drain, checkpoint, stop the workers; SIGKILL stragglers at ``grace``."""
        if not self._started or self._closed:
            return
        self._closing = True
        deadline = monotonic() + grace
        drained = True
        if self._broken is None:
            try:
                await self.drain(timeout=grace)
            except (TimeoutError, PoolBroken):
                drained = False
        for slot in self._slots:
            if slot.handle is not None:
                with contextlib.suppress(EOFError):
                    slot.handle.channel.send_nowait(("stop",))
        if self._reconfigure_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reconfigure_task), 15.0)
        supervisors = dict(zip(self._supervisors, self._slots, strict=True))
        _, late = await asyncio.wait(supervisors, timeout=max(0.5, deadline - monotonic()))
        dying = set()
        for task in late:
            slot = supervisors[task]
            if slot.handle is None:
                task.cancel()  # between workers (a restart backoff): nothing to stop
            else:
                self._events.emit("killed", slot.index, slot.handle.pid, reason="grace expired")
                slot.handle.kill()
                dying.add(task)
        if dying:
            await asyncio.wait(dying, timeout=5.0)
        # Submits already taken by the intake writer are durable: let it answer them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, deadline - monotonic())):
                while self._writing:
                    await asyncio.sleep(0.005)
        self._fail_waiters(PoolClosed("the pool was closed before this was done"))
        tasks = [*self._supervisors, *self._tasks, *self._side_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in self._slots:
            if slot.cell is not None:
                slot.cell.close()
        self._writer.shutdown(wait=True)
        self._intake.close()
        self._store.close()
        self._events.emit(
            "stopped", drained=drained, committed=self._committed, outstanding=self._outstanding
        )
        self._events.close()
        self._lock.close()
        self._closed = True

    def add_signal_handlers(self) -> asyncio.Event:
        """Close gracefully on SIGTERM or SIGINT; the returned event is set with the signal."""
        stopped = asyncio.Event()

        def on_signal(signum: int) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum
                log.warning("received %s: draining and stopping", signal.Signals(signum).name)
                stopped.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, on_signal, sig)
        return stopped

    # -- intake ----------------------------------------------------------------------------------
    def _prepare(
        self, key: str, payload: Any, mid: str | None
    ) -> tuple[str, str, int, bytes, bool]:
        check_key(key)
        kind = f"{type(payload).__module__}.{type(payload).__qualname__}"
        try:
            blob = pickle.dumps(payload, protocol=_PICKLE)
        except Exception as e:
            raise PayloadError(
                f"payload of type {kind} for key {key!r} cannot be pickled "
                f"({type(e).__name__}: {e}); nothing was written. Submit plain data (or an "
                "importable class) instead"
            ) from e
        if len(blob) > self.max_payload_bytes:
            raise PayloadError(
                f"payload of type {kind} for key {key!r} is {len(blob):,} bytes pickled, over "
                f"max_payload_bytes={self.max_payload_bytes:,}; nothing was written. Store it "
                "elsewhere and submit a reference, or raise max_payload_bytes"
            )
        if mid is None:
            return (
                f"{self._id_prefix}-{next(self._ids)}",
                key,
                partition_of(key, self.partitions),
                blob,
                True,
            )
        if type(mid) is not str:
            raise UsageError(f"id must be a str or None; got {type(mid).__name__} {mid!r:.60}")
        return (mid, key, partition_of(key, self.partitions), blob, False)

    def _check_open(self) -> None:
        if not self._started:
            raise UsageError("the pool is not started; use `async with Pool(...)` or start()")
        if self._closing:
            raise PoolClosed("the pool is closed (or closing); open a new Pool to submit more")
        if self._final is not None:
            raise self._final

    async def submit(self, key: str, payload: Any, id: str | None = None) -> int:
        """Durably log a message; return its offset (the first one's, if ``id`` was seen before)."""
        return (await self.submit_many([(key, payload, id)]))[0]

    async def submit_many(self, items: Iterable[tuple[Any, ...]]) -> list[int]:
        """Durably log ``(key, payload[, id])`` items in one group commit; return their offsets."""
        self._check_open()
        entries = [
            self._prepare(*item) if len(item) == 3 else self._prepare(*item, None) for item in items
        ]
        while self._outstanding >= self.max_outstanding:
            self._room.clear()
            await self._room.wait()
            self._check_open()
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._pending.append((entries, fut))
        self._idle.clear()
        self._has_pending.set()
        return await fut

    async def _write_intake(self) -> None:
        while True:
            await self._has_pending.wait()
            self._has_pending.clear()
            batch, self._pending = self._pending, []
            self._writing, self._writing_batch = True, batch
            try:
                rows, offsets = await self._write_batch(batch)
            except Exception as e:
                err = PoolBroken(
                    f"the intake log could not be written ({e!r}); nothing was lost "
                    "that was acknowledged, but these submits were not logged"
                )
                err.__cause__ = e
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                self._writing, self._writing_batch = False, None
                self._update_idle()
                continue
            self._writing, self._writing_batch = False, None
            w = self.workers
            slots = self._slots
            for row in rows:
                slots[row[3] % w].unsent.append((*row, 1))
            self._submitted += len(rows)
            self._outstanding += len(rows)
            i = 0
            for entries, fut in batch:
                if not fut.done():
                    fut.set_result(offsets[i : i + len(entries)])
                i += len(entries)
            self._update_idle()
            self._wake.set()

    async def _write_batch(self, batch: list[Any]) -> tuple[list[Any], list[int]]:
        """Append in the writer thread; in the event loop itself if no thread can be had."""
        if not self._writer_inline:
            try:
                return await self._loop.run_in_executor(self._writer, self._append, batch)
            except RuntimeError as e:
                if not is_refusal(e):
                    raise
                self._writer_inline = True
                self._events.emit(
                    "degraded",
                    None,
                    None,
                    component="intake writer",
                    reason=repr(e),
                    detail="appending to the intake log in the event loop: slower, never lost",
                )
        return self._append(batch)

    def _append(self, batch: list[tuple[list[tuple[str, str, int, bytes, bool]], Any]]):
        intake = self._intake
        entries = [e for group, _ in batch for e in group]
        if _failpoints.ACTIVE:
            failpoint("intake.append", messages=len(entries))
        seen = intake.existing([e[0] for e in entries if not e[4]])
        rows: list[tuple[int, str, str, int, bytes]] = []
        offsets: list[int] = []
        nxt = intake.next_offset
        for mid, key, part, blob, auto in entries:
            if not auto:
                known = seen.get(mid)
                if known is not None:
                    offsets.append(known)
                    continue
                seen[mid] = nxt
            rows.append((nxt, mid, key, part, blob))
            offsets.append(nxt)
            nxt += 1
        if rows:
            intake.append(rows)
            intake.next_offset = nxt
        return rows, offsets

    # -- dispatch --------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        limit, size = self.max_inflight, self.max_batch
        while True:
            await self._wake.wait()
            self._wake.clear()
            for slot in self._slots:
                if not slot.ready.is_set() or slot.handle is None:
                    continue
                unsent, inflight, channel = slot.unsent, slot.inflight, slot.handle.channel
                try:
                    while unsent and len(inflight) < limit:
                        batch = self._take(unsent, min(limit - len(inflight), size))
                        inflight.extend(batch)
                        if _failpoints.ACTIVE:
                            failpoint("dispatch.send", pipe=channel.break_, worker=slot.index)
                        channel.send_nowait(("batch", batch))
                    if self._draining and inflight and not unsent and not slot.flush_sent:
                        channel.send_nowait(("flush",))
                        slot.flush_sent = True
                except EOFError:
                    continue  # the slot's supervisor sees the death and rewinds
                except Exception:  # a bug here must not stop dispatch for every worker
                    log.exception("dispatch to worker %s failed; restarting it", slot.index)
                    slot.handle.kill()
            await asyncio.sleep(0)

    def _take(self, unsent: deque[Wire], n: int) -> list[Wire]:
        """Up to ``n`` messages, and no more than ``max_batch_bytes`` of payload (at least one)."""
        batch = [unsent.popleft()]
        size = len(batch[0][4])
        cap = self.max_batch_bytes
        while unsent and len(batch) < n and size + len(unsent[0][4]) <= cap:
            size += len(unsent[0][4])
            batch.append(unsent.popleft())
        return batch

    def _on_ack(self, slot: _Slot, position: int, offsets: dict[int, int]) -> None:
        inflight = slot.inflight
        n = 0
        while inflight and inflight[0][0] <= position:
            inflight.popleft()
            n += 1
        self._outstanding -= n
        self._committed += n
        slot.flush_sent = False
        if slot.poison:
            for offset in [o for o in slot.poison if o <= position]:
                del slot.poison[offset]
        pid = slot.handle.pid if slot.handle else None
        self._events.emit(
            "checkpointed", slot.index, pid, messages=n, position=position, partitions=len(offsets)
        )
        if self._outstanding < self.max_outstanding:
            self._room.set()
        self._update_idle()
        self._wake.set()

    def _update_idle(self) -> None:
        if self._outstanding == 0 and not self._pending and not self._writing:
            self._idle.set()
        else:
            self._idle.clear()

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every message submitted so far is committed (or dead-lettered)."""
        if not self._started:
            raise UsageError("the pool is not started; use `async with Pool(...)` or start()")
        t0 = monotonic()
        self._draining += 1
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._final is not None:
                        raise self._final
                    await self._idle.wait()
                    if self._final is not None:
                        raise self._final
                    if self._outstanding == 0 and not self._pending and not self._writing:
                        break
                    self._idle.clear()
        finally:
            self._draining -= 1
        self._events.emit("drained", committed=self._committed, seconds=round(monotonic() - t0, 6))

    # -- supervision -----------------------------------------------------------------------------
    def _spec(self, slot: _Slot) -> WorkerSpec:
        env = _failpoints.environment()
        env[_failpoints.ENV_SCOPE] = f"worker-{slot.index}"
        return WorkerSpec(
            self.handler,
            str(self.data_dir),
            slot.index,
            slot.partitions,
            self.initial_state,
            self.checkpoint_every,
            self.checkpoint_interval,
            self.durability,
            tuple(sorted(env.items())) if self.mode == "process" else (),
            str(slot.cell.path) if slot.cell else None,
            self.heartbeat_interval,
            tuple(slot.poison.items()),
            self.retries,
            self.retry_backoff,
            self.memory_hard_limit if self.mode == "process" else None,
        )

    async def _supervise(self, slot: _Slot) -> None:
        try:
            cause: dict[str, Any] | None = None
            delay = 0.0
            while not self._closing and not self._reconfiguring:
                try:
                    if _failpoints.ACTIVE:
                        failpoint("worker.spawn", worker=slot.index)
                    handle = await launch(self.mode, self._spec(slot), self._ctx)
                except Exception as e:
                    if is_refusal(e) or self._failed_start(slot):
                        self._step_down(f"starting worker {slot.index} failed: {e!r}", slot, e)
                        return
                    cause = {"exitcode": None, "signal": None, "error": f"spawn failed: {e!r}"}
                    self._events.emit("died", slot.index, None, **cause, inflight=0, uptime=0.0)
                    await asyncio.sleep(self.restart.on_death(slot.index, 0.0) or 0.0)
                    continue
                slot.handle, slot.started_at, slot.was_ready = handle, monotonic(), False
                slot.hanging, slot.recycling = False, None
                if self._closing or self._reconfiguring:  # started while the pool was stopping
                    with contextlib.suppress(EOFError):
                        handle.channel.send_nowait(("stop",))
                slot.memory.samples.clear()
                self._events.emit(
                    "started",
                    slot.index,
                    handle.pid,
                    mode=self.mode,
                    partitions=len(slot.partitions),
                )
                if cause is not None and cause.get("recycled"):
                    slot.recycles += 1  # asked for: not counted as a failure
                elif cause is not None:
                    slot.restarts += 1
                    self._events.emit(
                        "restarted",
                        slot.index,
                        handle.pid,
                        attempt=slot.restarts,
                        delay=round(delay, 6),
                        after=cause,
                    )
                cause = await self._run_session(slot, handle)
                if self._closing or self._reconfiguring:
                    break
                if cause.get("recycled"):
                    delay = 0.0
                    continue  # asked for (memory): not a failure, no backoff
                if slot.was_ready:
                    slot.failed_starts = 0
                elif self._failed_start(slot):
                    self._step_down(self._why_give_up(slot, cause, before_ready=True), slot)
                    return
                delay = self.restart.on_death(slot.index, monotonic() - slot.started_at)
                if delay is None:
                    self._step_down(self._why_give_up(slot, cause), slot)
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if slot.handle is not None:
                slot.handle.kill()
            raise
        except Exception as e:
            log.exception("supervisor of worker %s failed", slot.index)
            err = PoolBroken(f"the supervisor of worker {slot.index} failed: {e!r}")
            err.__cause__ = e
            self._set_broken(err)

    async def _run_session(self, slot: _Slot, handle: WorkerHandle) -> dict[str, Any]:
        reader = asyncio.create_task(self._read(slot, handle))
        await asyncio.wait({handle.exited, reader}, return_when=asyncio.FIRST_COMPLETED)
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
        detail = (
            handle.exited.result()
            if handle.exited.done()
            else {"exitcode": None, "signal": None, "error": "abandoned"}
        )
        slot.ready.clear()
        slot.handle = None
        for fut in slot.queries.values():
            if not fut.done():
                fut.set_exception(WorkerLost(f"worker {slot.index} exited: {exit_text(detail)}"))
        slot.queries.clear()
        last = slot.inflight[-1][0] if slot.inflight else None  # the replay must reach this
        lost = self._rewind(slot)
        in_flight = slot.cell.read()[0] if slot.cell else -1
        if slot.recycling and detail.get("exitcode") == 0:
            detail["recycled"] = slot.recycling
        elif detail.get("exitcode") == EXIT_MEMORY:
            # Not a requested recycle: it counts against the restart policy (backoff, intensity,
            # then a step down), so a worker that cannot even checkpoint does not loop forever.
            where = "in the handler" if in_flight >= 0 else "between messages (e.g. a checkpoint)"
            self._events.emit(
                "recycled",
                slot.index,
                handle.pid,
                offset=in_flight,
                reason=f"MemoryError {where} under memory_hard_limit={self.memory_hard_limit}",
            )
        if not detail.get("recycled"):
            if slot.streak.death(in_flight):
                self._poison(slot, in_flight, detail)
        stopping = self._closing or self._reconfiguring
        kind = "stopped" if stopping and detail.get("exitcode") == 0 else "died"
        if detail.get("recycled") and detail.get("exitcode") == 0:
            kind = "stopped"
        self._events.emit(
            kind,
            slot.index,
            handle.pid,
            **detail,
            inflight=lost,
            inflight_last=last,
            uptime=round(monotonic() - slot.started_at, 6),
        )
        return detail

    def _rewind(self, slot: _Slot) -> int:
        """Put the slot's unacknowledged messages back in front, to be sent again; how many."""
        n = len(slot.inflight)
        if n:
            slot.unsent.extendleft(reversed([(*m[:5], m[5] + 1) for m in slot.inflight]))
            slot.inflight.clear()
        slot.flush_sent = False
        self._wake.set()
        return n

    async def _read(self, slot: _Slot, handle: WorkerHandle) -> None:
        channel = handle.channel
        while True:
            try:
                frame = await channel.recv()
            except EOFError:
                return
            kind = frame[0]
            if kind == "ack":
                self._on_ack(slot, frame[1], frame[2])
                for mid, offset, reason in frame[3] if len(frame) > 3 else ():
                    self._events.emit(
                        "dead_lettered",
                        slot.index,
                        handle.pid,
                        id=mid,
                        offset=offset,
                        reason=reason,
                    )
            elif kind == "rewind":
                n = self._rewind(slot)
                channel.send_nowait(("rewound",))
                self._events.emit("rewound", slot.index, handle.pid, position=frame[1], messages=n)
            elif kind == "state":
                fut = slot.queries.pop(frame[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(frame[2])
            elif kind == "ready":
                self._events.emit(
                    "ready",
                    slot.index,
                    handle.pid,
                    replay=len(slot.unsent),
                    startup=round(monotonic() - slot.started_at, 6),
                )
                slot.was_ready = True
                slot.ready.set()
                self._wake.set()

    def _set_broken(self, err: PoolBroken) -> None:
        if self._broken is None:
            self._broken = err
        self._fail_waiters(err)

    def _fail_waiters(self, err: Exception) -> None:
        if self._final is None:
            self._final = err
        self._ended.set()
        if self._writing_batch is not None:
            for _, fut in self._writing_batch:
                if not fut.done():
                    fut.set_exception(err)
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._room.set()
        self._idle.set()
        for slot in self._slots:
            for fut in slot.queries.values():
                if not fut.done():
                    fut.set_exception(err)

    # -- reading ---------------------------------------------------------------------------------
    def _slot_of(self, key: str) -> _Slot:
        return self._slots[partition_of(check_key(key), self.partitions) % self.workers]

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event``; raise what the pool ended with if it ends first."""
        if self._final is None and not event.is_set():
            waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._ended.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        if self._final is not None:
            raise self._final

    async def query(self, key: str, timeout: float = 30.0) -> Any:
        """The current state of ``key`` in its worker (every message it was sent is applied)."""
        if not self._started or self._closed:
            raise UsageError("query() needs a started, open pool")
        async with asyncio.timeout(timeout):
            while True:
                slot = self._slot_of(key)  # anew each time: a step down changes the slots
                await self._until(slot.ready)
                if slot.handle is None:
                    await asyncio.sleep(0.01)  # an old slot, woken by a reconfiguration
                    continue
                rid = next(self._rids)
                fut: asyncio.Future[bytes] = self._loop.create_future()
                slot.queries[rid] = fut
                try:
                    slot.handle.channel.send_nowait(("query", rid, key))
                    return pickle.loads(await fut)
                except (EOFError, WorkerLost):
                    await asyncio.sleep(0.01)  # the replacement will answer
                finally:
                    slot.queries.pop(rid, None)

    def result(self, id: str) -> tuple[bool, Any]:
        """``(True, value)`` once message ``id``'s output is committed, else ``(False, None)``."""
        return self._store.result(id)

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._store.dead_letters()

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """An async stream of every lifecycle event from now on (also in events.jsonl)."""
        return self._events.stream()

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes (none in thread or inline mode)."""
        return [
            s.handle.pid for s in self._slots if s.handle is not None and s.handle.mode == "process"
        ]

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "partitions": self.partitions,
            "submitted": self._submitted,
            "recovered": self._recovered,
            "committed": self._committed,
            "outstanding": self._outstanding,
            "restarts": sum(s.restarts for s in self._slots),
            "recycles": sum(s.recycles for s in self._slots),
            "time": time.time(),
            "workers": [
                {
                    "worker": s.index,
                    "pid": s.handle.pid if s.handle else None,
                    "ready": s.ready.is_set(),
                    "inflight": len(s.inflight),
                    "unsent": len(s.unsent),
                    "restarts": s.restarts,
                }
                for s in self._slots
            ],
        }
