"""Memory and thread exhaustion for real: the kernel refuses, the target sees it, all reverted."""

import os
import signal
from pathlib import Path

import psutil
import pytest

from chaos import (
    InjectorUnavailable,
    address_space_limit,
    cgroup_available,
    hogging_threads,
    leaking,
    memory_cgroup,
    pids_limit,
    thread_limit,
    thread_stack_limit,
    wait_until,
)

PIDS_OK, PIDS_WHY = cgroup_available("pids")
MEMORY_OK, MEMORY_WHY = cgroup_available("memory")


def no_cgroups_left(pid_cgroup_before: str, pid: int | None = None) -> None:
    leftovers = [p for p in Path("/sys/fs/cgroup").rglob(f"chaosgate-{os.getpid()}-*")]
    assert not leftovers, leftovers
    if pid is not None:
        assert Path(f"/proc/{pid}/cgroup").read_text() == pid_cgroup_before


def test_a_leak_grows_this_process_at_its_rate_and_is_freed() -> None:
    rss0 = psutil.Process().memory_info().rss
    with leaking(200, max_mb=100) as leak:
        wait_until(lambda: leak.allocated_mb >= 100, 10, "100 MB leaked")
        assert psutil.Process().memory_info().rss - rss0 > 90 * 2**20
    assert leak.allocated_mb == 0
    wait_until(lambda: psutil.Process().memory_info().rss - rss0 < 50 * 2**20, 10, "memory freed")


def test_rlimit_as_makes_allocations_fail_with_memory_error_until_reverted(puppet) -> None:
    p = puppet()
    before = psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS)
    with address_space_limit(p.pid, extra_mb=50) as limit:
        assert psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS)[0] == limit.soft
        assert p.ask("alloc 10") == "ok"
        assert p.ask("alloc 200") == "MemoryError"
    assert psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS) == before
    assert p.ask("alloc 200") == "ok"


@pytest.mark.skipif(not MEMORY_OK, reason=f"no memory cgroup here: {MEMORY_WHY}")
def test_a_memory_cgroup_gets_the_target_oom_killed_then_is_removed(puppet) -> None:
    p = puppet()
    home = Path(f"/proc/{p.pid}/cgroup").read_text()
    with memory_cgroup(p.pid, limit_mb=64) as group:
        assert str(p.pid) in (group / "cgroup.procs").read_text()
        p.send("alloc 400")
        assert p.proc.wait(30) == -signal.SIGKILL  # the kernel's OOM killer
    no_cgroups_left(home)


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
def test_a_pids_cgroup_makes_thread_start_raise_until_reverted(puppet) -> None:
    p = puppet()
    home = Path(f"/proc/{p.pid}/cgroup").read_text()
    with pids_limit(p.pid) as group:
        assert p.ask("thread") == "RuntimeError: can't start new thread"
        assert int((group / "pids.events").read_text().split()[-1]) >= 1  # the kernel's count
    assert p.ask("thread") == "ok"
    no_cgroups_left(home, p.pid)


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
def test_a_pids_cgroup_leaves_room_for_extra_threads(puppet) -> None:
    p = puppet()
    with pids_limit(p.pid, extra=3):
        assert p.ask("hog 10") == "started 3 refused: can't start new thread"


def test_rlimit_as_below_a_thread_stack_makes_thread_start_raise(puppet) -> None:
    p = puppet()
    before = psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS)
    with thread_stack_limit(p.pid):
        assert p.ask("thread") == "RuntimeError: can't start new thread"
    assert psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS) == before
    assert p.ask("thread") == "ok"


def test_thread_limit_uses_the_best_means_here(puppet) -> None:
    p = puppet()
    with thread_limit(p.pid) as how:
        assert ("pids cgroup" in how) == PIDS_OK
        assert p.ask("thread") == "RuntimeError: can't start new thread"
    assert p.ask("thread") == "ok"


def test_hogging_threads_holds_and_releases_them() -> None:
    before = psutil.Process().num_threads()
    with hogging_threads(20) as hog:
        assert len(hog.threads) == 20 and hog.refused is None
        assert psutil.Process().num_threads() >= before + 20
    assert all(not t.is_alive() for t in hog.threads)
    wait_until(lambda: psutil.Process().num_threads() <= before, 10, "threads gone")


def test_limits_revert_also_when_the_block_fails(puppet) -> None:
    p = puppet()
    before = psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS)
    with pytest.raises(KeyError), address_space_limit(p.pid, 10):
        raise KeyError("the test failed inside")
    assert psutil.Process(p.pid).rlimit(psutil.RLIMIT_AS) == before
    if PIDS_OK:
        home = Path(f"/proc/{p.pid}/cgroup").read_text()
        with pytest.raises(KeyError), pids_limit(p.pid):
            raise KeyError("the test failed inside")
        no_cgroups_left(home, p.pid)


def test_cgroup_injectors_say_why_when_unavailable(puppet, monkeypatch) -> None:
    from chaos import _cgroups

    p = puppet()
    monkeypatch.setattr(_cgroups, "_mounts", lambda: [])  # a machine without cgroups
    ok, why = cgroup_available("pids")
    assert not ok and "offers the 'pids' controller" in why
    with pytest.raises(InjectorUnavailable, match="'pids' controller"), pids_limit(p.pid):
        pass
    with thread_limit(p.pid) as how:  # falls back to the address-space limit
        assert how.startswith("RLIMIT_AS below one thread stack (no pids cgroup: ")
        assert p.ask("thread") == "RuntimeError: can't start new thread"
