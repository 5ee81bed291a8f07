"""A real Redis, started by the test: Debian's ``redis-server`` on a free loopback port.

Across test hosts (``chaos.hosts``): ``RedisServer(directory, hosts=hosts, host="broker")`` runs
it inside that host, bound to its address; ``address=`` binds it elsewhere (the harness's end of
the hosts' bridge, say, for a store every host reaches).

``RedisServer(directory, aof=False)`` runs one server in a directory of its own, bound to
127.0.0.1 only, persistence off (``save ""``, no AOF) or with the append-only file on
(``appendonly yes``, ``appendfsync everysec``: every write reaches the kernel before its reply,
so it survives the process's SIGKILL -- not the machine's crash). ``start()`` waits until it
answers PING (bounded); ``kill()``/``restart()`` are what the broker faults do to it (same port,
same directory: what it had on disk comes back, what it had in memory only does not);
``stop()`` shuts it down and, past its bound, SIGKILLs it. Nothing else on the machine is
touched: the server is this process's child, signalled by pid through a pidfd.

Without ``redis-server`` on the PATH, ``RedisMissing`` says how to get it (``make test``
installs it through apt when run as root).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .._errors import ChaosError
from .._process_faults import send_signal
from .._processes import wait_gone

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class RedisMissing(ChaosError):
    """No ``redis-server`` here: the engines' scenarios cannot run."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RedisMissing(
            "redis-server is not installed: the Celery and RQ targets need a real Redis "
            "(apt-get install redis-server; `make test` installs it when run as root)"
        )
    return found


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(
        self,
        directory: str | Path,
        *,
        aof: bool = False,
        name: str = "redis",
        address: str = "127.0.0.1",
        hosts: Any = None,
        host: str | None = None,
    ):
        self.directory = Path(directory)
        self.aof = aof
        self.name = name
        self.hosts, self.host = hosts, host  # run inside a test host (chaos.hosts), if given
        self.address = hosts[host].address if hosts is not None and host else address
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> RedisServer:
        """Start on a free port (a few tries: another process may take the port first)."""
        for attempt in range(3):
            self.port = free_port()
            try:
                self._spawn()
                return self
            except ChaosError:
                if attempt == 2:
                    raise
        return self

    def restart(self) -> None:
        """Start again after a kill: the same port and directory (its AOF, if it keeps one)."""
        if self.proc is None or self.proc.poll() is None:
            raise ChaosError(f"{self.name}: restart() needs a server that was started and ended")
        self.restarts += 1
        self._spawn()

    def _spawn(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else []
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.address,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            *persistence,
            "--daemonize", "no",
            # no password: reached from the test's hosts over their private bridge
            "--protected-mode", "yes" if self.address == "127.0.0.1" else "no",
            "--logfile", str(self.log),
            "--appendfilename", f"{self.name}.aof",
            "--appenddirname", f"{self.name}-aof",
        ]  # fmt: skip
        errors = self.directory / f"{self.name}.stderr"
        with open(errors, "ab") as err_file:
            popen: dict[str, Any] = dict(
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file
            )
            if self.hosts is not None and self.host:
                self.proc = self.hosts.run(self.host, args, **popen)
            else:
                self.proc = subprocess.Popen(args, **popen)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.proc.poll() is not None:
                err = errors.read_text(errors="replace")
                raise ChaosError(
                    f"{self.name}: redis-server exited ({self.proc.returncode}) at start on port "
                    f"{self.port}: {err.strip() or self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self._kill_now()
                raise ChaosError(
                    f"{self.name}: redis-server did not answer PING within {START_TIMEOUT:g} s "
                    f"on port {self.port}: {self._log_tail()}"
                )
            time.sleep(0.01)

    def ping(self, timeout: float = 0.5) -> bool:
        """True if *this* server answers now: the one on its port says its process id is ours
        (a raw RESP exchange: no client library; another server on the port is not ours)."""
        try:
            with socket.create_connection((self.address, self.port), timeout=timeout) as s:
                s.sendall(b"INFO server\r\n")
                seen = b""
                while b"process_id:" not in seen or not seen.split(b"process_id:")[1].count(
                    b"\r\n"
                ):
                    chunk = s.recv(65536)
                    if not chunk:
                        return False
                    seen += chunk
                pid = int(seen.split(b"process_id:")[1].split(b"\r\n")[0])
                return self.proc is not None and pid == self.proc.pid
        except (OSError, ValueError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server (its own child: by pidfd, never by name)."""
        assert self.proc is not None
        send_signal(self.proc.pid, sig)

    def stop(self) -> None:
        """Shut down (SIGTERM; SIGKILL past ``STOP_TIMEOUT``); a stopped one is left as it is."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGCONT)  # a frozen one must be able to act on its SIGTERM
            self.signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill_now()

    def _kill_now(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)
        wait_gone([self.proc.pid], STOP_TIMEOUT)

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
