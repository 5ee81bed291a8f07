"""Broken pipes: break a process's socket from outside, so that both ends see a real failure.

``break_socket(pid, fd)`` duplicates the target's fd into this process with ``pidfd_getfd``
(Linux 5.6+, needs ptrace rights on the target: root, or CAP_SYS_PTRACE) and shuts the socket
down. The socket is shared, not copied, so the *target's* socket is broken: its reads see EOF,
its writes fail with EPIPE, and its peer sees EOF (or ECONNRESET) -- exactly what a failed link
looks like, with no help from the target's code. ``sockets_of(pid)`` lists which fds are
sockets, so a channel can be picked without knowing its number. (From inside, the failpoint
action ``pipe`` breaks a channel at a named site; killing a peer mid-write is ``kill``.)

``break_sockets(pid)`` breaks the target's links only: never a socket this process shares, nor
one whose peer end the target holds itself -- an event loop's self-pipe, the signal wakeup fd.
That one links the target to nobody; shut down, it would make every later signal fail to reach
the loop ("Exception ignored when trying to write to the signal wakeup fd: BrokenPipeError",
a SIGTERM handler that never runs). Peers come from the kernel's sock_diag netlink interface
(``unix_peers``: AF_UNIX sockets; without it, nothing is known to be internal).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
import time
from dataclasses import dataclass

from ._errors import BlastRadiusError, InjectorUnavailable
from ._process_faults import Injected, check_target

_SYS_PIDFD_GETFD = 438  # the same on every Linux architecture (a post-4.20 syscall number)
# sock_diag (linux/sock_diag.h, linux/unix_diag.h): a dump of AF_UNIX sockets with their peers.
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP = 4, 20, 0x301
_NLMSG_ERROR, _NLMSG_DONE, _UDIAG_SHOW_PEER, _UNIX_DIAG_PEER = 2, 3, 0x4, 2
_NLMSG, _ATTR = struct.Struct("=IHHII"), struct.Struct("=HH")


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


def unix_peers() -> dict[int, int]:
    """``{inode: peer inode}`` of every connected AF_UNIX socket of this network namespace,
    from sock_diag; empty where the kernel does not offer it."""
    request = struct.pack(
        "=BBHIII8s", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_PEER, b"\xff" * 8
    )
    header = _NLMSG.pack(
        _NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0
    )
    peers: dict[int, int] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(5.0)
            nl.send(header + request)
            while True:
                data, at = nl.recv(1 << 16), 0
                while at + _NLMSG.size <= len(data):
                    length, kind = _NLMSG.unpack_from(data, at)[:2]
                    if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < _NLMSG.size:
                        return peers if kind == _NLMSG_DONE else {}
                    inode = struct.unpack_from("=I", data, at + _NLMSG.size + 4)[0]
                    attr = at + _NLMSG.size + 16  # after struct unix_diag_msg
                    while attr + _ATTR.size <= at + length:
                        size, kind = _ATTR.unpack_from(data, attr)
                        if size < _ATTR.size:
                            break
                        if kind == _UNIX_DIAG_PEER:
                            peers[inode] = struct.unpack_from("=I", data, attr + _ATTR.size)[0]
                        attr += (size + 3) & ~3
                    at += (length + 3) & ~3
    except OSError:  # no sock_diag here (or not allowed): no peers known
        return {}


def breakable_sockets(pid: int) -> list[SocketInfo]:
    """The target's sockets that are links of its own: not shared with this process (a forked
    worker inherits its parent's sockets; shutting one of those down would break the caller
    too), and not linked to the target itself (an event loop's self-pipe: see the module doc)."""
    shared = {s.inode for s in sockets_of(os.getpid())}
    theirs = sockets_of(pid)
    inodes, peers = {s.inode for s in theirs}, unix_peers()
    return [s for s in theirs if s.inode not in shared and peers.get(s.inode) not in inodes]


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
