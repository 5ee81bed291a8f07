"""The worker side: one event loop that feeds frames to the core and checkpoints on time.

``serve`` is the same coroutine under every runner. Frames from the supervisor:
``("batch", [wire, ...])``, ``("query", rid, key)``, ``("flush",)``, ``("rewound",)``,
``("stop",)``. Frames to it: ``("ready", pid, committed)``, ``("ack", position, offsets)`` after
each checkpoint (every message at or below ``position`` that this worker was sent is committed),
``("rewind", position)`` (resend everything after ``position``; see ``WorkerCore.apply``),
``("state", rid, pickle)``.

A checkpoint is taken every ``checkpoint_every`` messages or ``checkpoint_interval`` seconds after
the first uncommitted one, on ``flush``, and on the way out (stop, SIGTERM, end of channel).

``process_main`` is the entry point of a worker process: it asks the kernel to SIGKILL it when its
parent dies (``PR_SET_PDEATHSIG``; with the forkserver start method the parent is the forkserver,
which itself exits as soon as the pool's process is gone), ignores SIGINT (the supervisor
coordinates a Ctrl-C), checkpoints and exits on SIGTERM, and runs ``serve`` on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pickle
import resource
import signal
import socket
from dataclasses import dataclass
from typing import Any

from chaos import _failpoints
from chaos._failpoints import failpoint

from ._checkpoint import CheckpointStore
from ._core import Handler, WorkerCore
from ._progress import ProgressCell


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; pickled to worker processes."""

    handler: Handler
    data_dir: str
    worker: int
    partitions: tuple[int, ...]
    initial_state: Any = None
    checkpoint_every: int = 5000
    checkpoint_interval: float = 0.05
    durability: str = "fsync"
    environment: tuple[tuple[str, str], ...] = ()  # CHAOSGATE_* settings (failpoints) to apply
    progress_path: str | None = None  # the progress cell (see _progress)
    heartbeat_interval: float = 0.2
    poison: tuple[tuple[int, str], ...] = ()  # offsets to dead-letter without applying
    retries: int = 2
    retry_backoff: float = 0.01
    memory_hard_limit: int | None = None  # RLIMIT_AS in bytes, process workers only

    def make_core(self) -> WorkerCore:
        from pathlib import Path

        store = CheckpointStore(Path(self.data_dir), durability=self.durability)
        cell = ProgressCell(self.progress_path) if self.progress_path else None
        if cell is not None:
            cell.cells[3] = os.getpid()
        return WorkerCore(
            self.handler,
            store,
            self.partitions,
            initial_state=self.initial_state,
            checkpoint_every=self.checkpoint_every,
            checkpoint_interval=self.checkpoint_interval,
            progress=cell,
            poison=dict(self.poison),
            retries=self.retries,
            retry_backoff=self.retry_backoff,
        )


EXIT_MEMORY = 3  # a worker process that met MemoryError exits with this code, to be recycled


async def serve(channel: Any, core: WorkerCore, heartbeat_interval: float = 0.2) -> None:
    """Run a worker until ``stop``, end of channel, or cancellation; always checkpoint on exit.

    While the event loop runs it ticks the progress cell every ``heartbeat_interval``; while a
    batch is applied the core counts messages there: a worker that does neither is hung.
    A ``MemoryError`` from a handler drops everything uncommitted and ends the worker (it is
    recycled; the message is retried, and dead-lettered if it keeps doing so).
    """
    loop = asyncio.get_running_loop()
    cell = core.progress

    me = asyncio.current_task()

    def tick() -> None:
        nonlocal ticker
        cell[2] += 1
        if core.stop_requested and me is not None:
            me.cancel()  # asked to recycle while idle: leave now (checkpointing on the way)
            return
        ticker = loop.call_later(heartbeat_interval, tick)

    ticker = loop.call_later(heartbeat_interval, tick)

    def checkpoint() -> None:
        ack = core.checkpoint()
        if ack is not None:
            with contextlib.suppress(EOFError):
                channel.send_nowait(("ack", *ack))

    try:
        committed = core.start()
        channel.send_nowait(("ready", os.getpid(), committed))
        recv: asyncio.Task[Any] | None = None
        while True:
            due = core.checkpoint_due()
            if due is not None and due <= 0:
                checkpoint()
                continue
            if recv is None:
                recv = loop.create_task(channel.recv())
            done, _ = await asyncio.wait({recv}, timeout=due)
            if not done:
                continue  # the checkpoint is due now
            try:
                frame = recv.result()
            except EOFError:
                return  # the supervisor is gone: checkpoint (finally) and leave
            recv = None
            if _failpoints.ACTIVE:
                failpoint("worker.recv", pipe=channel.break_, kind=frame[0])
            try:
                kind = frame[0]
                if kind == "batch":
                    try:
                        replies = core.apply(frame[1])
                    except MemoryError:
                        core.reset()  # the state may be damaged, and memory is short: start over
                        raise
                    for reply in replies:
                        channel.send_nowait(reply)
                    if core.stop_requested:
                        return  # recycled: what was not applied is resent to the replacement
                elif kind == "rewound":
                    core.rewound()
                elif kind == "query":
                    state = pickle.dumps(core.state_of(frame[2]), protocol=pickle.HIGHEST_PROTOCOL)
                    channel.send_nowait(("state", frame[1], state))
                elif kind == "flush":
                    checkpoint()
                elif kind == "stop":
                    return
                await channel.flush()
            except EOFError:
                return  # our channel broke: leave; the supervisor replays what is not acked
    finally:
        ticker.cancel()
        if recv is not None:
            recv.cancel()
        checkpoint()
        with contextlib.suppress(EOFError, ConnectionError):
            await channel.flush()
        channel.close()
        core.store.close()


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def process_main(conn: Any, spec: WorkerSpec, parent: int) -> None:
    """Entry point of a worker process (``multiprocessing.Process`` target)."""
    _die_with_parent()
    if os.getppid() != parent and not _parent_alive(parent):
        os._exit(1)  # the pool died before we set PDEATHSIG
    # A forkserver started before the test set its failpoints would not pass them on: take
    # them from the spec, captured when this worker was launched.
    _failpoints.apply_environment(dict(spec.environment))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()

    if spec.memory_hard_limit is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (spec.memory_hard_limit, hard))

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        if _failpoints.ACTIVE:
            failpoint("worker.start")  # before the worker is ready: start_timeout applies
        channel = await _open(sock)
        core = spec.make_core()
        # Recycle request: stop after the current message. A plain handler, not the loop's:
        # it must run while a batch is being applied (between bytecodes), not after.
        signal.signal(signal.SIGUSR1, lambda *_: setattr(core, "stop_requested", True))
        with contextlib.suppress(asyncio.CancelledError):
            await serve(channel, core, spec.heartbeat_interval)

    try:
        run_loop(main())
    except MemoryError:
        os._exit(EXIT_MEMORY)


async def _open(sock: socket.socket) -> Any:
    from ._channel import StreamChannel

    return await StreamChannel.open(sock)


def run_loop(coro: Any) -> None:
    """Run ``coro`` on a new uvloop event loop (asyncio's own where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps Windows usable
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def thread_main(sock: socket.socket, spec: WorkerSpec) -> None:
    """Entry point of a worker thread: the same ``serve`` on the thread's own event loop."""

    async def main() -> None:
        channel = await _open(sock)
        await serve(channel, spec.make_core(), spec.heartbeat_interval)

    run_loop(main())
