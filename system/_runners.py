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
from dataclasses import dataclass, field
from typing import Any

from ._channel import MemoryChannel, StreamChannel
from ._worker import WorkerSpec, process_main, serve, thread_main

log = logging.getLogger("system")

MODES = ("process", "thread", "inline")


@dataclass
class WorkerHandle:
    mode: str
    pid: int
    channel: Any
    exited: asyncio.Future[dict[str, Any]]
    _kill: Any = field(repr=False, default=None)

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
            self.exited.set_result({"exitcode": None, "signal": None, "error": "abandoned (hung)"})


def describe_exit(code: int | None) -> dict[str, Any]:
    """``{"exitcode": -9, "signal": "SIGKILL(-9)"}``-style detail for an exit status."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return {"exitcode": code, "signal": f"{name}({code})"}
    return {"exitcode": code, "signal": None}


def exit_text(detail: dict[str, Any]) -> str:
    """A person's words for an exit detail: ``SIGKILL(-9)``, ``exit code 1``, ``abandoned``."""
    text = detail.get("signal") or (
        f"exit code {detail['exitcode']}" if detail.get("exitcode") is not None else "no exit code"
    )
    return f"{text} ({detail['error']})" if detail.get("error") else text


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
        name=f"chaosgate-worker-{spec.worker}",
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
    exited: asyncio.Future[dict[str, Any]] = loop.create_future()
    sentinel = proc.sentinel

    def on_exit() -> None:  # may run before this function returns: use nothing but pid after
        loop.remove_reader(sentinel)
        proc.join(0)
        if not exited.done():
            exited.set_result(describe_exit(proc.exitcode))
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
    exited: asyncio.Future[dict[str, Any]] = loop.create_future()

    def target() -> None:
        detail: dict[str, Any] = {"exitcode": 0, "signal": None}
        try:
            thread_main(theirs, spec)
        except BaseException as e:  # the thread is the worker: its failure is its exit status
            detail = {"exitcode": 1, "signal": None, "error": repr(e)}
            log.exception("worker thread %s failed", spec.worker)
        finally:
            loop.call_soon_threadsafe(lambda: exited.done() or exited.set_result(detail))

    thread = threading.Thread(target=target, name=f"chaosgate-worker-{spec.worker}", daemon=True)
    thread.start()
    channel = await StreamChannel.open(ours)
    return WorkerHandle("thread", os.getpid(), channel, exited, channel.close)


def _launch_inline(spec: WorkerSpec) -> WorkerHandle:
    loop = asyncio.get_running_loop()
    ours, theirs = MemoryChannel.pair()
    exited: asyncio.Future[dict[str, Any]] = loop.create_future()
    task = loop.create_task(
        serve(theirs, spec.make_core(), spec.heartbeat_interval),
        name=f"chaosgate-worker-{spec.worker}",
    )

    def done(t: asyncio.Task[None]) -> None:
        detail: dict[str, Any] = {"exitcode": 0, "signal": None}
        if t.cancelled():
            detail = {"exitcode": None, "signal": None, "error": "cancelled"}
        elif t.exception() is not None:
            detail = {"exitcode": 1, "signal": None, "error": repr(t.exception())}
        if not exited.done():
            exited.set_result(detail)

    task.add_done_callback(done)
    return WorkerHandle("inline", os.getpid(), ours, exited, task.cancel)
