"""ServedTarget: a target run in a child process of its own, driven over pipes, with real
processes -- pipelined acknowledgements, committed state, a server killed mid-run (pending
submits fail at once, naming SIGKILL), bounded stops, one-line errors for a bad spec, a target's
prints kept off the protocol -- and a planted bug (acknowledging before the message is durable)
that the whole-pool SIGKILL scenario must catch."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos import ChaosError, History, SystemTarget, descendants, wait_gone, wait_until
from chaos._guard import TargetHung
from chaos._served import Refused, ServedTarget, TargetGone, serving

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def tree_of(served: ServedTarget) -> set[int]:
    return {served.pid} | {p.pid for p in descendants(served.pid)}


def frozen(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


async def test_pipelined_submits_are_acknowledged_then_committed(tmp_path: Path) -> None:
    async with serving(None, tmp_path / "d", workers=2) as served:
        assert {"whole", "events", "dead_letters"} <= served.capabilities
        assert hasattr(served, "committed_now") == hasattr(SystemTarget, "committed_now")
        ids = [f"m{i}" for i in range(3000)]
        await asyncio.gather(*(served.submit(f"k{i % 10}", i, mid) for i, mid in enumerate(ids)))
        assert served.most_pending > 1000  # sent without waiting for the acknowledgements
        committed = await served.committed()
        assert sorted(mid for got in committed.values() for mid in got) == sorted(ids)
        history = History()  # one at a time per key: the per-key order is the submit order
        for i in range(200):
            await served.submit(f"s{i % 3}", i, f"s{i}")
            history.submitted(f"s{i}", f"s{i % 3}")
        verdict = history.check(
            {k: v for k, v in (await served.committed()).items() if k[0] == "s"}
        )
        assert verdict.ok and verdict.committed == 200, verdict.summary()
        workers = served.worker_pids()
        assert len(workers) == 2 and all(os.getpgid(pid) == served.pgid for pid in workers)
        assert any(e["kind"] == "ready" for e in served.events())
        assert not served.dead_lettered()
        with pytest.raises(Refused, match=r"refused bad: UsageError: key must be a str"):
            await served.submit(3, 0, "bad")  # refused by the pool; the server goes on
        await served.submit("k0", 0, "after")
        tree = tree_of(served)
    assert served.returncode == 0 and not wait_gone(tree, 5.0)


async def test_options_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ChaosError, match="must be JSON"):
        await ServedTarget(None, tmp_path / "d", restart=object()).start()


async def test_a_server_killed_mid_run_fails_every_pending_call_at_once(tmp_path: Path) -> None:
    async with serving(None, tmp_path / "d", workers=2, ack_timeout=0.5) as served:
        await served.submit("k", 0, "m0")
        tree = tree_of(served)
        os.kill(served.pid, signal.SIGSTOP)  # our own child; it answers nothing while stopped
        wait_until(lambda: frozen(served.pid), 10, "the server stopped")
        with pytest.raises(TargetHung, match=rf"submit got no answer .*pid {served.pid}.* 0.5 s"):
            await served.submit("k", 1, "m1")
        # The calls pending at the kill must end by it, not by their own bound: a long one (a
        # loaded machine may take more than 0.5 s to get from here to the kill).
        served.ack_timeout = 60.0
        pending = [asyncio.ensure_future(served.submit("k", i, f"m{i}")) for i in range(2, 200)]
        await asyncio.sleep(0.05)  # a chance to be answered: a stopped server answers nothing
        assert not any(p.done() for p in pending)
        t0 = time.monotonic()
        served.kill_server(signal.SIGKILL)
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        assert time.monotonic() - t0 < 20.0  # at once: far inside their own bound
        assert all(isinstance(o, TargetGone) for o in outcomes), outcomes[:3]
        assert "killed by SIGKILL(-9)" in str(outcomes[0]) and outcomes[0].returncode == -9
        with pytest.raises(TargetGone, match="SIGKILL"):
            served.worker_pids()  # and every call after
    assert not wait_gone(tree, 10.0)  # its workers went with it, or were swept at the stop


async def test_kill_whole_takes_the_group_down_and_waits_for_it(tmp_path: Path) -> None:
    async with serving(None, tmp_path / "d", workers=2) as served:
        await served.submit("k", 0, "m0")
        wait_until(lambda: len(served.worker_pids()) == 2, 30, "2 workers")
        tree = tree_of(served)
        assert len(tree) >= 3  # the server, its workers (and multiprocessing's helpers)
        killed = served.kill_whole(known=tree)
        assert tree <= set(killed.detail["pids"]) and killed.detail["signal"] == "SIGKILL(-9)"
        assert not wait_gone(tree, 0.0) and served.returncode == -9
        with pytest.raises(TargetGone):
            await served.committed()


async def test_sigterm_stops_the_target_gracefully(tmp_path: Path) -> None:
    async with serving(None, tmp_path / "d", workers=2, mode="thread") as served:
        for i in range(100):
            await served.submit("k", i, f"m{i}")
        served.terminate()
        assert await served.wait_exit(30) == 128 + signal.SIGTERM
        assert "stopped by signal 15" in served.stderr_path.read_text()
    async with serving(None, tmp_path / "d", workers=2, mode="thread") as again:
        assert (await again.committed())["k"] == [f"m{i}" for i in range(100)]


async def test_a_worker_the_target_forks_keeps_its_own_signals(tmp_path: Path) -> None:
    """A ProcessPoolExecutor served: its workers are forked from the server. A SIGTERM to one
    of them ends that worker (as unserved) and never reaches the server through its event
    loop's inherited wakeup fd (seen: the server stopped itself when the pool terminated its
    own workers)."""
    async with serving(
        "chaos.peers:ProcessPoolTarget", tmp_path / "d", workers=2, collect_timeout=3
    ) as served:
        await served.submit("k", 1, "a")
        await served.committed()
        (victim, *_) = served.worker_pids()
        os.kill(victim, signal.SIGTERM)
        assert not wait_gone({victim}, 10.0), "the worker survived SIGTERM"
        await asyncio.sleep(0.5)  # what would reach the server has reached it by now
        assert served.returncode is None, served._tail()
        with pytest.raises(Refused, match="BrokenProcessPool"):  # answered: the server serves
            await served.submit("k", 2, "b")
        assert served.returncode is None


async def test_a_killed_server_is_gone_though_its_orphans_hold_its_pipe(tmp_path: Path) -> None:
    """A ProcessPoolExecutor's workers, forked from the server, inherit its reply pipe and
    outlive its SIGKILL: the harness learns of the death from the server's own exit, not from
    the pipe's end (seen: every call hung until its bound)."""
    async with serving(
        "chaos.peers:ProcessPoolTarget", tmp_path / "d", workers=2, ack_timeout=60
    ) as served:
        await served.submit("k", 1, "a")
        await served.committed()
        orphans = set(served.worker_pids())
        t0 = time.monotonic()
        served.kill_server(signal.SIGKILL)
        with pytest.raises(TargetGone, match="SIGKILL"):
            await served.submit("k", 2, "b")
        assert time.monotonic() - t0 < 20.0  # far inside its own bound
        assert wait_gone(orphans, 0.5) == orphans  # they do outlive it (swept at the stop)
    assert not wait_gone(orphans, 10.0)


async def test_a_stop_that_hangs_is_bounded_and_leaves_nothing(tmp_path: Path) -> None:
    served = ServedTarget("targets:HangingStopTarget", tmp_path / "d", workers=2, stop_timeout=1)
    await served.start()
    await served.submit("k", 0, "m0")
    tree = tree_of(served)
    t0 = time.monotonic()
    with pytest.raises(ChaosError, match=r"(?s)failed to stop: exited with status 1.*TimeoutError"):
        await served.stop()  # the server gave up on the target's stop() and killed its workers
    assert time.monotonic() - t0 < 1 + 5
    assert not wait_gone(tree, 0.0)

    frozen_one = ServedTarget(None, tmp_path / "e", workers=2, stop_timeout=1)
    await frozen_one.start()
    tree = tree_of(frozen_one)
    os.kill(frozen_one.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(TargetHung, match=r"(?s)did not stop within 6.0 s.*group was killed"):
        await frozen_one.stop()
    assert time.monotonic() - t0 < 6 + 5
    assert not wait_gone(tree, 0.0) and frozen_one.returncode == -9


def test_a_bad_spec_or_options_is_one_line_saying_the_fix(tmp_path: Path) -> None:
    for args, says in [
        (["nocolon"], "expected 'package.module:factory'"),
        (["no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["chaos:NoSuchFactory"], "define a factory there"),
        (["chaos:SystemTarget", "--options", "[1]"], "is not a JSON object"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "chaos", "serve", args[0], str(tmp_path / "d"), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert run.returncode == 2, run.stderr
        assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("error: "), run.stderr
        assert says in run.stderr


async def test_a_target_that_does_not_start_says_why(tmp_path: Path) -> None:
    served = ServedTarget("no_such_module_xyz:f", tmp_path / "d")
    with pytest.raises(TargetGone, match=r"(?s)did not start .*status 2.*cannot import"):
        await served.start()
    await served.stop()


async def test_the_targets_own_prints_do_not_corrupt_the_protocol(tmp_path: Path) -> None:
    async with serving("targets:NoisyTarget", tmp_path / "d", workers=2) as served:
        await asyncio.gather(*(served.submit("k", i, f"m{i}") for i in range(300)))
        assert len((await served.committed())["k"]) == 300
    assert "submitting m299 to k" in served.stderr_path.read_text()


async def test_an_early_ack_is_lost_on_a_whole_pool_sigkill(tmp_path: Path) -> None:
    """The planted bug, directly: what the pool acknowledged but had not made durable is gone
    after a SIGKILL of the whole group, as the harness's own ledger shows."""
    history = History()
    async with serving("targets:EarlyAckTarget", tmp_path / "d", workers=2) as served:
        for i in range(500):
            await served.submit(f"k{i % 4}", i, f"m{i}")
            history.submitted(f"m{i}", f"k{i % 4}")
        served.kill_whole()
    async with serving("targets:EarlyAckTarget", tmp_path / "d", workers=2) as again:
        verdict = history.check(await again.committed())
    assert verdict.lost, verdict.summary()


def test_the_whole_pool_scenario_fails_a_pool_that_acks_before_it_is_durable(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "scenarios/test_whole_pool.py::test_sigkill_of_the_whole_process_group_then_rerun[process]",
            "--chaos-target",
            "targets:EarlyAckTarget",
            "--chaos-report",
            str(tmp_path / "reports"),
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout[-3000:]
    lost = re.search(r"lost=(\d+), allowed 0", run.stdout)
    assert "SLO breached" in run.stdout and lost and int(lost.group(1)) > 0, run.stdout[-3000:]


async def test_a_target_that_outlives_its_signal_is_hung_with_its_stacks(tmp_path: Path) -> None:
    """SIGTERM or a Ctrl-C (SIGINT to the group) that the target does not end in time is a
    verdict -- hung, where it stands named from its stacks -- never the harness's error; the
    group is SIGKILLed after the dumps, and nothing is left."""
    for how in ("SIGTERM", "SIGINT"):
        served = ServedTarget(
            "targets:HangingStopTarget", tmp_path / how, workers=2, stop_timeout=60
        )
        await served.start()
        await served.submit("k", 0, "m0")
        tree = tree_of(served)
        try:
            if how == "SIGTERM":
                served.terminate()
                with pytest.raises(TargetHung, match=r"did not exit within 2 s") as hung:
                    await served.wait_exit(2.0)
            else:
                with pytest.raises(TargetHung, match=r"outlived SIGINT to its process") as hung:
                    served.kill_whole(signal.SIGINT, timeout=2.0, known=tree)
                assert not wait_gone(tree, 5.0)  # SIGKILLed once its stacks were taken
            assert "the target is hung" in str(hung.value)
            assert f"--- target process {served.pid}" in (hung.value.dumps or "")
        finally:
            served.kill_whole()  # its own stop() would wait out stop_timeout
            await served.stop()
        assert not wait_gone(tree, 5.0)
