"""Broken pipes for real: a target's socket broken from outside, a peer killed mid-write."""

import os
import signal
import socket
import threading

import pytest

from chaos import (
    BlastRadiusError,
    break_socket,
    break_sockets,
    breakable_sockets,
    kill,
    sockets_of,
)


def test_breaking_the_targets_socket_gives_eof_there_and_epipe_here(puppet) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        p = puppet(pass_fds=(theirs.fileno(),))
        assert theirs.fileno() in [s.fd for s in sockets_of(p.pid)]
        p.send(f"recv {theirs.fileno()}")
        theirs.close()  # only the target holds that end now
        ours.sendall(b"hello")  # the link works...
        fault = break_socket(p.pid, [s.fd for s in sockets_of(p.pid)][-1])
        assert p.answer() == "EOF"  # ...until it is broken: the target reads end of file
        assert fault.kind == "break_socket"
        assert ours.recv(10) == b""  # and we see its end go away
        with pytest.raises(BrokenPipeError):
            ours.sendall(b"x" * 2**20)


def test_closing_our_end_gives_the_target_eof(puppet) -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        p = puppet(pass_fds=(theirs.fileno(),))
        p.send(f"recv {theirs.fileno()}")
        theirs.close()
        ours.sendall(b"some data first")
        ours.close()  # the fd closed on this side: the target reads to the end, then EOF
        assert p.answer() == "EOF"


def test_a_target_writing_into_a_broken_socket_gets_epipe(puppet) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        p = puppet(pass_fds=(theirs.fileno(),))
        fd = theirs.fileno()
        theirs.close()
        p.send(f"send {fd}")  # writes until the buffer is full, then blocks
        break_sockets(p.pid)
        assert p.answer() == "BrokenPipeError"


def test_killing_the_peer_during_a_large_write_breaks_the_writer(puppet) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        p = puppet(pass_fds=(theirs.fileno(),))
        theirs.close()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                ours.sendall(b"x" * (64 * 2**20))  # far more than the socket buffer
            except OSError as e:
                errors.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        kill(p.pid)
        writer.join(30)
        assert not writer.is_alive()
        assert errors and isinstance(errors[0], BrokenPipeError | ConnectionResetError)


def test_break_socket_is_guarded() -> None:
    with pytest.raises(BlastRadiusError):
        break_socket(os.getppid(), 0)


def test_a_socket_shared_with_the_caller_is_never_broken(puppet) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        p = puppet(pass_fds=(theirs.fileno(),))  # the target holds our `theirs` too
        shared = [s.fd for s in sockets_of(p.pid) if s.inode == os.fstat(theirs.fileno()).st_ino]
        assert shared, sockets_of(p.pid)
        with pytest.raises(BlastRadiusError, match="this process holds the same socket"):
            break_socket(p.pid, shared[0])
        assert shared[0] not in [s.fd for s in breakable_sockets(p.pid)]
        assert break_sockets(p.pid) == []  # nothing of its own to break
        ours.sendall(b"still")  # and our link is untouched
        assert theirs.recv(5) == b"still"


def test_a_targets_socket_pair_with_itself_is_never_broken(puppet) -> None:
    """An event loop's self-pipe links the target to itself, not to anyone: breaking it made
    every later signal fail to reach the loop (the worker printed "Exception ignored when
    trying to write to the signal wakeup fd: BrokenPipeError")."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = theirs.fileno()
        p = puppet(pass_fds=(link,))
        theirs.close()
        internal = {int(fd) for fd in p.ask("selfpipe").split()}
        assert internal < {s.fd for s in sockets_of(p.pid)}
        assert [s.fd for s in breakable_sockets(p.pid)] == [link]
        assert [b.detail["fd"] for b in break_sockets(p.pid)] == [link]
        assert ours.recv(10) == b""  # the link is broken ...
        os.kill(p.pid, signal.SIGUSR1)
        assert p.ask("woken") == str(int(signal.SIGUSR1))  # ... the self-pipe still works
