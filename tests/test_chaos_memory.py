"""Memory faults for real: RSS grows, allocations fail, the OOM killer acts; all reverted."""

import signal
from pathlib import Path

import psutil
import pytest

from chaos import (
    address_space_limit,
    leaking,
    memory_cgroup,
    wait_until,
)
from conftest import MEMORY_OK, MEMORY_WHY, no_cgroups_left


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
