"""Thread exhaustion for real: the kernel refuses the target a thread; all is reverted."""

from pathlib import Path

import psutil
import pytest

from chaos import (
    InjectorUnavailable,
    address_space_limit,
    cgroup_available,
    hogging_threads,
    pids_limit,
    thread_limit,
    thread_stack_limit,
    wait_until,
)
from conftest import PIDS_OK, PIDS_WHY, no_cgroups_left


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


@pytest.mark.skipif(not PIDS_OK, reason=f"no pids cgroup here: {PIDS_WHY}")
def test_an_in_process_hog_exhausts_the_targets_threads(puppet) -> None:
    p = puppet()
    with pids_limit(p.pid, extra=5):
        assert p.ask("hogging 100") == "held 5 refused: can't start new thread"
        assert p.ask("thread") == "RuntimeError: can't start new thread"
        assert p.ask("release") == "ok"
        assert p.ask("thread") == "ok"  # the hog was the exhaustion
