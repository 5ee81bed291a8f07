"""RQ as a target: a real ``rq worker-pool`` on a real Redis.

``RQTarget(data_dir, workers=2, config="defaults")`` runs ``rq worker-pool --num-workers N``
(RQ's own supervisor: it starts a worker again within a second of its death) on a broker and a
store of its own (``chaos.engines._queue``). Each worker forks a work horse per job, which
runs ``chaos.engines.rq_jobs.append``. Each message is enqueued with ``job_id`` = message id,
acknowledged when ``enqueue`` returns. Configurations (``CONFIGS``):

- ``defaults``: RQ's own -- a job whose horse dies is failed (``FailedJobRegistry``);
- ``retry``: every job enqueued with ``Retry(max=3)``, so that a failed or abandoned job runs
  again.

Worker pids are, for each of the pool's workers, its horse while it runs a job, else the
worker itself; ``pid`` is the pool's process.
"""

from __future__ import annotations

from typing import Any

from .._errors import ChaosError
from ._queue import QUEUE, QueueTarget
from .rq_jobs import STORE_ENV

CONFIGS: dict[str, dict[str, Any]] = {"defaults": {}, "retry": {"retry": 3}}
JOB = "chaos.engines.rq_jobs.append"


class RQTarget(QueueTarget):
    name = "rq"
    ready_marker = b"Listening on"
    not_applicable = {
        "pipe_outside": "a work horse has no channel to its worker: it reports through Redis, "
        "and its exit (the worker's broker connection: broker_link)",
        "pipe_inside": "a work horse has no channel to its worker: it reports through Redis, "
        "and its exit",
    }

    def __init__(
        self, data_dir: Any, workers: int = 2, *, config: str = "defaults", **options: Any
    ):
        if config not in CONFIGS:
            raise ChaosError(f"unknown RQ configuration {config!r}: one of {', '.join(CONFIGS)}")
        if options.get("across_hosts"):
            raise ChaosError("RQ across test hosts is not built: run it on one machine")
        self.config = config
        super().__init__(data_dir, workers, **options)

    def _environment(self) -> dict[str, str]:
        return {STORE_ENV: self.store.url}

    def _command(self, host: str | None = None) -> list[str]:
        assert self.broker is not None
        return [
            "rq.cli", "worker-pool", f"--url={self.broker.url}",
            f"--num-workers={self.workers}", "--logging-level=INFO", QUEUE,
        ]  # fmt: skip

    def _connect(self) -> None:
        from rq import Queue

        self.queue = Queue(QUEUE, connection=self._broker)

    def _publish(self, key: str, message_id: str, payload: Any) -> None:
        from rq import Retry

        retries = CONFIGS[self.config].get("retry")
        self.queue.enqueue(
            JOB, key, message_id, payload, job_id=message_id,
            retry=Retry(max=retries) if retries else None,
        )  # fmt: skip

    def _placed(self) -> dict[str, str]:
        """RQ's queue, intermediate queue and registries, read in one transaction (a job
        moving from one to another is seen in one of them)."""
        lists = [
            (f"rq:queue:{QUEUE}", "queued"),
            (f"rq:queue:{QUEUE}:intermediate", "intermediate"),
        ]
        sets = [
            (f"rq:wip:{QUEUE}", "started"),
            (f"rq:scheduled:{QUEUE}", "scheduled"),
            (f"rq:failed:{QUEUE}", "failed"),
        ]
        read = self._broker.pipeline()
        for key, _ in lists:
            read.lrange(key, 0, -1)
        for key, _ in sets:
            read.zrange(key, 0, -1)
        found = read.execute()
        placed: dict[str, str] = {}
        for (_, place), ids in zip(lists + sets, found, strict=True):
            for raw in ids:  # (a started entry is "job_id:execution_id")
                placed.setdefault(raw.decode().split(":")[0], place)
        return placed

    def worker_pids(self) -> list[int]:
        """Each worker's horse while it runs a job (a child in a process group of its own),
        else the worker."""
        pids = []
        for service in self.services:
            for worker in service.children():
                horses = [h.pid for h in service.children(worker.pid) if _own_group(h.pid)]
                pids.append(horses[0] if horses else worker.pid)
                service.note(pids[-1])
        return pids

    def resource_pids(self) -> list[int]:
        """The workers themselves: each job's horse is forked from one, and inherits its
        limits and cgroup."""
        return [w.pid for service in self.services for w in service.children()]


def _own_group(pid: int) -> bool:
    import os

    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False
