"""Dask distributed as a target, across test hosts: a scheduler on one, a worker on each other.

``DaskTarget(data_dir, workers=2, config="defaults")`` makes ``workers + 1`` test hosts
(``chaos.hosts``: network namespaces on a private bridge) and runs, as services
(``chaos.engines._service``), ``dask scheduler`` on host ``scheduler`` and ``dask worker``
(with its nanny, one thread) on each of ``w1``... ``wN``. The harness's client, on the hosts'
bridge, submits each message as a task keyed by its id (``client.submit(..., key=id,
pure=False)``), acknowledged when ``submit`` returns; the task is the list-append workload
(``chaos.engines.dask_tasks``), committing to a store Redis at the harness's end of the bridge
-- outside every worker, reached by every host -- so that what is lost or done twice shows.

The evidence is the harness's own (``chaos.engines._queue``): the store; and for what never
came back, the client's own futures: ``pending`` (the scheduler still holds it: waiting, not
lost), or nowhere -- erred (``KilledWorker`` once ``allowed-failures`` workers died running it;
its error recorded), lost or cancelled. Configurations (``CONFIGS``; settings are set in every
process's environment as ``DASK_*`` variables):

- ``defaults``: Dask's own, the client holding every future until the run is read back (as a
  program that gathers its results at the end does);
- ``release``: each future dropped as soon as its task finished (its effect is in the store;
  its result is not wanted), as a pipeline of side effects should use Dask: a finished task's
  result is then not recomputed when the worker holding it dies;
- ``fast+release``: and a lost worker noticed in seconds rather than minutes
  (``distributed.scheduler.worker-ttl`` 5 s; ``distributed.comm.timeouts.tcp`` 12 s, the least
  Dask takes: 10 keepalive probes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .._errors import ChaosError
from .._processes import is_helper
from ._queue import QueueTarget
from ._service import Service

PORT = 8786  # the scheduler's, inside its own host
FAST = {  # noticed in seconds: the least TCP timeout Dask takes (10 keepalive probes), a short ttl
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "12s",
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "5s",
}
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {"env": {}, "release": False},
    "release": {"env": {}, "release": True},
    "fast+release": {"env": FAST, "release": True},
}


class DaskTarget(QueueTarget):
    name = "dask"
    kinds = frozenset({"leak", "unordered"})
    coordinator = "scheduler"  # the host the workers depend on
    not_applicable = {
        "pipe_outside": "a worker talks to its nanny and the scheduler over TCP: see the "
        "network families",
        "worker_kill": "a worker's host killed whole: see host_kill",
    }

    def __init__(
        self, data_dir: Any, workers: int = 2, *, config: str = "defaults", **options: Any
    ):
        if config not in CONFIGS:
            raise ChaosError(f"unknown Dask configuration {config!r}: one of {', '.join(CONFIGS)}")
        self.config = config
        options["across_hosts"] = True
        super().__init__(data_dir, workers, **options)
        self.broker = None  # the scheduler holds the work: no broker
        self._futures: dict[str, Any] = {}
        self.client: Any = None

    def host_names(self) -> list[str]:
        return ["scheduler", *self.worker_hosts()]

    def _environment(self) -> dict[str, str]:
        return dict(CONFIGS[self.config]["env"])

    @property
    def scheduler_address(self) -> str:
        assert self.hosts is not None, "not started"
        return f"tcp://{self.hosts['scheduler'].address}:{PORT}"

    def _services(self) -> list[Service]:
        """The scheduler, then each worker host's ``dask worker`` (nanny and worker)."""
        assert self.hosts is not None
        env = self._environment()
        address = self.hosts["scheduler"].address
        scheduler = Service(
            "the dask scheduler",
            ["distributed.cli.dask_scheduler", "--host", address, "--port", str(PORT),
             "--no-dashboard", "--no-show"],
            self.data_dir / "scheduler.log", b"Scheduler at:", env=env,
            hosts=self.hosts, host="scheduler",
        )  # fmt: skip
        workers = [
            Service(
                f"the dask worker on {host}",
                ["distributed.cli.dask_worker", self.scheduler_address, "--nthreads", "1",
                 "--nworkers", "1", "--host", self.hosts[host].address, "--no-dashboard",
                 "--name", host],
                self.data_dir / f"worker-{host}.log", b"Registered to:", env=env,
                hosts=self.hosts, host=host,
            )
            for host in self.worker_hosts()
        ]  # fmt: skip
        return [scheduler, *workers]  # started in this order: the workers register with it

    async def stop(self) -> None:
        """The client, then the workers before the scheduler they report to, then the rest."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(self.client.close, 5), 10)
        await super().stop()

    def _stop_order(self) -> list[Service]:
        return [*self.services[1:], *self.services[:1]]  # the scheduler last

    def _connect(self) -> None:
        """The client connects once the workers are up (``start`` calls ``_spawn`` first)."""

    async def _start(self) -> None:
        await super()._start()
        await asyncio.to_thread(self._client)

    def _client(self) -> None:
        from distributed import Client

        self.client = Client(self.scheduler_address, timeout="20s", set_as_default=False)
        self.client.wait_for_workers(self.workers, timeout=30)

    def _publish(self, key: str, message_id: str, payload: Any) -> None:
        from .dask_tasks import append

        future = self.client.submit(
            append, key, message_id, payload, self.store.url, key=message_id, pure=False
        )
        self._futures[message_id] = future
        if CONFIGS[self.config]["release"]:
            future.add_done_callback(self._release)

    def _release(self, future: Any) -> None:
        """A finished task's future dropped (an erred one is kept: its error is evidence)."""
        if future.status == "finished":
            self._futures.pop(future.key, None)

    def _placed(self) -> dict[str, str]:
        """Each missing message by its future, as the client sees it: ``pending`` (the
        scheduler holds it), ``erred`` (its error recorded, in ``failures``: no retry brings it
        back) or gone (lost, cancelled)."""
        placed = {}
        for mid, future in list(self._futures.items()):
            status = future.status
            if status == "pending":
                placed[mid] = "pending"
            elif status == "error":
                placed[mid] = "erred"
                if mid not in self.failures:  # asked once (bounded: a second at most)
                    self.failures[mid] = "unknown: its error could not be fetched"
                    self.first_failure = time.clock_gettime(time.CLOCK_MONOTONIC)
                    with contextlib.suppress(Exception):
                        error = future.exception(timeout=1)
                        self.failures[mid] = f"{type(error).__name__}: {str(error)[:200]}"
        return placed

    def worker_pids(self) -> list[int]:
        """Each nanny's worker process (not its helpers)."""
        pids = []
        for service in self.services:
            if service.host == "scheduler":
                continue
            for child in service.children():
                if not is_helper(child):
                    service.note(child.pid)
                    pids.append(child.pid)
        return pids
