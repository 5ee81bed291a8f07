"""One supervised command -- a worker, a scheduler -- run as a service manager would run it.

``Service(name, argv, log, ready_marker)`` starts ``python -m ARGV`` in a process group of its
own (on this machine, or inside a test host: ``hosts.run``), with its output appended to
``log``, and waits for the line that says it is ready (bounded: ``START_TIMEOUT``). Its
supervisor starts it again when it dies, as systemd's ``Restart=always`` would: what is left of
the dead one is killed first, at most ``max_restarts`` times, never once a stop has begun, and
never on a host that was killed whole (a machine that lost its power starts nothing). Every
process of it ever seen is remembered, so that ``kill_tree`` leaves none behind (psutil checks
each is the same process: a reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from .._errors import BlastRadiusError, ChaosError
from .._process_faults import Injected, send_signal
from .._processes import descendants, is_gone, wait_gone

START_TIMEOUT = 30.0
MAX_RESTARTS = 10


class Service:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        ready_marker: bytes,
        *,
        env: dict[str, str] | None = None,
        hosts: Any = None,
        host: str | None = None,
        max_restarts: int = MAX_RESTARTS,
    ):
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.ready_marker = ready_marker
        self.env = env or {}
        self.hosts, self.host = hosts, host
        self.max_restarts = max_restarts
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.lifecycle = threading.Lock()  # a restart and a stop never overlap
        self._supervisor: threading.Thread | None = None
        self.seen: dict[int, psutil.Process] = {}  # every process of it ever seen

    def __repr__(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return f"<{self.name}{where} pid {self.proc.pid if self.proc else '-'}>"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def start(self) -> None:
        self.spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, daemon=True, name=f"supervise-{self.name}"
        )
        self._supervisor.start()

    def spawn(self) -> None:
        """Start it and wait until its log says it is ready (``ChaosError`` past
        ``START_TIMEOUT`` s, or if a stop began meanwhile: its processes are killed)."""
        start = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, **self.env}
        here = str(Path(__file__).resolve().parents[2])  # chaosgate's own chaos, first
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", *self.argv]
        with open(self.log, "ab") as log:
            popen: dict[str, Any] = dict(
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: the whole of it, signalled
            )  # fmt: skip
            if self.hosts is not None:
                self.proc = self.hosts.run(self.host, argv, **popen)
            else:
                self.proc = subprocess.Popen(argv, **popen)
        self.note(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with open(self.log, "rb") as f:
                f.seek(start)
                if self.ready_marker in f.read():
                    return
            late = self.stopping or self._host_down()  # a stop, or its host killed, meanwhile
            if self.proc.poll() is not None or time.monotonic() > deadline or late:
                tail = self.log.read_text(errors="replace").splitlines()[-8:]
                self.kill_tree()
                raise ChaosError(
                    f"{self.name} did not come up within {START_TIMEOUT:g} s (exit "
                    f"{self.proc.returncode}): " + " | ".join(tail)
                )
            time.sleep(0.02)

    def _supervise(self) -> None:
        while self.proc is not None:
            self.proc.wait()
            time.sleep(0.1)  # systemd's RestartSec default
            with self.lifecycle:
                if self.stopping or self.restarts >= self.max_restarts or self._host_down():
                    return
                self.kill_tree()  # the dead one's leftovers (RQ's orphaned workers)
                self.restarts += 1
                try:
                    self.spawn()
                except ChaosError:
                    return

    def _host_down(self) -> bool:
        return self.hosts is not None and self.host in self.hosts.down

    def note(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            if pid not in self.seen:
                self.seen[pid] = psutil.Process(pid)

    def children(self, pid: int | None = None) -> list[psutil.Process]:
        """The live children of ``pid`` (default: the service's main process)."""
        if self.proc is None:
            return []
        try:
            kids = psutil.Process(self.pid if pid is None else pid).children()
        except psutil.Error:
            return []
        return [k for k in kids if not is_gone(k.pid)]

    def stop_supervising(self) -> None:
        """From here on it is not started again (a start under way gives up at once)."""
        self.stopping = True
        with self.lifecycle:
            pass

    def terminate(self, timeout: float) -> bool:
        """SIGTERM, and wait up to ``timeout``; False if it is still running then."""
        self.stop_supervising()
        if self.proc is None or self.proc.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def join(self, timeout: float) -> None:
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    def kill_tree(self) -> None:
        """SIGKILL its process group and every process of it ever seen still running, and
        wait (``ChaosError`` naming any that survived 10 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:  # (reaped, its pid and group may be another's now)
            for proc in descendants(self.proc.pid):  # (some leave the group: RQ's horses)
                self.note(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own group (start_new_session)
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        left = wait_gone(self.seen, 10.0)
        if left:
            raise ChaosError(f"{self.name}'s processes {sorted(left)} survived SIGKILL for 10 s")

    def kill_whole(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> Injected:
        """``sig`` to every process of it at once (its process group and each descendant), as
        a service manager stops a service -- not started again -- then wait until all are
        gone (``ChaosError`` naming survivors, which are SIGKILLed)."""
        assert self.proc is not None
        self.stop_supervising()
        tree = {self.pid, *(p.pid for p in descendants(self.pid))}
        for pid in tree:
            self.note(pid)
        mono, ts = time.clock_gettime(time.CLOCK_MONOTONIC), time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        for pid in tree - {self.pid}:  # as systemd signals its whole cgroup
            with contextlib.suppress(ProcessLookupError, BlastRadiusError):
                send_signal(pid, sig)
        left = wait_gone(tree, timeout)
        if left:
            self.kill_tree()
            raise ChaosError(f"pids {sorted(left)} still alive {timeout:g} s after {sig!r}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        name = signal.Signals(sig).name
        return Injected("kill_whole", self.pid, mono, ts, {"signal": name, "pids": sorted(tree)})
