"""Test hosts on one machine: Linux network namespaces on a private bridge the test creates.

``Hosts(["broker", "w1", "w2"])`` makes one network namespace per host (``ip netns add``),
each with its loopback up and one ``eth0`` -- a veth pair whose other end is on a bridge of
its own in the test's namespace -- and an address of its own on a private /24 that no other
interface of this machine uses. The harness (this process) is on that bridge too, at
``hosts.harness`` (``.254``): it reaches every host, and they reach it, as machines on one
switch; nothing is routed further, so traffic goes only between these namespaces (and each
one's loopback).

``hosts.run(host, argv)`` starts a process inside a host (``ip netns exec``: the process itself,
a child of this one, its pid the one returned); ``hosts.pids(host)`` is every process in it, by
the kernel's word (``ip netns pids``: whose network namespace it is). ``close()`` -- always, also
when the test failed -- SIGKILLs every process left in each host, deletes the namespaces, their
veths and the bridge, and then *proves* that nothing is left: no namespace, no link, no process
(``LeftBehind`` names what is). Network faults act inside these namespaces only
(``chaos._network``).

Needs root (``CAP_NET_ADMIN``) and iproute2; ``HostsUnavailable`` says what is missing and how
to get it, and the scenarios skip with that reason.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ChaosError, InjectorUnavailable
from ._process_faults import Injected
from ._processes import wait_gone

PREFIX = "chaosgate-"  # every namespace this module makes is named so
KILL_WAIT = 10.0
CLOSE_WAIT = 30.0  # seconds close() goes on killing what is left in the hosts
LOCK_WAIT = 60.0  # seconds to wait for another run choosing its subnet


class HostsUnavailable(InjectorUnavailable):
    """This machine cannot make test hosts here (not root, no iproute2, no netns)."""


class LeftBehind(ChaosError):
    """Teardown found a namespace, link or process of the test's hosts still there."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str  # on the hosts' bridge
    netns: str | None  # None: the harness's own namespace (the bridge's end)

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (inside ``netns`` if given); its output, or ``ChaosError`` with stderr."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise ChaosError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why test hosts cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "test hosts are network namespaces: making them needs root (CAP_NET_ADMIN)"
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces"
    return _probe()


@functools.cache
def _probe() -> str | None:
    """Whether a namespace can be made here (root in a container may lack CAP_SYS_ADMIN)."""
    name = f"{PREFIX}probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", name)
    except (ChaosError, subprocess.TimeoutExpired) as e:
        return f"network namespaces cannot be made here: {e}"
    ip("netns", "delete", name, check=False)
    if name in ip("netns", "list", check=False).split():
        raise LeftBehind(f"the probe namespace {name} could not be deleted")
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.250.255.0 that no interface or route of this machine touches."""
    used = []
    routes = ip("-4", "route", "show", "table", "all").splitlines()
    for line in ip("-4", "-o", "addr", "show").splitlines() + routes:
        for word in line.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    for _ in range(200):
        second, third = 200 + secrets.randbelow(51), secrets.randbelow(256)
        net = ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise ChaosError("no free private /24 in 10.200.0.0/16-10.250.255.0 for the test hosts")


class Hosts:
    """N test hosts (see the module doc); a context manager: ``with Hosts([...]) as hosts``."""

    def __init__(self, names: Sequence[str]):
        if why := unavailable():
            raise HostsUnavailable(why)
        if len(set(names)) != len(names) or not names or "harness" in names:
            raise ChaosError(f"host names must be distinct, and not 'harness': {list(names)}")
        if len(names) > 250:
            raise ChaosError("at most 250 hosts on one bridge")
        self.tag = secrets.token_hex(3)  # in every name made: cg<tag>... (IFNAMSIZ: 15)
        self.bridge = f"cg{self.tag}br"
        self._procs: list[subprocess.Popen[Any]] = []
        self.down: set[str] = set()  # hosts killed whole: a service there is not restarted
        self._made: list[str] = []  # what close() removes: "netns:NAME", "link:NAME"
        self.hosts: dict[str, Host] = {}
        try:
            with _subnet_lock():  # chosen and taken (the bridge's address) before another looks
                self.subnet = _free_subnet()
                base = self.subnet.network_address
                self.harness = Host("harness", str(base + 254), None)
                self.hosts = {
                    name: Host(name, str(base + 1 + i), f"{PREFIX}{self.tag}-{name}")
                    for i, name in enumerate(names)
                }
                self._bridge()
            self._create()
            self._check_bridge()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        if name == "harness":
            return self.harness
        try:
            return self.hosts[name]
        except KeyError:
            raise ChaosError(f"no host {name!r}: the hosts are {', '.join(self.hosts)}") from None

    def __iter__(self) -> Any:
        return iter(self.hosts.values())

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bridge(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(f"link:{self.bridge}")
        ip("addr", "add", f"{self.harness.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def _create(self) -> None:
        for i, host in enumerate(self.hosts.values()):
            assert host.netns is not None
            ip("netns", "add", host.netns)
            self._made.append(f"netns:{host.netns}")
            outer = f"cg{self.tag}h{i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", f"cg{self.tag}p{i}")
            self._made.append(f"link:{outer}")
            ip("link", "set", f"cg{self.tag}p{i}", "netns", host.netns)
            ip("link", "set", f"cg{self.tag}p{i}", "name", "eth0", netns=host.netns)
            ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
            ip("link", "set", "eth0", "up", netns=host.netns)
            ip("link", "set", "lo", "up", netns=host.netns)
            ip("link", "set", outer, "master", self.bridge)
            ip("link", "set", outer, "up")

    def _check_bridge(self) -> None:
        """Where br_netfilter sends bridged traffic through this machine's own firewall, prove
        that one host reaches another (a FORWARD policy of DROP -- Docker's -- cuts them off;
        the partitions must be the test's rules alone)."""
        sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        hosts = list(self)
        if len(hosts) < 2 or not os.path.exists(sysctl) or Path(sysctl).read_text().strip() == "0":
            return
        server, client = hosts[0], hosts[1]
        listen = (
            "import socket, sys\n"
            f"s = socket.create_server(({server.address!r}, 9)); print(flush=True)\n"
            "s.settimeout(5); s.accept()\n"
        )
        proc = self.run(server, [sys.executable, "-c", listen], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # listening
            connect = f"import socket; socket.create_connection(({server.address!r}, 9), 3)"
            done = self.run(client, [sys.executable, "-c", connect], stderr=subprocess.DEVNULL)
            if done.wait(15) != 0:
                raise HostsUnavailable(
                    "traffic between test hosts is dropped by this machine's own firewall: "
                    "br_netfilter passes bridged traffic to iptables "
                    "(net.bridge.bridge-nf-call-iptables = 1) and a FORWARD rule or policy "
                    "drops it (Docker's, say). Run `sysctl -w "
                    "net.bridge.bridge-nf-call-iptables=0`, or accept what crosses the test "
                    "bridges (cg*br) in FORWARD"
                )
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    # --- processes -------------------------------------------------------------------------

    def run(self, host: str | Host, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``: ``ip netns exec`` enters the namespace and execs it,
        so the returned process is the program itself, a child of this one."""
        host = host if isinstance(host, Host) else self[host]
        if host.netns is None:
            raise ChaosError("the harness is not a host to run in: run it as any child process")
        proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], **popen)
        self._procs.append(proc)
        return proc

    def pids(self, host: str | Host) -> list[int]:
        """Every process whose network namespace is ``host``'s (the kernel's word)."""
        host = host if isinstance(host, Host) else self[host]
        if host.netns is None:
            raise ChaosError("the harness's namespace is this machine's own: no host pids")
        out = ip("netns", "pids", host.netns, check=False)
        return sorted({int(p) for p in out.split() if p.isdigit()} - {os.getpid()})

    def signal(self, host: str | Host, sig: int, kind: str = "") -> list[Injected]:
        """``sig`` to every process in ``host``, each through a pidfd after checking that it is
        in the host's namespace (the namespace is the blast radius: every process in one this
        test made is one it started, a daemon reparented to init included); one that exited
        meanwhile is skipped."""
        host = host if isinstance(host, Host) else self[host]
        assert host.netns is not None
        inode = os.stat(f"/run/netns/{host.netns}").st_ino
        sent = []
        name = signal.Signals(sig).name
        for pid in self.pids(host):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino != inode:
                    continue  # (not one of the host's: a pid reused meanwhile)
                mono, ts = time.clock_gettime(time.CLOCK_MONOTONIC), time.time()
                signal.pidfd_send_signal(pidfd, sig)
                sent.append(Injected(kind or name, pid, mono, ts, {"signal": name}))
            except (ProcessLookupError, FileNotFoundError):
                continue
            finally:
                os.close(pidfd)
        return sent

    def kill_all(self, hosts: Iterable[Host] | None = None) -> set[int]:
        """SIGKILL every process in ``hosts`` (default: all) and wait until they are gone;
        the pids that would not go (none, normally)."""
        pids: list[int] = []
        for host in hosts if hosts is not None else self:
            pids += [hit.pid for hit in self.signal(host, signal.SIGKILL, "host_kill")]
        for proc in list(self._procs):  # reap our own children among them
            with contextlib.suppress(subprocess.TimeoutExpired):
                if proc.pid in pids:
                    proc.wait(KILL_WAIT)
        return wait_gone(pids, KILL_WAIT)

    # --- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process in the hosts, remove every namespace and link made, and prove
        that nothing is left (``LeftBehind``)."""
        if not self._made:
            return
        self.down.update(self.hosts)  # no service is started again in a host from here on
        made = [h for h in self if f"netns:{h.netns}" in self._made]
        deadline = time.monotonic() + CLOSE_WAIT
        while True:  # until no process is in any of them (one started meanwhile: killed too)
            survivors = self.kill_all(made)
            inside = {pid for host in made for pid in self.pids(host)}
            if not inside or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        survivors |= inside
        for proc in list(self._procs):  # reap them (no zombie of ours is left)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_WAIT)
        for item in reversed(self._made):
            kind, name = item.split(":", 1)
            if kind == "netns":
                ip("netns", "delete", name, check=False)
            else:
                ip("link", "delete", name, check=False)
        made, self._made = self._made, []
        left = [f"process {pid}" for pid in sorted(survivors)] + self.leftovers(made)
        if left:
            raise LeftBehind(f"the test hosts left behind: {', '.join(left)}")

    def leftovers(self, made: Iterable[str]) -> list[str]:
        """What of ``made`` still exists, by ``ip``'s own listing."""
        namespaces = set(ip("netns", "list", check=False).split())
        links = {
            line.split(":")[1].strip().split("@")[0]
            for line in ip("-o", "link", "show", check=False).splitlines()
            if line.count(":") >= 2
        }
        left = []
        for item in made:
            kind, name = item.split(":", 1)
            if (kind == "netns" and name in namespaces) or (kind == "link" and name in links):
                left.append(item)
        return left


@contextlib.contextmanager
def _subnet_lock() -> Any:
    """Held while a /24 is chosen and while it is taken (an address on the bridge): two test
    runs making hosts at once never choose the same one."""
    import fcntl

    with open(os.path.join(tempfile.gettempdir(), "chaosgate-hosts.lock"), "a") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChaosError(
                        f"another run held {lock.name} for {LOCK_WAIT:g} s: is one stuck?"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def leaked_namespaces() -> list[str]:
    """Every namespace of chaosgate's on this machine (for a check that a run left none)."""
    return [n for n in ip("netns", "list", check=False).split() if n.startswith(PREFIX)]
