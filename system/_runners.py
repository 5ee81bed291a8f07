"""Start a worker as a process, a thread, or inline, and give the supervisor one handle for it.

All three run the same ``serve`` coroutine over a channel; a handle exposes the channel, the pid
(the pool's own pid for thread and inline workers), a future that resolves with a description of
the exit, and ``kill()``. A process's exit is noticed through its sentinel fd, registered with the
event loop, so a ``kill -9`` is seen within milliseconds; a thread's or a task's through its end.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._channel import Channel, MemoryChannel, StreamChannel
from ._frames import Exit
from ._worker import WorkerSpec, process_main, serve, thread_main

log = logging.getLogger("system")


@dataclass
class WorkerHandle:
    mode: str
    pid: int
    channel: Channel
    exited: asyncio.Future[Exit]
    _kill: Callable[[], Any] = field(repr=False, default=lambda: None)

    def kill(self) -> None:
        """Stop the worker at once (SIGKILL for a process; close the channel otherwise)."""
        self._kill()

    def abandon(self) -> None:
        """Give up on a thread or inline worker that cannot be stopped (hung): count it exited.

        Its replacement claims the partitions with a newer epoch, so whatever the abandoned one
        does if it ever wakes up is fenced off from the checkpoint store.
        """
        self._kill()
        if not self.exited.done():
            self.exited.set_result(Exit.failed("abandoned (hung)"))


def _settle(exited: asyncio.Future[Exit], detail: Exit) -> None:
    if not exited.done():
        exited.set_result(detail)


async def launch(mode: str, spec: WorkerSpec, ctx: Any = None) -> WorkerHandle:
    if mode == "process":
        return await _launch_process(spec, ctx)
    if mode == "thread":
        return await _launch_thread(spec)
    return _launch_inline(spec)


async def _launch_process(spec: WorkerSpec, ctx: Any) -> WorkerHandle:
    loop = asyncio.get_running_loop()
    ctx = ctx or multiprocessing.get_context("forkserver")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=process_main,
        args=(child_conn, spec, os.getpid()),
        name=f"chaosgate-worker-{spec.worker}" if spec.worker >= 0 else "chaosgate-spare",
        daemon=True,
    )
    try:
        proc.start()
    except EOFError as e:
        # The forkserver died while forking: the system refused it a process (fork failing
        # with EAGAIN or ENOMEM is what ends a forkserver; it cannot tell us the errno).
        raise OSError(
            errno.EAGAIN,
            "the forkserver exited while forking a worker (the system refused a "
            "new process, as with EAGAIN or ENOMEM)",
        ) from e
    finally:
        child_conn.close()
    pid = proc.pid
    assert pid is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(parent_conn.fileno()))
    parent_conn.close()
    exited: asyncio.Future[Exit] = loop.create_future()
    sentinel = proc.sentinel

    def on_exit() -> None:  # may run before this function returns: use nothing but pid after
        loop.remove_reader(sentinel)
        proc.join(0)
        if not exited.done():
            exited.set_result(Exit.of_status(proc.exitcode))
        proc.close()

    loop.add_reader(sentinel, on_exit)

    def kill() -> None:
        if not exited.done():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    channel = await StreamChannel.open(sock)
    return WorkerHandle("process", pid, channel, exited, kill)


async def _launch_thread(spec: WorkerSpec) -> WorkerHandle:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    exited: asyncio.Future[Exit] = loop.create_future()

    def target() -> None:
        detail = Exit(0)
        try:
            thread_main(theirs, spec)
        except BaseException as e:  # the thread is the worker: its failure is its exit status
            detail = Exit.failed(repr(e), exitcode=1)
            log.exception("worker thread %s failed", spec.worker)
        finally:
            loop.call_soon_threadsafe(_settle, exited, detail)

    thread = threading.Thread(target=target, name=f"chaosgate-worker-{spec.worker}", daemon=True)
    thread.start()
    channel = await StreamChannel.open(ours)
    return WorkerHandle("thread", os.getpid(), channel, exited, channel.close)


def _launch_inline(spec: WorkerSpec) -> WorkerHandle:
    loop = asyncio.get_running_loop()
    ours, theirs = MemoryChannel.pair()
    exited: asyncio.Future[Exit] = loop.create_future()
    task = loop.create_task(
        serve(theirs, spec.make_core(), spec.config.heartbeat_interval),
        name=f"chaosgate-worker-{spec.worker}",
    )

    def done(t: asyncio.Task[None]) -> None:
        detail = Exit(0)
        if t.cancelled():
            detail = Exit.failed("cancelled")
        elif t.exception() is not None:
            detail = Exit.failed(repr(t.exception()), exitcode=1)
        if not exited.done():
            exited.set_result(detail)

    task.add_done_callback(done)
    return WorkerHandle("inline", os.getpid(), ours, exited, task.cancel)
