"""Broken pipes: break a process's socket from outside, so that both ends see a real failure.

``break_socket(pid, fd)`` duplicates the target's fd into this process with ``pidfd_getfd``
(Linux 5.6+, needs ptrace rights on the target: root, or CAP_SYS_PTRACE) and shuts the socket
down. The socket is shared, not copied, so the *target's* socket is broken: its reads see EOF,
its writes fail with EPIPE, and its peer sees EOF (or ECONNRESET) -- exactly what a failed link
looks like, with no help from the target's code. ``sockets_of(pid)`` lists which fds are
sockets, so a channel can be picked without knowing its number. (From inside, the failpoint
action ``pipe`` breaks a channel at a named site; killing a peer mid-write is ``kill``.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import time
from dataclasses import dataclass

from ._errors import BlastRadiusError, InjectorUnavailable
from ._process_faults import Injected, check_target

_SYS_PIDFD_GETFD = 438  # the same on every Linux architecture (a post-4.20 syscall number)


@dataclass(frozen=True)
class SocketInfo:
    fd: int
    inode: int


def sockets_of(pid: int) -> list[SocketInfo]:
    """The target's socket fds, from /proc/PID/fd."""
    found = []
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}: it has exited") from None
    for name in names:
        try:
            link = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.append(SocketInfo(int(name), int(link[8:-1])))
    return sorted(found, key=lambda s: s.fd)


def breakable_sockets(pid: int) -> list[SocketInfo]:
    """The target's sockets that are its own: not shared with this process (a forked worker
    inherits its parent's sockets, e.g. an event loop's self-pipe; shutting one of those down
    would break the caller too)."""
    own = {s.inode for s in sockets_of(os.getpid())}
    return [s for s in sockets_of(pid) if s.inode not in own]


def steal_fd(pid: int, fd: int) -> int:
    """A duplicate, in this process, of ``pid``'s file descriptor ``fd`` (pidfd_getfd)."""
    if platform.system() != "Linux":
        raise InjectorUnavailable("pidfd_getfd needs Linux 5.6 or later")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                raise ProcessLookupError(f"no process {pid}: it has exited")
            if err == errno.EBADF:
                raise ValueError(f"pid {pid} has no fd {fd} (any more)")
            raise InjectorUnavailable(
                f"pidfd_getfd({pid}, {fd}) failed: {os.strerror(err)}; it needs Linux 5.6+ and "
                "ptrace rights on the target (root or CAP_SYS_PTRACE)"
            )
        return got
    finally:
        os.close(pidfd)


def break_socket(pid: int, fd: int, *, allow_outside: bool = False) -> Injected:
    """Shut down ``pid``'s socket ``fd`` both ways, from outside the target."""
    check_target(pid, allow_outside=allow_outside)
    shared = {s.inode for s in sockets_of(os.getpid())}
    if any(s.fd == fd and s.inode in shared for s in sockets_of(pid)):
        raise BlastRadiusError(
            f"refusing to break fd {fd} of pid {pid}: this process holds the same socket "
            "(inherited across fork), so shutting it down would break the caller too"
        )
    dup = steal_fd(pid, fd)
    try:
        sock = socket.socket(fileno=dup)
    except OSError as e:
        os.close(dup)
        raise ValueError(f"fd {fd} of pid {pid} is not a socket: {e.strerror}") from e
    try:
        fault = _injected(pid, fd)
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
    return fault


def break_sockets(pid: int, *, allow_outside: bool = False) -> list[Injected]:
    """Break every socket the target holds of its own (for a pool worker: its channel; see
    ``breakable_sockets``). A target that exits on the first break (as a worker should) ends
    the list early."""
    done = []
    for sock in breakable_sockets(pid):
        try:
            done.append(break_socket(pid, sock.fd, allow_outside=allow_outside))
        except (ProcessLookupError, ValueError, BlastRadiusError):
            if not done:
                raise
            break  # the target is on its way out (no longer our descendant, or gone)
    return done


def _injected(pid: int, fd: int) -> Injected:
    return Injected(
        "break_socket", pid, time.clock_gettime(time.CLOCK_MONOTONIC), time.time(), {"fd": fd}
    )
