"""The workload contract: one call that a pool's task makes, so that faults carried by a
message act inside any pool -- a hang, a busy loop, a leak, a broken channel, a bad result.

An adapter's task hands every message to ``apply`` and returns what it returns::

    def task(key, message_id, payload):  # runs in the pool's worker
        return chaos.workload.apply(key, message_id, payload)

``apply`` returns the message id (the list-append workload: each key's committed list of ids).
A payload that is not a dict, or a dict without the keys below, does nothing more. A dict can
ask for (any of, in this order):

- ``mark``: a log file; the task appends ``<pid> <token> <what> <CLOCK_MONOTONIC>`` to it before
  it acts, so the harness knows the fault really ran, in which process and when (``token``
  names it; ``what`` is what it did, or why it refused); with ``once`` as well, a message
  whose token the log already holds does nothing more (the fault is transient: a retry of
  the message runs clean, as after a race that does not repeat);
- ``started``: a file created as the task begins (to synchronise on);
- ``sleep``: seconds of work;
- ``leak_mb``: N MB the worker keeps for good (memory growth);
- ``hang``: ``"deadlock"`` (block on a lock nobody will release: a stack dump names the frame)
  or ``"busy"`` (spin, holding the GIL) -- forever;
- ``break_channel``: every pipe and socket of the worker process (bar stdin, stdout and
  stderr) is replaced, in its own fd table, by a dead end: writes fail with EPIPE, reads see
  EOF -- as when the other side of a pool's channel is gone. The other processes that share
  those channels are untouched;
- ``bad_result``: return an object that pickles here and raises when the pool's parent
  unpickles it.

The process that runs the tests is never hurt: in it (a thread pool, an inline one) a leak and
a broken channel are refused, and a hang lasts ``HARNESS_HANG_S`` at most and then raises --
each logged as refused, so the harness does not count it as fired. The harness names itself
with ``CHAOSGATE_HARNESS_PID`` (set by the pytest plugin).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

ENV_HARNESS = "CHAOSGATE_HARNESS_PID"
HARNESS_HANG_S = 60.0
HANGS = ("deadlock", "busy")
_KEPT: list[bytearray] = []  # what leak payloads made this process keep
_REFUSED = "refused:"


def apply(key: str, message_id: Any, payload: Any) -> Any:
    """Run ``payload``'s requests (see the module doc); the message id, as the task's result."""
    if isinstance(payload, dict) and _act(payload, returns=True) and payload.get("bad_result"):
        return RaisesOnUnpickle()
    return message_id


def act(payload: dict[str, Any]) -> None:
    """What ``apply`` does with a dict payload, for handlers that keep their own result (so a
    ``bad_result`` is refused: only ``apply`` returns the task's result)."""
    _act(payload, returns=False)


def _act(payload: dict[str, Any], *, returns: bool) -> bool:
    """Do what ``payload`` asks; False if it did nothing (``once``, and done before)."""
    in_harness = str(os.getpid()) == os.environ.get(ENV_HARNESS)
    what = _what(payload)
    if payload.get("once") and payload.get("mark") and _acted(payload):
        return False
    refusal = None
    if what in ("leak", "break_channel") and in_harness:
        refusal = f"{what}-in-the-harness-process"
    elif what == "bad_result" and not returns:
        refusal = "bad_result-needs-a-task-result:-the-handler-keeps-its-own"
    if payload.get("mark") and what and what != "break_channel":  # (logged once it is done)
        _log(payload, f"{_REFUSED}{refusal}" if refusal else what)
    if payload.get("started"):
        Path(payload["started"]).touch()
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if payload.get("leak_mb") and not in_harness:
        try:
            _KEPT.append(bytearray(int(payload["leak_mb"]) << 20))  # touches every page
        except MemoryError:  # the evidence a limit bit (RLIMIT_AS): logged, then raised
            if payload.get("mark"):
                _log(payload, "leak:MemoryError")
            raise
    if payload.get("break_channel"):
        channels = [] if in_harness else _channels()
        if payload.get("mark"):  # before the break: it may end this process at once (its
            # pool sees the sentinel pipe close and kills it); the channels found are the
            # evidence, none is a refusal
            _log(payload, f"break_channel:{len(channels)}-fds" if channels else f"{_REFUSED}"
                 f"{refusal or 'no-pipe-or-socket-to-break'}")  # fmt: skip
        _break(channels)
    if payload.get("hang"):
        _hang(payload["hang"], HARNESS_HANG_S if in_harness else None)
    return True


def _what(payload: dict[str, Any]) -> str:
    for key in ("hang", "break_channel", "leak_mb", "bad_result", "sleep"):
        if payload.get(key):
            return payload["hang"] if key == "hang" else key.removesuffix("_mb")
    return ""


def _log(payload: dict[str, Any], what: str) -> None:
    mono = time.clock_gettime(time.CLOCK_MONOTONIC)
    line = f"{os.getpid()} {payload.get('token', '-')} {what} {mono:.6f}\n"
    fd = os.open(payload["mark"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write: lines from many processes never interleave
    finally:
        os.close(fd)


def _acted(payload: dict[str, Any]) -> bool:
    token = str(payload.get("token", "-"))
    return any(t == token and not refused(w) for _, t, w, _ in marks(payload["mark"]))


def marks(path: str | os.PathLike[str]) -> list[tuple[int, str, str, float]]:
    """The log's lines: (pid, token, what, CLOCK_MONOTONIC), refusals included."""
    found = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                found.append((int(parts[0]), parts[1], parts[2], float(parts[3])))
    return found


def refused(what: str) -> bool:
    return what.startswith(_REFUSED)


def _hang(how: str, bound: float | None) -> None:
    if how not in HANGS:
        raise ValueError(f"hang={how!r}: expected one of {', '.join(HANGS)}")
    deadline = time.monotonic() + bound if bound is not None else float("inf")
    if how == "busy":
        while time.monotonic() < deadline:
            pass
    elif bound is None:
        _deadlock()
    else:
        threading.Event().wait(bound)
    raise TimeoutError(f"hang={how} ended after {bound} s: it ran in the harness's own process")


def _deadlock() -> None:
    """Block on a lock nobody will release: a stack dump shows this frame, waiting."""
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # deadlock: waits here forever


def break_channels() -> list[int]:
    """Replace every pipe and socket fd of this process above 2 by a dead end (see the module
    doc); the fds replaced."""
    return _break(_channels())


def _channels() -> list[tuple[int, str]]:
    """This process's pipe and socket fds above 2, with what they are."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, closed since
            continue
        if fd > 2 and link.startswith(("pipe:", "socket:")):
            found.append((fd, link))
    return found


def _break(channels: list[tuple[int, str]]) -> list[int]:
    broken = []
    for fd, link in channels:
        with contextlib.suppress(OSError):
            dead = _dead_end(fd, link)
            os.dup2(dead, fd)
            os.close(dead)
            broken.append(fd)
    return broken


def _dead_end(fd: int, link: str) -> int:
    """A new fd whose other side is closed, for the channel at ``fd``."""
    if link.startswith("socket:"):
        mine, other = socket.socketpair()
        other.close()
        return mine.detach()
    readable, writable = os.pipe()
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
        os.close(readable)  # writes: EPIPE
        return writable
    os.close(writable)  # reads: EOF
    return readable


def _refuse(what: str) -> Any:
    raise RuntimeError(f"this {what} refuses to be unpickled")


class RaisesOnUnpickle:
    """A result that pickles in the worker and raises when the parent unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ("result",))
