"""Scenario: the task queues people run in production -- Celery and RQ on a real Redis -- under
the matrix's fault families and the broker's own, each cell a strict expectation.

Each target starts its own Redis servers (Debian's ``redis-server``: the broker, and the store
its task commits to) and its own worker under a supervisor, and removes them at the end
(``chaos.engines``). What a cell expects is what the engine does on this machine, measured, with
the reason from its source or documentation: a change in the engine's behaviour, for the better
or the worse, fails the run.

Selection (marker ``engines``): by default the ``CORE`` cells -- each weakness found, and the
setting that fixes it, once (about two minutes); ``-m engines_full`` runs every cell (about ten
minutes on two cores; ``-n 3`` halves it). The ``-vt`` columns (a visibility timeout of seconds)
run the families where the timeout decides. Pointed at a target of your own
(``--chaos-target``), this matrix stays out of the run: it tests chaosgate's own Celery and RQ
targets, not yours. Without ``redis-server`` every cell skips, saying how to get it.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest

from chaos._cells import judge_cell, parametrize_matrix
from chaos._matrix import ENGINE_FAMILIES, FAMILIES

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode

WORKERS = 2
ENGINE_OPTIONS = {"stop_timeout": 5.0}  # a warm shutdown blocked longer: dumped, killed


def _celery(config: str) -> Any:
    from chaos.engines.celery_target import CeleryTarget

    return functools.partial(CeleryTarget, config=config)


def _rq(config: str) -> Any:
    from chaos.engines.rq_target import RQTarget

    return functools.partial(RQTarget, config=config)


TARGETS: dict[str, Any] = {
    "celery": _celery("defaults"),
    "celery acks_late": _celery("acks_late"),
    "celery acks_late+reject": _celery("acks_late+reject"),
    "celery -vt": _celery("defaults-vt"),
    "celery acks_late -vt": _celery("acks_late-vt"),
    "celery acks_late+reject -vt": _celery("acks_late+reject-vt"),
    "rq": _rq("defaults"),
    "rq retry": _rq("retry"),
}
ALL = [*FAMILIES, *ENGINE_FAMILIES]
VT_FAMILIES = ["kill_busy", "worker_kill", "broker_kill_aof", "broker_link", "broker_freeze"]


# Left out of the strict matrix, with the reason: a race of the engine's own, either way.
UNSTABLE = {
    ("celery acks_late+reject", "exhaustion"): (
        "a fork refused under the cap takes the whole worker down; the killed task, rejected "
        "back to the broker while the worker gives back what it holds as it stops, then runs "
        "once or twice (both seen)"
    ),
}


def families(target: str) -> list[str]:
    return VT_FAMILIES if target.endswith("-vt") else ALL


# --- what each engine does with each fault, measured here, and why -------------------------

NO_PIPE = "its prefork children talk to the worker over pipes, not sockets (broker: broker_link)"
NO_CHANNEL = "a work horse has no channel to its worker: it reports through Redis, and its exit"
HANG = "no time limit is set (task_time_limit): the task never ends, and the warm shutdown waits"
RQ_HANG = "a stuck horse is killed only at the job's timeout (180 s by default)"
RQ_FROZEN = "a stopped horse is killed only at the job's timeout plus 60 s (240 s by default)"
ACKED_EARLY = (
    "a task is acknowledged as it starts: SIGKILL of its process loses it (WorkerLostError, "
    "not retried)"
)
ACKED_ON_FAILURE = (
    "with acks_late alone, a task whose process died is acknowledged anyway, as failed "
    "(WorkerLostError; task_acks_on_failure_or_timeout): lost"
)
REJECTED = (
    "task_reject_on_worker_lost gives a task whose process died back to the broker at once: it "
    "runs again"
)
PREFETCHED = (
    "the tasks the worker had prefetched stay in Redis's unacknowledged set, and come back only "
    "after the visibility timeout (one hour); with early acks, the running ones are lost"
)
NO_AOF = "without persistence, the queue goes with the broker: every queued message is lost"
AOF_UNACKED = (
    "the messages the worker had taken come back with the append-only file, but in the "
    "unacknowledged set: only after the visibility timeout (one hour; hung); and where one was "
    "being popped as the broker died, the pop is in the file and the message nowhere (lost: "
    "1 of 15 runs)"
)
RECONNECT_DUP = (
    "on reconnecting, the worker gives back the messages it holds unacknowledged -- the "
    "running acks_late tasks too, which then run twice"
)
VT_DUP = (
    "messages held unacknowledged longer than the visibility timeout (prefetched, or waiting "
    "out the frozen broker) are given to a worker again while the first still has them: twice"
)
SIGTERM_KILLS = (
    "SIGTERM to every process of the service (systemd's default KillMode) ends the prefork "
    "children mid-task"
)
MEMORY_CRASH = (
    "a MemoryError in one task takes the whole worker down (billiard re-raises it in the main "
    "process: 'Unrecoverable error'); it gives back its unacknowledged messages as it stops, "
    "and the supervisor starts it again"
)


def _celery_expected(ack: str) -> dict[str, tuple[str, str]]:
    """A Celery configuration's row; ``ack``: "early", "late" or "reject"."""
    died = {"early": ("lost", ACKED_EARLY), "late": ("lost", ACKED_ON_FAILURE)}.get(
        ack, ("recovered", REJECTED)
    )
    return {
        "kill_busy": died,
        "kill_all": died,
        "kill_idle": ("recovered", "an idle child killed is replaced; nothing was in it"),
        "freeze": ("hung", HANG),
        "deadlock": ("hung", HANG),
        "busy_loop": ("hung", HANG),
        "pipe_outside": ("n/a", NO_PIPE),
        "pipe_inside": ("recovered", "a child whose channels break is replaced"),
        "bad_argument": ("recovered", "refused at submit: JSON cannot encode it (EncodeError)"),
        "payload_catalog": ("recovered", "the JSON serializer refuses what it cannot encode"),
        "bad_result": ("recovered", "no result backend: a task's result goes nowhere"),
        "memory_growth": ("grew", "children are recycled for memory only with "
                          "worker_max_memory_per_child"),
        "rlimit_as": ("lost", ACKED_EARLY + "; " + MEMORY_CRASH)
        if ack == "early"
        else ("recovered", MEMORY_CRASH),
        "oom_kill": died,
        "exhaustion": ("lost", "a fork refused under the cap takes the whole worker down (the "
                       "supervisor starts it again); " + died[1]),
        "sigterm": ("lost", SIGTERM_KILLS + ": " + died[1])
        if ack != "reject"
        else ("drained", SIGTERM_KILLS + ", and they are given back to the broker"),
        "worker_kill": ("hung", PREFETCHED),
        "broker_kill": ("lost", NO_AOF),
        "broker_kill_aof": ("hung|lost", AOF_UNACKED),
        "broker_link": ("recovered", "the worker reconnects; acknowledged-early tasks are not "
                        "given back") if ack == "early" else ("duplicated|hung", RECONNECT_DUP
                        + "; and a message on its way to the worker as the link broke stays in "
                        "the unacknowledged set for the visibility timeout, an hour (hung: once, "
                        "under load, with the running ones done twice as well)"),
        "broker_freeze": ("recovered", "10 s is within what the clients wait (no socket "
                          "timeout by default): they resume"),
    }  # fmt: skip


def _celery_vt(ack: str) -> dict[str, tuple[str, str]]:
    died = _celery_expected(ack)["kill_busy"]
    return {
        "kill_busy": died,
        "worker_kill": ("lost", "the prefetched tasks come back after the visibility timeout; "
                        "the running ones, acknowledged as they started, do not")
        if ack == "early"
        else ("recovered", "what it held comes back after the visibility timeout"),
        "broker_kill_aof": ("recovered|lost", "the append-only file keeps the messages, and "
                            "the unacknowledged ones come back after the visibility timeout; "
                            "where one was being popped as the broker died, the pop is in the "
                            "file and the message nowhere (lost: 1 of about 15 runs, in make "
                            "scenarios under load)"),
        "broker_link": ("recovered", "the worker reconnects; acknowledged-early tasks are not "
                        "given back") if ack == "early" else ("duplicated", RECONNECT_DUP),
        "broker_freeze": ("duplicated", VT_DUP),
    }  # fmt: skip


def _rq_expected(retry: bool) -> dict[str, tuple[str, str]]:
    died = (
        ("recovered", "Retry(max=3): a job whose horse died is enqueued again")
        if retry
        else ("lost", "a job whose horse dies is failed (FailedJobRegistry), never retried")
    )
    return {
        "kill_busy": died,
        "kill_all": died,
        "kill_idle": ("hung|recovered", "a worker killed while truly idle loses nothing "
                      "(recovered: once, under load); one killed just after taking a job "
                      "(BLMOVE) strands it in "
                      "the intermediate queue: maintenance (every 10 min) fails it, or retries "
                      "it, only on a pass a minute or more after it first saw it there"),
        "freeze": ("hung", RQ_FROZEN),
        "deadlock": ("hung", RQ_HANG),
        "busy_loop": ("hung", RQ_HANG),
        "pipe_outside": ("n/a", NO_CHANNEL),
        "pipe_inside": ("n/a", NO_CHANNEL),
        "bad_argument": ("lost", "pickled as it came, it fails to unpickle in the horse: the "
                         "job fails, however often retried"),
        "payload_catalog": ("lost", "pickle refuses most at enqueue; those that pickle and fail "
                            "to unpickle in the horse fail their jobs"),
        "bad_result": ("recovered", "an unpicklable result is stored as 'Unserializable return "
                       "value': the job still finishes"),
        "memory_growth": ("recycled", "each job runs in a fresh horse: its memory goes with it"),
        "rlimit_as": ("recovered", "a MemoryError fails the job, and Retry enqueues it again")
        if retry
        else ("lost", "a MemoryError fails the job"),
        "oom_kill": died,
        "exhaustion": ("hung", "no horse can be forked under the cap: no job runs"),
        "sigterm": ("drained", "the jobs killed with their horses are retried on restart")
        if retry
        else ("lost", "SIGTERM to every process ends the horses mid-job: the jobs fail"),
        "worker_kill": ("hung", "the jobs of a dead worker stay in its started registry until "
                        "maintenance finds them abandoned (every 10 min)"),
        "broker_kill": ("lost", NO_AOF),
        "broker_kill_aof": ("recovered", "the append-only file keeps the queue"),
        "broker_link": ("recovered", "the worker reconnects (redis-py retries)"),
        "broker_freeze": ("recovered", "the worker waits on its blocking pop: it resumes"),
    }  # fmt: skip


EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    **{("celery", f): e for f, e in _celery_expected("early").items()},
    **{("celery acks_late", f): e for f, e in _celery_expected("late").items()},
    **{("celery acks_late+reject", f): e for f, e in _celery_expected("reject").items()},
    **{("celery -vt", f): e for f, e in _celery_vt("early").items()},
    **{("celery acks_late -vt", f): e for f, e in _celery_vt("late").items()},
    **{("celery acks_late+reject -vt", f): e for f, e in _celery_vt("reject").items()},
    **{("rq", f): e for f, e in _rq_expected(False).items()},
    **{("rq retry", f): e for f, e in _rq_expected(True).items()},
}

# The default selection: each weakness and the setting that fixes it, once.
CORE = {
    ("celery", "kill_busy"),
    ("celery acks_late", "kill_busy"),
    ("celery acks_late+reject", "kill_busy"),
    ("celery", "worker_kill"),
    ("celery acks_late+reject -vt", "worker_kill"),
    ("celery", "broker_kill"),
    ("celery acks_late+reject -vt", "broker_kill_aof"),
    ("celery acks_late", "broker_link"),
    ("celery", "sigterm"),
    ("celery acks_late+reject", "sigterm"),
    ("celery", "memory_growth"),
    ("rq", "kill_busy"),
    ("rq retry", "kill_busy"),
}  # not rq kill_idle: an engine's race (hung or recovered) proves little in 13 s of make test


assert all(cell in EXPECTED for cell in CORE), sorted(set(CORE) - set(EXPECTED))


def _versions(target: str) -> str:
    """What an expectation holds for: the engine's packages, as installed."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["celery", "kombu"] if target.startswith("celery") else ["rq"]
    try:
        return ", ".join(f"{n} {version(n)}" for n in [*names, "redis"])
    except PackageNotFoundError:
        return "(not installed)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_matrix(
        metafunc, marker="engines", whose="Celery and RQ targets", targets=TARGETS,
        families=families, expected=EXPECTED, core=CORE, unstable=UNSTABLE, versions=_versions,
    )  # fmt: skip


async def test_a_fault_against_each_engine(
    chaos, tmp_path: Path, target_name: str, family: str
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server (make test "
                    "installs it when run as root)")  # fmt: skip
    pytest.importorskip("celery", reason="pip install 'chaosgate[engines]'")
    pytest.importorskip("rq", reason="pip install 'chaosgate[engines]'")
    options = dict(ENGINE_OPTIONS)
    if family == "broker_kill_aof":
        options["aof"] = True
    await judge_cell(
        chaos, tmp_path, target_name, family, TARGETS[target_name], options,
        workers=WORKERS, expected=EXPECTED[(target_name, family)], matrix="engines",
    )  # fmt: skip
