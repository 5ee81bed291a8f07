"""Network faults between test hosts (``chaos.hosts``): each a context manager that always heals.

Every fault acts only inside network namespaces the test made (``Hosts``), never on this
machine's own, and proves its effect by the kernel's word:

- ``partitioned(scenario, hosts, a, b)``: hosts ``a`` cannot reach hosts ``b``, nor ``b`` reach
  ``a`` -- nftables DROP rules (table ``inet chaosgate``, with counters) inside the namespaces of
  one side (the harness's own side is never touched: a partition from the harness is written in
  the host's namespace). ``b`` left out: ``a`` from everyone else, the harness included.
  ``one_way=True``: only what ``b`` sends to ``a`` is dropped (an asymmetric partition: ``a``'s
  packets arrive, their answers do not). The effect is the count of packets the rules dropped
  (none: nothing tried to cross, so the partition proved nothing); healing deletes the table.
- ``host_frozen(scenario, hosts, host)``: SIGSTOP to every process in the host (the effect:
  each seen in state T); SIGCONT at the end, whatever happened.
- ``host_killed(scenario, hosts, host)``: SIGKILL to every process in the host at once, as a
  machine that lost its power (the effect: all gone, and none left in the namespace). Nothing to
  heal: starting it again is the deployment's business (the target's).
- ``bandwidth_limited(scenario, hosts, host, rate)``: a token bucket (``tc qdisc tbf``) on the
  host's ``eth0`` for what it sends (the effect: the qdisc's own count of packets it held back,
  "overlimits"); deleted at the end.

No added latency, loss or reordering: that is ``netem``, which this machine's kernel does not
have ("Specified qdisc kind is unknown"); chaosgate does not fake it.

Each fault's ``until`` is when it was healed (CLOCK_MONOTONIC): the report's timeline shades
the span.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psutil

from ._errors import ChaosError, InjectorUnavailable
from ._processes import wait_gone
from .hosts import Host, Hosts

TABLE = "chaosgate"
STOP_WAIT = 5.0
STILL = (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)  # a frozen host's processes: each one
KILL_WAIT = 10.0
EMPTY_FOR = 0.5  # seconds a killed host must stay empty (past a supervisor's 0.1 s restart)


def _nft(netns: str, script: str) -> str:
    if shutil.which("nft") is None:
        raise InjectorUnavailable(
            "nftables' `nft` is not installed: a partition is a DROP rule in a namespace "
            "(apt-get install nftables; `make test` installs it when run as root)"
        )
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=script, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ChaosError(f"nft in {netns} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _hosts_of(hosts: Hosts, names: str | Host | Iterable[str | Host]) -> list[Host]:
    if isinstance(names, str | Host):
        names = [names]
    return [n if isinstance(n, Host) else hosts[n] for n in names]


def _rules(against: list[Host], *, inbound: bool, outbound: bool) -> str:
    """A table that drops what ``against`` sends here (``inbound``) and what is sent here to
    ``against`` (``outbound``), counting each packet dropped."""
    addresses = "{ " + ", ".join(h.address for h in against) + " }"
    chains = [("input", "saddr")] * inbound + [("output", "daddr")] * outbound
    body = "".join(
        f"  chain {hook} {{ type filter hook {hook} priority -10; policy accept; "
        f"ip {field} {addresses} counter drop; }}\n"
        for hook, field in chains
    )
    return f"table inet {TABLE} {{\n{body}}}\n"


@contextlib.contextmanager
def partitioned(
    scenario: Any,
    hosts: Hosts,
    a: str | Host | Iterable[str | Host],
    b: str | Host | Iterable[str | Host] | None = None,
    *,
    one_way: bool = False,
) -> Iterator[Any]:
    side_a = _hosts_of(hosts, a)
    side_b = (
        _hosts_of(hosts, b)
        if b is not None
        else [h for h in [*hosts, hosts.harness] if h not in side_a]
    )
    if not side_a or not side_b or set(side_a) & set(side_b):
        raise ChaosError(f"a partition needs two sides with no host in both: {side_a} / {side_b}")
    what = "asymmetric: " if one_way else ""
    fault = scenario.plan(
        "partition",
        " ".join(h.name for h in side_a) + (" <- " if one_way else " | ")
        + " ".join(h.name for h in side_b),
        detail=f"{what}nftables DROP",
    )  # fmt: skip
    tables: list[str] = []  # the namespaces a table was written in
    try:
        # Each pair is cut once, in a namespace of the test's: in side a's hosts -- or, where
        # the harness (this machine's own namespace) is on side a, in side b's. One way: what
        # b sends to a is dropped, as a's input or b's output.
        near = hosts.harness not in side_a
        for host in side_a if near else side_b:
            assert host.netns is not None
            rules = _rules(
                side_b if near else side_a,
                inbound=near or not one_way,
                outbound=not near or not one_way,
            )
            _nft(host.netns, rules)
            tables.append(host.netns)
        fault.fire()
        yield fault
    finally:
        dropped, failed = 0, []
        for netns in tables:  # every one healed, whatever another did
            try:
                listing = _nft(netns, f"list table inet {TABLE}\n")
                dropped += sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))
            except ChaosError:
                pass  # (its count unknown: the heal is what matters)
            try:
                _nft(netns, f"delete table inet {TABLE}\n")
            except ChaosError as e:
                failed.append(str(e))
        fault.until = time.clock_gettime(time.CLOCK_MONOTONIC)
        if fault.fired:
            if dropped:
                fault.effect = f"{dropped} packets dropped; healed after {_held(fault)}"
            else:
                fault.no_effect = "no packet tried to cross the partition (0 dropped)"
        if failed:
            raise ChaosError("the partition could not be healed: " + "; ".join(failed))


@contextlib.contextmanager
def host_frozen(scenario: Any, hosts: Hosts, host: str | Host) -> Iterator[Any]:
    [target] = _hosts_of(hosts, host)
    fault = scenario.plan("host_freeze", f"host {target}", detail="SIGSTOP to every process")
    try:
        hit = hosts.signal(target, signal.SIGSTOP, "host_freeze")
        if hit:
            fault.fire(hit[0].mono, hit[0].ts)
            fault.pid = hit[0].pid
        else:
            fault.fire()
        running = _until_stopped(hosts, target)
        if hit and not running:
            fault.effect = f"every process of the host stopped (state T): {len(hit)} signalled"
        else:
            fault.no_effect = (
                f"not every process of the host was seen stopped: {running or 'none there'}"
            )
        yield fault
    finally:
        hosts.signal(target, signal.SIGCONT, "host_thaw")
        fault.until = time.clock_gettime(time.CLOCK_MONOTONIC)
        if fault.effect:
            fault.effect += f"; SIGCONT after {_held(fault)}"


def host_killed(scenario: Any, hosts: Hosts, host: str | Host) -> Any:
    """SIGKILL to every process of ``host`` (see the module doc); the fault."""
    [target] = _hosts_of(hosts, host)
    fault = scenario.plan("host_kill", f"host {target}", detail="SIGKILL to every process")
    hosts.down.add(target.name)  # as a machine without power: nothing of it starts again
    hit = hosts.signal(target, signal.SIGKILL, "host_kill")
    if not hit:
        fault.fire()
        fault.no_effect = f"host {target} had no process to kill"
        return fault
    fault.fire(hit[0].mono, hit[0].ts)
    fault.pid = hit[0].pid
    killed = [h.pid for h in hit]
    left = wait_gone(killed, KILL_WAIT)
    # A start under way as the power went (a supervisor's restart) is killed too, once it
    # shows: the host is empty only when it has stayed empty a while.
    deadline, empty_since = time.monotonic() + KILL_WAIT, None
    while time.monotonic() < deadline:
        if late := hosts.signal(target, signal.SIGKILL, "host_kill"):
            killed += [h.pid for h in late]
            left |= wait_gone([h.pid for h in late], KILL_WAIT)
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        elif time.monotonic() - empty_since >= EMPTY_FOR:
            break
        time.sleep(0.02)
    scenario.killed.update(killed)
    now_there = hosts.pids(target)
    if left or now_there:
        fault.no_effect = f"alive after SIGKILL: {sorted(left)}; in the host now: {now_there}"
    else:
        fault.effect = f"all {len(killed)} process(es) gone (pids {' '.join(map(str, killed))})"
    return fault


@contextlib.contextmanager
def bandwidth_limited(
    scenario: Any, hosts: Hosts, host: str | Host, rate: str = "1mbit"
) -> Iterator[Any]:
    [target] = _hosts_of(hosts, host)
    assert target.netns is not None
    fault = scenario.plan("bandwidth", f"host {target}", detail=f"tbf {rate} on eth0 egress")
    tc = ["ip", "netns", "exec", target.netns, "tc"]
    if shutil.which("tc") is None:
        raise InjectorUnavailable("iproute2's `tc` is not installed (apt-get install iproute2)")
    subprocess.run(
        [*tc, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "16kbit",
         "latency", "1s"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        fault.fire()
        yield fault
    finally:
        stats = subprocess.run(
            [*tc, "-s", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True,
            timeout=30, check=False,
        ).stdout  # fmt: skip
        subprocess.run([*tc, "qdisc", "del", "dev", "eth0", "root"], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        fault.until = time.clock_gettime(time.CLOCK_MONOTONIC)
        over = sum(int(n) for n in re.findall(r"overlimits (\d+)", stats))
        if over:
            fault.effect = f"{over} packet(s) held back by the bucket; lifted after {_held(fault)}"
        else:
            fault.no_effect = f"the bucket never held a packet back at {rate} (overlimits 0)"


def _until_stopped(hosts: Hosts, host: Host) -> list[int]:
    """Every process in ``host`` in state T, each one forked meanwhile stopped too; the pids
    still running after ``STOP_WAIT`` s (none: frozen whole)."""
    deadline = time.monotonic() + STOP_WAIT
    while True:
        running = []
        for pid in hosts.pids(host):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() not in (
                    psutil.STATUS_STOPPED,
                    psutil.STATUS_ZOMBIE,
                ):
                    running.append(pid)
        if not running or time.monotonic() > deadline:
            return running
        hosts.signal(host, signal.SIGSTOP, "host_freeze")  # (a stopped one takes it again)
        time.sleep(0.005)


def _held(fault: Any) -> str:
    return f"{fault.until - fault.mono:.1f} s" if fault.mono and fault.until else "?"
