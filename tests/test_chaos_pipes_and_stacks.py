"""Broken pipes from outside the target, and stack dumps of hung or frozen processes."""

import os
import socket
import subprocess
import threading

import pytest

from chaos import (
    BlastRadiusError,
    break_socket,
    break_sockets,
    dump_stacks,
    frozen,
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


def test_dump_names_the_deadlocked_frame(puppet) -> None:
    p = puppet()
    assert p.ask("deadlock") == "ok"
    dump = dump_stacks(p.pid, timeout=10)
    assert dump.method == "py-spy" and dump.reason is None
    assert "Thread" in dump.text and '"deadlocked"' in dump.text
    ((thread, frame),) = [(t, f) for t, f in dump.blocked_frames() if t.name == "deadlocked"]
    assert frame.function.endswith("deadlocked") and frame.filename.endswith("puppet.py")
    assert "lock.acquire()" in thread.waiting
    assert dump.seconds < 10


def test_dump_of_a_frozen_process_does_not_wait_for_it(puppet) -> None:
    p = puppet()
    with frozen(p.pid):
        dump = dump_stacks(p.pid, timeout=10)
    assert dump.method == "py-spy"
    assert any(t.name == "MainThread" for t in dump.threads)


def test_without_py_spy_the_fallback_says_why_and_shows_the_kernel_view(puppet) -> None:
    p = puppet()
    dump = dump_stacks(p.pid, py_spy="/nonexistent/py-spy")
    assert dump.method == "fallback" and "py-spy not found" in dump.reason
    assert f"Process {p.pid}" in dump.text and "waiting in kernel at" in dump.text
    assert dump.threads


def test_a_process_py_spy_cannot_read_gets_the_fallback() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])  # not a Python process
    try:
        dump = dump_stacks(sleeper.pid, timeout=10)
        assert dump.method == "fallback" and dump.reason.startswith("py-spy failed")
        assert "status sleeping" in dump.text
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dump_as_dict_is_plain_data(puppet) -> None:
    import json

    p = puppet()
    json.dumps(dump_stacks(p.pid).as_dict())
