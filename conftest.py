"""Shared by tests/ and scenarios/: a leak check after every test, and helpers to run the CLI."""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from chaos import descendants, wait_gone
from system import live_workers, read_events

ROOT = Path(__file__).resolve().parent


def _shared_helpers() -> set[int | None]:
    """multiprocessing's forkserver and resource tracker: one each per test session, by design."""
    return {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }


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
    return subprocess.run(
        [sys.executable, "-m", "system", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m system ARGS`` in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "system", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def events(data_dir: Path) -> list[dict]:
    return read_events(data_dir)


def live(data_dir: Path) -> dict[int, int]:
    """``{worker: pid}`` of the ready workers of the pool in ``data_dir``."""
    return live_workers(read_events(data_dir))
