"""Real processes, real signals: kill -9 of workers, of the supervisor, of everything; SIGTERM.

Each test runs ``python -m system run`` in its own process group, injects the fault by pid, lets
it (or a re-run) finish, and checks with ``verify`` that nothing was lost, duplicated or
reordered, and that no process was left behind.
"""

import os
import signal
import time
from pathlib import Path

import pytest

from chaos import descendants, wait_gone, wait_until
from conftest import cli, events, live, start_cli

pytestmark = pytest.mark.slow


def verified(d: Path) -> str:
    result = cli("verify", "--data-dir", str(d))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("lost=0 duplicated=0 reordered=0 unexpected=0")
    return result.stdout


def committed_some(d: Path) -> bool:
    return any(e["kind"] == "checkpointed" and e["messages"] for e in events(d))


def finish(proc, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


@pytest.mark.parametrize("mode", ["process", "thread", "inline"])
def test_sigkill_of_the_whole_process_group_then_rerun(tmp_path: Path, mode: str) -> None:
    d = tmp_path / "d"
    args = ("--data-dir", str(d), "--messages", "20000", "--mode", mode)
    proc = start_cli("run", *args, "--rate", "8000")
    try:
        wait_until(lambda: committed_some(d), 30, "some messages committed")
        tree = {proc.pid} | {p.pid for p in descendants(proc.pid)}
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        code, _, _ = finish(proc, 30)
    assert code == -signal.SIGKILL
    assert not wait_gone(tree, 5.0)
    rerun = cli("run", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "committed_now=0 " not in rerun.stdout
    assert verified(d).endswith("messages=20000 keys=100\n")


def test_sigkill_of_the_supervisor_alone_takes_its_workers_down(tmp_path: Path) -> None:
    d = tmp_path / "d"
    args = ("--data-dir", str(d), "--messages", "20000")
    proc = start_cli("run", *args, "--rate", "5000")
    try:
        workers = wait_until(lambda: len(live(d)) == 4 and live(d), 30, "4 workers")
        tree = {p.pid for p in descendants(proc.pid)}
        assert set(workers.values()) <= tree
        os.kill(proc.pid, signal.SIGKILL)  # the supervisor only, not its group
        code, _, _ = finish(proc, 30)
        assert code == -signal.SIGKILL
        left = wait_gone(tree, 5.0)
        assert not left, f"orphaned workers {left}"
    finally:
        for p in descendants(proc.pid):
            p.kill()
    assert cli("run", *args).returncode == 0
    verified(d)


@pytest.mark.parametrize(
    ("mode", "how"),
    [
        ("process", "SIGTERM"),
        ("process", "SIGINT to group"),
        ("thread", "SIGTERM"),
        ("inline", "SIGTERM"),
    ],
)
def test_sigterm_drains_and_exits_within_grace(tmp_path: Path, mode: str, how: str) -> None:
    d = tmp_path / "d"
    args = ("--data-dir", str(d), "--messages", "20000", "--mode", mode)
    proc = start_cli("run", *args, "--rate", "4000", "--grace", "5")
    try:
        wait_until(lambda: committed_some(d), 30, "some messages committed")
        tree = {p.pid for p in descendants(proc.pid)}
        t0 = time.monotonic()
        if how == "SIGTERM":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a Ctrl-C in a terminal does
        code, out, _ = finish(proc, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - t0
    signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    assert code == 128 + signum
    assert elapsed < 5 + 5  # the grace, plus slack for a loaded machine
    assert f"stopped by signal {signum}" in out
    assert not wait_gone(tree, 5.0)
    stops = [e for e in events(d) if e["kind"] == "stopped"]
    assert stops[-1]["worker"] is None and stops[-1]["drained"] is True
    assert cli("run", *args).returncode == 0
    verified(d)
