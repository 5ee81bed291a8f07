"""Scenario: beyond one machine -- Dask distributed and Celery across test hosts, under the
network's faults, each cell a strict expectation.

Each target makes its own hosts (``chaos.hosts``: network namespaces on a private bridge):
Dask's scheduler on one and a worker (with its nanny) on each of two others; Celery's Redis
broker on one and a worker on each of two others. The task commits to a store Redis at the
harness's end of the bridge, outside every worker. A cell makes every worker busy, then cuts
the network between hosts (nftables DROP rules inside the hosts' namespaces, with the kernel's
count of packets dropped as the fault's proof), heals it, sends more work and reads back what
was committed (``chaos._network_cells``). At the end every namespace, link, rule and process
is removed, and the hosts' own teardown proves that none is left.

Selection (marker ``network``): by default the ``CORE`` cells; ``-m network_full`` runs every
cell (``-n 3`` to share the cores). Needs root, iproute2 and nftables (``make test`` installs
nftables as root); without them every cell skips, saying why. Pointed at a target of your own
(``--chaos-target``), this matrix stays out of the run: it tests chaosgate's own targets.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest

from chaos._cells import judge_cell, parametrize_matrix
from chaos._network_cells import NETWORK_FAMILIES
from chaos.hosts import leaked_namespaces, unavailable

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

WORKERS = 2  # worker hosts
# A warm shutdown right after a partition healed may wait for TCP's next retransmission of
# what was in flight (the backoff doubles during the outage: up to about as long again).
OPTIONS = {"stop_timeout": 25.0}


def _dask(config: str) -> Any:
    from chaos.engines.dask_target import DaskTarget

    return functools.partial(DaskTarget, config=config)


def _celery(config: str) -> Any:
    from chaos.engines.celery_target import CeleryTarget

    return functools.partial(CeleryTarget, config=config, across_hosts=True)


TARGETS: dict[str, Any] = {
    "dask": _dask("defaults"),
    "dask release": _dask("release"),
    "dask fast+release": _dask("fast+release"),
    "celery": _celery("defaults"),
    "celery acks_late": _celery("acks_late"),
    "celery acks_late+reject -vt": _celery("acks_late+reject-vt"),
}
FAMILIES = ["kill_busy", *NETWORK_FAMILIES]  # (kill again: a worker death, four times)

# --- what each engine does with each fault, measured here, and why ------------------------

RECOMPUTE = (
    "a finished task's result lives in its worker's memory: with the worker gone, Dask "
    "recomputes every finished task whose future the client still holds -- its effect twice"
)
RERUN = "the task the dead worker was running runs again on the other (allowed-failures: 3)"
UNNOTICED = (
    "shorter than Dask's TCP timeout (30 s) and worker-ttl (5 min): nothing is noticed, and the "
    "connections resume as TCP retransmits once it heals"
)
STORE_TIMEOUT = (
    "the cut-off task's write to its store times out (redis-py's socket timeout, 5 s): the "
    "task errs, and Dask does not retry a task that raised (retries=0): lost"
)
FAST_DUP = (
    "the scheduler drops the cut-off worker (TCP timeout 12 s) and runs its task on the other, "
    "while the cut-off one finishes it and commits to the store it still reaches: twice (the "
    "dropped worker closes itself; its supervisor starts it again)"
)


def _dask_expected(release: bool, fast: bool) -> dict[str, tuple[str, str]]:
    killed = ("recovered", RERUN) if release else ("duplicated", RECOMPUTE)
    unnoticed = ("recovered", UNNOTICED)
    return {
        "kill_busy": killed,
        "host_kill": killed,
        "partition_worker": ("duplicated", FAST_DUP) if fast else unnoticed,
        "partition_isolated": ("recovered", "the scheduler gives the task to the other worker "
                               "before the cut-off one's write to the store times out: only "
                               "the second commits") if fast else ("lost", STORE_TIMEOUT),
        "partition_coordinator": ("duplicated", "every worker's connection to the scheduler "
                                  "times out (12 s): the scheduler runs their tasks again on "
                                  "the workers that come back, while the first runs commit")
        if fast else unnoticed,
        "partition_one_way": ("recovered", "the worker that hears nothing from the scheduler "
                              "(what it sends arrives) is dropped and started again; what it "
                              "held had committed before it ran elsewhere, in every run here")
        if fast else unnoticed,
        "host_freeze": ("duplicated", "worker-ttl 5 s: the frozen worker is dropped and its "
                        "task runs on the other; thawed, it finishes it and commits it too")
        if fast else ("recovered", "a frozen worker is noticed only by its missing heartbeats "
                      "(worker-ttl: 5 min): thawed, it goes on"),
        "kill_again": ("lost", "a task whose worker died while it ran 4 times (more than "
                       "allowed-failures, 3) is given up on: KilledWorker"),
    }  # fmt: skip


HELD = (
    "the tasks its worker had prefetched stay in Redis's unacknowledged set until the "
    "visibility timeout (one hour)"
)
RESUMED = (
    "no timer of Celery's fires within it (visibility timeout: one hour): the worker's "
    "connection to the broker resumes as TCP retransmits, seconds after it heals"
)
VT_DUP = (
    "the other host's worker restores what the cut-off worker holds unacknowledged past the "
    "visibility timeout (5 s) -- its running task too, which it finishes and commits: twice"
)


def _celery_expected(ack: str) -> dict[str, tuple[str, str]]:
    """A Celery configuration's row, a worker on each of two hosts; ``ack``: "early", "late"
    or "reject-vt"."""
    if ack == "reject-vt":
        return {
            "kill_busy": ("recovered", "task_reject_on_worker_lost gives the killed task back "
                          "to the broker at once"),
            "host_kill": ("recovered", "what the dead host held comes back after the "
                          "visibility timeout (5 s), to the other host"),
            "partition_worker": ("duplicated", VT_DUP),
            "partition_isolated": ("recovered", "the cut-off task cannot commit either (its "
                                   "store is cut off too): it fails, and the other host runs "
                                   "it after the visibility timeout -- once"),
            "partition_coordinator": ("duplicated", "the broker cut off from both workers: "
                                      "what they hold passes the visibility timeout and is "
                                      "restored as they reconnect, while they still run it"),
            "partition_one_way": ("duplicated", VT_DUP),
            "host_freeze": ("duplicated", "frozen past the visibility timeout: the other host "
                            "runs what it held, and it runs it again once thawed"),
            "kill_again": ("recovered", "a task whose process died is given back each time, "
                           "with no limit: the fifth run finishes (a message that always "
                           "crashes its worker would be run forever)"),
        }  # fmt: skip
    died = (
        ("lost", "a task is acknowledged as it starts: its process killed, it is lost")
        if ack == "early"
        else ("lost", "with acks_late alone, a task whose process died is acknowledged as "
              "failed (WorkerLostError): lost")
    )  # fmt: skip
    return {
        "kill_busy": died,
        "host_kill": ("hung", HELD + ("; the running task, acknowledged as it started, is lost"
                                      if ack == "early" else "")),
        "partition_worker": ("recovered", RESUMED),
        "partition_isolated": ("recovered", RESUMED),
        "partition_coordinator": ("recovered", RESUMED),
        "partition_one_way": ("recovered", RESUMED),
        "host_freeze": ("recovered", "thawed, the worker goes on where it stopped"),
        "kill_again": died,
    }  # fmt: skip


EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    **{("dask", f): e for f, e in _dask_expected(False, False).items()},
    **{("dask release", f): e for f, e in _dask_expected(True, False).items()},
    **{("dask fast+release", f): e for f, e in _dask_expected(True, True).items()},
    **{("celery", f): e for f, e in _celery_expected("early").items()},
    **{("celery acks_late", f): e for f, e in _celery_expected("late").items()},
    **{("celery acks_late+reject -vt", f): e for f, e in _celery_expected("reject-vt").items()},
}

# Left out of the strict matrix, with the reason: a race of the engine's own, either way.
UNSTABLE = {
    ("dask fast+release", "host_freeze"): (
        "the frozen worker's missing heartbeats (worker-ttl 5 s) make the scheduler ask its "
        "nanny -- frozen too -- to restart it; whether that lands before the thawed worker "
        "reports its task decides between a second run (duplicated) and none (both seen)"
    ),
}

# The default selection (make test): a partition that each engine, tuned, answers twice.
CORE = {  # one cell in make test (a partition Dask answers twice); the Celery target across
    # hosts is proven in tests/test_chaos_network.py, its matrix under -m network_full
    ("dask fast+release", "partition_worker"),
}
assert all(cell in EXPECTED for cell in CORE), sorted(set(CORE) - set(EXPECTED))


def _versions(target: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["distributed"] if target.startswith("dask") else ["celery", "kombu", "redis"]
    try:
        return ", ".join(f"{n} {version(n)}" for n in names)
    except PackageNotFoundError:
        return "(not installed)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_matrix(
        metafunc, marker="network", whose="Dask and Celery targets across test hosts",
        targets=TARGETS, families=lambda target: FAMILIES, expected=EXPECTED, core=CORE,
        unstable=UNSTABLE, versions=_versions,
    )  # fmt: skip


def _missing(target: str) -> str | None:
    if why := unavailable():
        return why
    if shutil.which("nft") is None:
        return "nftables is not installed: apt-get install nftables (make test installs it as root)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed: apt-get install redis-server"
    package = "distributed" if target.startswith("dask") else "celery"
    try:
        __import__(package)
    except ImportError:
        return f"{package} is not installed: pip install 'chaosgate[engines]'"
    return None


async def test_a_network_fault_across_hosts(
    chaos, tmp_path: Path, target_name: str, family: str
) -> None:
    if why := _missing(target_name):
        pytest.skip(why)
    try:
        await judge_cell(
            chaos, tmp_path, target_name, family, TARGETS[target_name], dict(OPTIONS),
            workers=WORKERS, expected=EXPECTED[(target_name, family)], matrix="network",
        )  # fmt: skip
    finally:  # its stop removed its hosts and proved it (else: broken); and by ip's listing:
        hosts = getattr(chaos.target, "hosts", None)
        left = [n for n in leaked_namespaces() if hosts is not None and hosts.tag in n]
        assert not left, f"network namespaces left behind: {left}"
