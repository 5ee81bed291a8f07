"""The workload contract: what a payload makes a task do, for real, in any process -- and never
to the process that runs the tests."""

import concurrent.futures
import os
import pickle
import socket
import time
from pathlib import Path

import psutil
import pytest

from chaos import dump_stacks, workload


def test_apply_returns_the_id_and_logs_what_it_does_before_doing_it(tmp_path: Path) -> None:
    mark = tmp_path / "marks"
    assert workload.apply("k", "m1", 7) == "m1"
    assert workload.apply("k", "m2", {"sleep": 0.01, "mark": str(mark), "token": "t2"}) == "m2"
    ((pid, token, what, mono),) = workload.marks(mark)
    assert (pid, token, what) == (os.getpid(), "t2", "sleep")
    assert mono <= time.clock_gettime(time.CLOCK_MONOTONIC)
    result = workload.apply("k", "m3", {"bad_result": True})
    with pytest.raises(RuntimeError, match="refuses to be unpickled"):
        pickle.loads(pickle.dumps(result))


def test_the_harness_process_is_never_hurt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(workload.ENV_HARNESS, str(os.getpid()))
    monkeypatch.setattr(workload, "HARNESS_HANG_S", 0.2)
    mark = str(tmp_path / "marks")
    before = psutil.Process().memory_info().rss
    workload.apply("k", "a", {"leak_mb": 200, "mark": mark, "token": "a"})
    workload.apply("k", "b", {"break_channel": True, "mark": mark, "token": "b"})
    assert psutil.Process().memory_info().rss - before < 100 * 2**20
    with pytest.raises(TimeoutError, match="harness's own process"):
        workload.apply("k", "c", {"hang": "deadlock", "mark": mark, "token": "c"})
    whats = {token: what for _, token, what, _ in workload.marks(mark)}
    assert workload.refused(whats["a"]) and workload.refused(whats["b"])
    assert whats["c"] == "deadlock"  # bounded here, but it did hang


def test_a_broken_channel_fails_the_worker_only(tmp_path: Path) -> None:
    """In a forked worker: its pipe writes fail with EPIPE and its socket reads see EOF, while
    the parent's ends of the very same channels still work."""
    r, w = os.pipe()
    mine, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:  # pragma: no cover - the worker
        code = 1
        try:
            broken = workload.break_channels()
            try:
                os.write(w, b"x")
            except BrokenPipeError:
                if w in broken and theirs.recv(1) == b"":
                    code = 0
        finally:
            os._exit(code)
    assert os.waitpid(child, 0)[1] == 0
    os.write(w, b"y")  # the parent's view is untouched
    assert os.read(r, 1) == b"y"
    mine.sendall(b"z")
    assert theirs.recv(1) == b"z"
    for fd in (r, w):
        os.close(fd)
    mine.close()
    theirs.close()


@pytest.mark.parametrize(("how", "frame"), [("deadlock", "_deadlock"), ("busy", "_hang")])
def test_a_hang_in_a_pool_worker_shows_its_frame(tmp_path: Path, how: str, frame: str) -> None:
    mark = tmp_path / "marks"
    pool = concurrent.futures.ProcessPoolExecutor(1)
    try:
        future = pool.submit(workload.apply, "k", "m", {"hang": how, "mark": str(mark)})
        deadline = time.monotonic() + 30
        while not workload.marks(mark):
            assert time.monotonic() < deadline, "the hang never began"
            time.sleep(0.02)
        ((pid, _, what, _),) = workload.marks(mark)
        assert what == how and pid in pool._processes and not future.done()
        assert frame in dump_stacks(pid, timeout=20).text
    finally:
        for pid in list(pool._processes):
            psutil.Process(pid).kill()
        pool.shutdown(wait=True, cancel_futures=True)


def test_once_makes_a_fault_transient(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(workload.ENV_HARNESS)  # as in a worker process
    payload = {"leak_mb": 1, "once": True, "mark": str(tmp_path / "m"), "token": "t"}
    before = len(workload._KEPT)
    workload.apply("k", "m", payload)
    workload.apply("k", "m", payload)  # the retry: runs clean
    assert len(workload._KEPT) == before + 1 and len(workload.marks(tmp_path / "m")) == 1
