"""The worker side: one event loop that feeds frames to the core and checkpoints on time.

``serve`` is the same coroutine under every runner; its frames are in ``_frames``.

A checkpoint is taken every ``checkpoint_every`` messages or ``checkpoint_interval`` seconds after
the first uncommitted one, on ``flush``, after a batch of messages sent again (the replay after a
worker died: recovery does not wait for the timer), after a worker's first batch (what waited
for it to start, at the pool's start or a replacement's), and on the way out (stop, SIGTERM, end
of channel).

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

from chaos import failpoints
from chaos.failpoints import failpoint

from ._channel import Channel, StreamChannel
from ._checkpoint import CheckpointStore
from ._config import DEFAULTS, PoolConfig
from ._core import Handler, WorkerCore
from ._frames import ATTEMPT, Ack, Applied, Assign, Batch, Flush, Query, Ready, Rewound, State, Stop
from ._progress import ProgressCell
from ._router import Lane


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; pickled to worker processes."""

    handler: Handler
    data_dir: str
    worker: int
    partitions: tuple[int, ...]
    initial_state: Any = None
    config: PoolConfig = DEFAULTS
    environment: tuple[tuple[str, str], ...] = ()  # CHAOSGATE_* settings (failpoints) to apply
    progress_path: str | None = None  # the progress cell (see _progress)
    poison: tuple[tuple[int, str], ...] = ()  # offsets to dead-letter without applying

    @classmethod
    def build(
        cls,
        handler: Handler,
        initial_state: Any,
        data_dir: str,
        config: PoolConfig,
        mode: str,
        lane: Lane,
        cell: str,
        poison: dict[int, str],
    ) -> WorkerSpec:
        """The spec of ``lane``'s worker; a process gets this process's failpoints."""
        env = failpoints.environment()
        env[failpoints.ENV_SCOPE] = f"worker-{lane.index}"
        environment = tuple(sorted(env.items())) if mode == "process" else ()
        return cls(
            handler,
            data_dir,
            lane.index,
            lane.partitions,
            initial_state,
            config,
            environment,
            cell,
            tuple(poison.items()),
        )

    def open_store(self) -> CheckpointStore:
        from pathlib import Path

        return CheckpointStore(Path(self.data_dir), durability=self.config.durability)

    def make_core(self, store: CheckpointStore | None = None) -> WorkerCore:
        c = self.config
        store = store or self.open_store()
        cell = ProgressCell(self.progress_path) if self.progress_path else None
        if cell is not None:
            cell.cells[3] = os.getpid()
        return WorkerCore(
            self.handler,
            store,
            self.partitions,
            initial_state=self.initial_state,
            checkpoint_every=c.checkpoint_every,
            checkpoint_interval=c.checkpoint_interval,
            progress=cell,
            poison=dict(self.poison),
            retries=c.retries,
            retry_backoff=c.retry_backoff,
        )


SPARE = -1  # the worker index of a warm spare, until it is assigned a lane
EXIT_MEMORY = 3  # a worker process that met MemoryError exits with this code, to be recycled


async def serve(
    channel: Channel, core: WorkerCore, heartbeat_interval: float = DEFAULTS.heartbeat_interval
) -> None:
    """Run a worker until ``stop``, end of channel, or cancellation; always checkpoint on exit.

    While the event loop runs it ticks the progress cell every ``heartbeat_interval``; while a
    batch is applied the core counts messages there: a worker that does neither is hung.
    A ``MemoryError`` from a handler drops everything uncommitted and ends the worker (it is
    recycled; the message is retried, and dead-lettered if it keeps doing so).
    """
    loop = asyncio.get_running_loop()
    cell = core.progress

    me = asyncio.current_task()
    ticker: asyncio.TimerHandle

    def tick() -> None:
        nonlocal ticker
        cell[2] += 1
        if core.stop_requested and me is not None:
            me.cancel()  # asked to recycle while idle: leave now (checkpointing on the way)
            return
        ticker = loop.call_later(heartbeat_interval, tick)

    ticker = loop.call_later(heartbeat_interval, tick)

    def checkpoint() -> None:
        ack: Ack | None = core.checkpoint()
        if ack is not None:
            with contextlib.suppress(EOFError):
                channel.send_nowait(ack)

    try:
        committed = core.start()
        channel.send_nowait(Ready(os.getpid(), committed))
        recv: asyncio.Task[Any] | None = None
        first = True  # its first batch: the backlog that waited for it to start
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
            if failpoints.ACTIVE:
                failpoint("worker.recv", pipe=channel.break_, kind=type(frame).__name__.lower())
            try:
                if type(frame) is Batch:
                    try:
                        replies = core.apply(frame.messages)
                    except MemoryError:
                        core.reset()  # the state may be damaged, and memory is short: start over
                        raise
                    for reply in replies:
                        channel.send_nowait(reply)
                    if not core.rewinding:
                        channel.send_nowait(Applied(core.last_applied))
                        if first or frame.messages[0][ATTEMPT] > 1:
                            checkpoint()  # what waited for this worker: committed at once
                        first = False
                    if core.stop_requested:
                        return  # recycled: what was not applied is resent to the replacement
                elif type(frame) is Rewound:
                    core.rewound()
                elif type(frame) is Query:
                    state = pickle.dumps(core.state_of(frame.key), protocol=pickle.HIGHEST_PROTOCOL)
                    channel.send_nowait(State(frame.rid, state))
                elif type(frame) is Flush:
                    checkpoint()
                elif type(frame) is Stop:
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
    failpoints.apply_environment(dict(spec.environment))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()

    limit = spec.config.memory_hard_limit
    if limit is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    async def main() -> None:
        nonlocal spec
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        store = None
        if spec.worker == SPARE:  # a warm spare: wait until a lane needs it, its store open
            channel = await StreamChannel.open(sock)
            store = spec.open_store()
            try:
                frame = await channel.recv()
            except (EOFError, asyncio.CancelledError):  # closed, or SIGTERM: nothing to do
                store.close()
                return
            if type(frame) is not Assign:
                store.close()
                return  # (Stop)
            spec = frame.spec
            failpoints.apply_environment(dict(spec.environment))  # the lane's scope
            if failpoints.ACTIVE:
                failpoint("worker.start")
        else:
            if failpoints.ACTIVE:
                failpoint("worker.start")  # before the worker is ready: start_timeout applies
            channel = await StreamChannel.open(sock)
        core = spec.make_core(store)
        # Recycle request: stop after the current message. A plain handler, not the loop's:
        # it must run while a batch is being applied (between bytecodes), not after.
        signal.signal(signal.SIGUSR1, lambda *_: setattr(core, "stop_requested", True))
        with contextlib.suppress(asyncio.CancelledError):
            await serve(channel, core, spec.config.heartbeat_interval)

    try:
        run_loop(main())
    except MemoryError:
        os._exit(EXIT_MEMORY)


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
        channel = await StreamChannel.open(sock)
        await serve(channel, spec.make_core(), spec.config.heartbeat_interval)

    run_loop(main())
