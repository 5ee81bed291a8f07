"""Shared by tests/ and scenarios/: a leak check after every test, and helpers to run the CLI."""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from chaos import cgroup_available, descendants, wait_gone, wait_until
from system import live_workers, read_events

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent
PIDS_OK, PIDS_WHY = cgroup_available("pids")
MEMORY_OK, MEMORY_WHY = cgroup_available("memory")


def _shared_helpers() -> set[int | None]:
    """multiprocessing's forkserver and resource tracker, and loky's resource tracker: one each
    per test session, by design (they end with it)."""
    helpers = {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }
    loky_tracker = sys.modules.get("loky.backend.resource_tracker")
    if loky_tracker is not None:
        helpers.add(getattr(loky_tracker._resource_tracker, "_pid", None))
    return helpers


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


class DemoRun:
    """``python -m system run --data-dir D ARGS`` in its own process group.

    Its output goes to files (a pipe nobody reads could fill up and stall it), and a wait that
    times out says what the run was doing: its last events and the tail of its stderr.
    """

    def __init__(self, data_dir: Path, *args: str):
        self.data_dir = data_dir
        self._out = data_dir.parent / f"{data_dir.name}.stdout"
        self._err = data_dir.parent / f"{data_dir.name}.stderr"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "system", "run", "--data-dir", str(data_dir), *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    @property
    def stdout(self) -> str:
        return self._out.read_text()

    @property
    def stderr(self) -> str:
        return self._err.read_text()

    def explain(self) -> str:
        kinds = [e["kind"] for e in read_events(self.data_dir)]
        return (
            f"run pid {self.pid} exit code {self.proc.poll()}; last events {kinds[-15:]}; "
            f"stderr tail:\n{self.stderr[-3000:]}"
        )

    def wait_until(self, predicate, timeout: float, what: str):
        try:
            return wait_until(predicate, timeout, what)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.explain()}") from None

    def finish(self, timeout: float) -> int:
        """Wait for the run to exit; kill its process group if it takes longer than ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group(signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"run did not exit within {timeout} s\n{self.explain()}") from None

    def kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


@pytest.fixture
def demo_run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., DemoRun]]:
    """Start demo runs (``demo_run(*args)``) whose process groups are killed at teardown.

    They drive ``system``'s own CLI, so a scenario using them is skipped when ``--chaos-target``
    names another pool."""
    from chaos.pytest_plugin import chosen_target

    other = chosen_target(request.config)
    if other and "chaos:SystemTarget" not in other:
        pytest.skip(f"drives the system CLI (python -m system run), not target {other}")
    runs: list[DemoRun] = []

    def start(*args: str, name: str = "d") -> DemoRun:
        runs.append(DemoRun(tmp_path / name, *args))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.kill_group(signal.SIGKILL)
            run.proc.wait()


class Puppet:
    """A real target process (tests/puppet.py) that runs commands and answers on its stdout."""

    def __init__(self, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "puppet.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = self.proc.stdout.readline()
        assert ready.startswith("ready"), ready

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        self.send(command)
        return self.answer()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def puppet() -> Iterator[Callable[..., Puppet]]:
    """Start puppet target processes (``puppet(env=..., pass_fds=...)``); killed at teardown."""
    started: list[Puppet] = []

    def start(**kw) -> Puppet:
        started.append(Puppet(**kw))
        return started[-1]

    yield start
    for p in started:
        p.stop()


def events(data_dir: Path) -> list[dict]:
    return read_events(data_dir)


def live(data_dir: Path) -> dict[int, int]:
    """``{worker: pid}`` of the ready workers of the pool in ``data_dir``."""
    return live_workers(read_events(data_dir))


def no_cgroups_left(pid_cgroup_before: str, pid: int | None = None) -> None:
    leftovers = list(Path("/sys/fs/cgroup").rglob(f"chaosgate-{os.getpid()}-*"))
    assert not leftovers, leftovers
    if pid is not None:
        assert Path(f"/proc/{pid}/cgroup").read_text() == pid_cgroup_before
