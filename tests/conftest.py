"""Shared fixtures: every test is checked for leaked processes at teardown."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _shared_helpers() -> set[int | None]:
    """multiprocessing's forkserver and resource tracker: one each per test session, by design."""
    return {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Poll until none of ``pids`` is alive (zombies count as gone); return the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a process of its own behind (the shared forkserver aside)."""
    before = {p.pid for p in descendants(os.getpid())}
    yield
    new = {p.pid for p in descendants(os.getpid())} - before - _shared_helpers()
    left = wait_gone(new, timeout=10.0)
    if left:
        names = {}
        for pid in left:
            try:
                names[pid] = " ".join(psutil.Process(pid).cmdline())[:80]
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        pytest.fail(f"test leaked processes {names} (killed now)")


def cli(*args: str, timeout: float = 120.0, **kw) -> subprocess.CompletedProcess[str]:
    """Run ``python -m system ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "system", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kw)


def start_cli(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m system ARGS`` in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "system", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)


def events(data_dir: Path) -> list[dict]:
    path = data_dir / "events.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def live_workers(data_dir: Path) -> dict[int, int]:
    """``{worker: pid}`` of the workers that are ready and not yet dead, from events.jsonl."""
    live: dict[int, int] = {}
    for e in events(data_dir):
        if e["kind"] == "ready":
            live[e["worker"]] = e["pid"]
        elif e["kind"] in ("died", "stopped") and live.get(e["worker"]) == e["pid"]:
            del live[e["worker"]]
    return live


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return result
