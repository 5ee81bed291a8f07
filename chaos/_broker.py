"""Broker faults: a real Redis broker killed, frozen, or cut off from a worker -- always restored.

Each is a context manager over a ``chaos.engines.RedisServer`` the test started (its own child:
signalled by pid through a pidfd, never by name), planned and fired as a fault of the scenario,
with its effect proven by the kernel's word:

- ``broker_killed(scenario, server)``: SIGKILL; the effect is the server's exit by that signal
  (its pidfd turns readable). It is started again at the block's end -- same port, same
  directory: an append-only file brings back what was written, one without comes back empty;
- ``broker_frozen(scenario, server)``: SIGSTOP for the block (the effect: the process seen in
  state T); SIGCONT at its end, whatever happened inside;
- ``broker_link_broken(scenario, pids, server)``: every TCP connection of each of ``pids`` (a
  pid, or several: a worker's whole tree) to the server's port shut down from outside
  (``pidfd_getfd``, as ``break_sockets``); the effect is the count of connections broken
  (none: no effect). Nothing to restore: the client must reconnect by itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psutil

from ._pipes import break_socket

EXIT_WAIT = 5.0


@contextlib.contextmanager
def broker_killed(scenario: Any, server: Any) -> Iterator[Any]:
    what = "append-only file on" if server.aof else "no persistence"
    fault = scenario.plan(
        "broker_kill", f"redis-server pid {server.pid}", pid=server.pid, detail=f"SIGKILL, {what}"
    )
    t0 = time.monotonic()
    try:
        pidfd = os.pidfd_open(server.pid)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            fault.fire()
            exited = bool(select.select([pidfd], [], [], EXIT_WAIT)[0])
        finally:
            os.close(pidfd)
        code = server.proc.wait(EXIT_WAIT) if exited else None
        if code == -signal.SIGKILL:
            fault.effect = "redis-server ended by SIGKILL"
        else:
            fault.no_effect = f"redis-server pid {server.pid}: exit {code} after SIGKILL"
        yield fault
    finally:
        if not server.running():  # (a kill that did nothing leaves it as it was)
            server.restart()
            fault.until = time.clock_gettime(time.CLOCK_MONOTONIC)  # down until then
            if fault.effect:
                fault.effect += f"; started again {time.monotonic() - t0:.1f} s later"


@contextlib.contextmanager
def broker_frozen(scenario: Any, server: Any) -> Iterator[Any]:
    fault = scenario.plan(
        "broker_freeze", f"redis-server pid {server.pid}", pid=server.pid, detail="SIGSTOP"
    )
    server.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        fault.fire()
        deadline = time.monotonic() + EXIT_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(server.pid).status() == psutil.STATUS_STOPPED:
                    fault.effect = "redis-server stopped (state T)"
                    break
            time.sleep(0.005)
        else:
            fault.no_effect = f"redis-server pid {server.pid} was not seen stopped after SIGSTOP"
        yield fault
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.signal(signal.SIGCONT)
        fault.until = time.clock_gettime(time.CLOCK_MONOTONIC)
        if fault.effect:
            fault.effect += f"; SIGCONT after {time.monotonic() - t0:.1f} s"


@contextlib.contextmanager
def broker_link_broken(scenario: Any, pids: int | Iterable[int], server: Any) -> Iterator[Any]:
    pids = [pids] if isinstance(pids, int) else list(pids)
    fault = scenario.plan(
        "broker_link",
        f"pid {' '.join(map(str, pids))} to redis-server :{server.port}",
        pid=pids[0],
        detail="shutdown",
    )
    broken = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            fds = sorted(
                c.fd
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr and c.raddr.port == server.port and c.fd >= 0
            )
            for fd in fds:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    broken.append(break_socket(pid, fd))
    if broken:
        fault.fire(broken[0].mono, broken[0].ts)
        where = " ".join(f"{b.pid}:{b.detail['fd']}" for b in broken)
        fault.effect = f"{len(broken)} connection(s) shut down (pid:fd {where})"
    else:
        fault.fire()
        fault.no_effect = (
            f"pid {' '.join(map(str, pids))} had no connection to the broker's port {server.port}"
        )
    yield fault
