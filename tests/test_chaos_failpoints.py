"""Failpoints: the grammar, every action for real, seeded probabilities, run-wide counters."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from chaos import (
    FailpointError,
    clear_failpoints,
    dump_stacks,
    failpoint,
    failpoint_counts,
    set_failpoints,
    wait_until,
)
from chaos import failpoints as fp
from system import Pool
from system._demo import append_payload


@pytest.fixture(autouse=True)
def no_failpoints_left():
    clear_failpoints()
    yield
    clear_failpoints()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nameonly", "expected name=action"),
        ("a=frob", "action among off, return"),
        ("a=150%off", "use 0% to 100%"),
        ("a=sleep", "sleep needs a whole number of ms"),
        ("a=leak(lots)", "leak needs a whole number of MB"),
        ("a=kill(SIGNOPE)", "unknown signal 'SIGNOPE'"),
        ("a=raise(NotAnError)", "'NotAnError' is not a built-in exception"),
        ("a=hang(5)", "hang takes no argument"),
        ("a=return(1)->2*", "bad term '2\\*'"),
    ],
)
def test_bad_specs_name_the_part_and_the_grammar(spec: str, message: str) -> None:
    with pytest.raises(FailpointError, match=message):
        set_failpoints(spec)
    assert not fp.ACTIVE  # nothing half-configured


def test_unconfigured_sites_do_nothing_and_off_removes() -> None:
    assert failpoint("nowhere") is None
    set_failpoints("a=return(7)")
    assert failpoint("a") == 7
    set_failpoints("a=off")
    assert failpoint("a") is None and not fp.ACTIVE


def test_counts_sequences_and_return_values() -> None:
    set_failpoints("a=2*return(5)->1*return('x')->off; b=return(banana); c=return")
    assert [failpoint("a") for _ in range(5)] == [5, 5, "x", None, None]
    assert failpoint("b") == "banana" and failpoint("c") is True
    assert (fp.ACTIVE["a"].hits, fp.ACTIVE["a"].fires) == (5, 3)


def test_raise_sleep_busy_pipe() -> None:
    set_failpoints("r=raise(OSError, disk full); s=sleep(50); b=busy(30); p=pipe")
    with pytest.raises(OSError, match="disk full"):
        failpoint("r")
    t0 = time.monotonic()
    failpoint("s")
    assert time.monotonic() - t0 >= 0.05
    cpu0 = time.process_time()
    failpoint("b")
    assert time.process_time() - cpu0 >= 0.005  # busy burns CPU (sleep does not); a loaded
    # machine may give it less than the 30 ms of wall time
    broken = []
    failpoint("p", pipe=lambda: broken.append(True))
    assert broken == [True]
    with pytest.raises(BrokenPipeError, match="'p' broke the channel"):
        failpoint("p")


def test_probabilities_replay_from_the_seed(monkeypatch) -> None:
    def decisions(seed: str) -> list[bool]:
        monkeypatch.setenv(fp.ENV_SEED, seed)
        set_failpoints("a=30%return(1)", replace=True)
        return [failpoint("a") == 1 for _ in range(400)]

    first = decisions("7")
    assert decisions("7") == first
    assert decisions("8") != first
    assert 80 < sum(first) < 160  # about 30 %


def test_leak_and_threads_really_happen() -> None:
    rss = psutil.Process().memory_info().rss
    set_failpoints("l=leak(64); t=threads(3)")
    failpoint("l")
    assert psutil.Process().memory_info().rss - rss > 60 * 2**20
    before = threading.active_count()
    failpoint("t")
    assert threading.active_count() == before + 3
    fp._LEAKED.clear()


def test_hang_blocks_on_a_lock_that_a_stack_dump_shows(puppet) -> None:
    p = puppet(env={fp.ENV: "stuck=hang"})
    assert p.ask("failpoint stuck 0.5") == "still running"
    dump = dump_stacks(p.pid)
    site = next(t for t in dump.threads if t.name == "site")
    assert site.frames[0].function == "_hang_forever"
    assert site.waiting and "lock.acquire()" in site.waiting


def test_kill_is_counted_before_the_process_dies(tmp_path: Path) -> None:
    log = tmp_path / "fp.log"
    code = "from chaos import failpoint; failpoint('x'); failpoint('x')"
    env = {**os.environ, fp.ENV: "x=1*off->kill(SIGKILL)", fp.ENV_LOG: str(log)}
    run = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert failpoint_counts(log) == {"x": {"hits": 2, "fires": 1, "processes": 1}}


async def test_pool_sites_fire_in_worker_processes_once_per_run(
    tmp_path: Path, monkeypatch
) -> None:
    log = tmp_path / "fp.log"
    monkeypatch.setenv(fp.ENV_LOG, str(log))
    set_failpoints("worker.after_apply=100*off->1*kill(SIGKILL)")
    async with Pool(append_payload, tmp_path / "d", workers=2, partitions=4) as pool:
        await pool.submit_many([(f"k{i % 20}", i, f"m{i}") for i in range(1000)])
        await pool.drain(timeout=60)
        wait_until(lambda: pool.stats()["restarts"] == 1, 30, "the replacement")
        assert len(set(pool.worker_pids())) == 2
        for k in range(20):
            assert await pool.query(f"k{k}") == list(range(k, 1000, 20))
    counts = failpoint_counts(log)["worker.after_apply"]
    # Run-wide: the kill fired once in the whole run, not once per replacement; the hits came
    # from both workers and the replacement (which applied the killed worker's messages again).
    assert counts["fires"] == 1
    assert counts["processes"] == 3
    assert counts["hits"] >= 1001


def test_a_disabled_site_costs_next_to_nothing() -> None:
    import timeit

    setup = "from chaos import failpoints; from chaos.failpoints import failpoint"
    guarded = "if failpoints.ACTIVE: failpoint('worker.before_apply')"
    n = 200_000
    per_call = min(timeit.repeat(guarded, setup, number=n, repeat=5)) / n
    assert per_call < 500e-9  # generous for a loaded machine; see bench/failpoints.py (~9 ns)


SITES = {  # site -> where it runs
    "intake.append": "supervisor",
    "intake.compact": "supervisor",
    "intake.compacted": "supervisor",
    "dispatch.send": "supervisor",
    "worker.spawn": "supervisor",
    "worker.start": "worker",
    "worker.recv": "worker",
    "worker.before_apply": "worker",
    "worker.after_apply": "worker",
    "worker.before_commit": "worker",
    "worker.after_commit": "worker",
}


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
async def test_every_site_in_the_pool_is_reached(tmp_path: Path, monkeypatch, start_method) -> None:
    log = tmp_path / "fp.log"
    monkeypatch.setenv(fp.ENV_LOG, str(log))
    # Set after any forkserver started: workers get the settings with their spec, not the env.
    set_failpoints(";".join(f"{site}=sleep(0)" for site in SITES))
    pool = Pool(
        append_payload,
        tmp_path / "d",
        workers=2,
        partitions=4,
        start_method=start_method,
        dedup_window=0,  # compact at every write, once something is committed
        compact_every=1,
    )
    async with pool:
        await pool.submit_many([(f"k{i}", i) for i in range(100)])
        await pool.drain(timeout=60)
        await pool.submit("k0", 100)  # its write compacts what the first ones committed
        await pool.drain(timeout=60)
        workers = set(pool.worker_pids())
    lines = [line.split(" ", 2) for line in log.read_text().splitlines()]
    seen = {
        name: {int(p) for p, n, what in lines if n == name and what != "reset"} for name in SITES
    }
    for site, where in SITES.items():
        assert seen[site], f"site {site} was never reached"
        assert seen[site] == ({os.getpid()} if where == "supervisor" else workers), site


def test_a_missed_probability_hands_the_hit_to_the_next_term() -> None:
    set_failpoints("a=50%return(1)->return(2)")
    got = [failpoint("a") for _ in range(200)]
    assert set(got) == {1, 2} and 60 < got.count(1) < 140  # as fail-rs: never None


def test_counts_and_probabilities_together_stay_exact() -> None:
    set_failpoints("a=50%3*return(1)->return(2)")
    got = [failpoint("a") for _ in range(100)]
    assert got.count(1) == 3 and got.count(2) == 97


def test_child_processes_join_the_run_wide_counts(tmp_path: Path) -> None:
    log = tmp_path / "fp.log"
    env = {**os.environ, fp.ENV: "x=1*kill(SIGKILL)", fp.ENV_LOG: str(log)}
    code = "from chaos import failpoint; failpoint('x'); print('survived')"
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        for _ in range(3)
    ]
    assert [r.returncode for r in runs] == [-signal.SIGKILL, 0, 0]  # once in the whole run
    assert failpoint_counts(log)["x"] == {"hits": 3, "fires": 1, "processes": 3}


def test_threads_and_forked_children_each_get_their_own_hit_number() -> None:
    """``1*`` means once per run, also when threads of one process (thread mode) or a child
    forked after the first hit hit a site at once: every hit gets a number of its own."""
    set_failpoints("t=100000*off")  # configured: hits are counted, nothing fires
    failpoint("t")  # this process opens its counter before forking
    numbers: list[int] = []
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(reader)
        got = [fp._count_hit(fp.log_path(), "t") for _ in range(3000)]
        os.write(writer, " ".join(map(str, got)).encode())
        os._exit(0)
    os.close(writer)
    barrier = threading.Barrier(4)

    def hit() -> None:
        barrier.wait()
        numbers.extend(fp._count_hit(fp.log_path(), "t") for _ in range(3000))

    threads = [threading.Thread(target=hit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with os.fdopen(reader, "rb") as r:
        numbers.extend(int(x) for x in r.read().split())
    assert os.waitpid(child, 0)[1] == 0
    assert sorted(numbers) == list(range(2, 2 + 5 * 3000))
