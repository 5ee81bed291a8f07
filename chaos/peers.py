"""Targets for pools nobody here wrote: ``ProcessPoolExecutor``, ``multiprocessing.Pool``, loky.

Each adapter uses its pool the way a user would -- submit a function call per message, collect
the results in submission order into each key's committed list -- and changes nothing in the
pool: no retry, no resubmit, no recycling it was not asked for. What the pool does with a fault
is what the scenarios see:

- a result that comes back is committed; one that fails is kept in ``failures`` (id -> the
  exception, e.g. ``BrokenProcessPool``), and one that never comes back within
  ``collect_timeout`` seconds of ``committed()`` is in ``outstanding`` (the caller would hang),
  with py-spy dumps of the workers and of this process (the pool's threads) in ``dumps``;
- ``stop()`` is bounded too: a shutdown that blocks longer than ``stop_timeout`` is recorded in
  ``stop_blocked`` with a py-spy dump of the blocked process (``dumps``), then every worker
  process is killed by pid -- no orphans, whatever state the pool is in;
- ``worker_pids()`` reads the pool's own process table (a private attribute: there is no public
  one in any of the three).

The task (``work``) hands each message to ``chaos.workload.apply`` (the workload contract): it
returns the message id, and a dict payload can make it sleep, leak, hang, break its channel or
return a result that raises on unpickle. Use one with ``--chaos-target
chaos.peers:ProcessPoolTarget`` (or ``MultiprocessingPoolTarget``, ``LokyTarget``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import workload
from ._errors import BlastRadiusError
from ._process_faults import kill
from ._processes import wait_gone
from ._served import SERVED_ENV
from ._stacks import StackDump, dump_stacks

COLLECT_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


def work(key: str, message_id: str, payload: Any) -> Any:
    """The task every peer runs for a message: ``chaos.workload.apply`` (its id back)."""
    return workload.apply(key, message_id, payload)


class PeerTarget:
    """The common part: ordered collection, bounded waits, bounded stop (see the module doc)."""

    name = "peer"
    capabilities = frozenset({"leak"})

    def __init__(
        self,
        data_dir: str | Path,
        workers: int = 2,
        *,
        collect_timeout: float = COLLECT_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        **_system_options: Any,  # options meant for the system pool (hang_timeout...) don't apply
    ):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.collect_timeout = collect_timeout
        self.stop_timeout = stop_timeout
        self.failures: dict[str, str] = {}
        self.outstanding: list[str] = []
        self.first_failure: float | None = None  # CLOCK_MONOTONIC of the first failed result
        self.stop_blocked = False
        self.dumps: list[StackDump] = []
        self._pending: list[tuple[str, str, asyncio.Future[Any]]] = []
        self._done: dict[str, list[str]] = {}
        self._seen_pids: set[int] = set()
        self._collecting = asyncio.Lock()
        self.pool: Any = None

    # --- what each pool does differently -------------------------------------------------

    def _make(self) -> Any:
        raise NotImplementedError

    def _submit(self, key: str, message_id: str, payload: Any) -> concurrent.futures.Future[Any]:
        raise NotImplementedError

    def _pids(self) -> list[int]:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    # --- the target protocol --------------------------------------------------------------

    async def start(self) -> None:
        self.pool = self._make()

    async def submit(self, key: str, payload: Any, id: str) -> None:
        future = self._submit(key, id, payload)  # raises if the pool refuses: not acknowledged
        future.add_done_callback(self._note_failure)
        self._pending.append((key, id, asyncio.wrap_future(future)))

    def _note_failure(self, future: concurrent.futures.Future[Any]) -> None:
        """When the pool first reported a failure (called as the future completes)."""
        if self.first_failure is None and (future.cancelled() or future.exception()):
            self.first_failure = time.clock_gettime(time.CLOCK_MONOTONIC)

    def worker_pids(self) -> list[int]:
        pids = [pid for pid in self._pids() if _alive(pid)]
        self._seen_pids.update(pids)
        return pids

    async def committed(self) -> dict[str, list[Any]]:
        """Results collected in submission order; waits at most ``collect_timeout`` s for the
        ones still running, and leaves those that never came in ``outstanding`` (not waited
        for again: a later call only looks whether they came). One caller at a time collects
        (a scenario may poll while it verifies)."""
        async with self._collecting:
            return await self._collect()

    async def _collect(self) -> dict[str, list[Any]]:
        deadline = time.monotonic() + self.collect_timeout
        still: list[tuple[str, str, asyncio.Future[Any]]] = []
        for key, mid, future in self._pending:
            if not future.done() and mid not in self.outstanding:  # "never" is known already
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(
                        asyncio.shield(future), max(0.0, deadline - time.monotonic())
                    )
            if not future.done():
                still.append((key, mid, future))
            elif future.cancelled() or future.exception() is not None:
                error = "cancelled" if future.cancelled() else future.exception()
                self.failures[mid] = f"{type(error).__name__}: {error}"
            else:
                self._done.setdefault(key, []).append(future.result())
        self._pending = still
        if still and not self.outstanding and not os.environ.get(SERVED_ENV):
            # newly stuck: where is everyone waiting? (served: the harness dumps from outside)
            self.dumps += [dump_stacks(pid, timeout=10.0) for pid in self.worker_pids()]
            self.dumps.append(dump_stacks(os.getpid(), timeout=10.0))  # the pool's own threads
        self.outstanding = [mid for _, mid, _ in still]
        return {key: list(ids) for key, ids in self._done.items()}

    def dead_lettered(self) -> list[str]:
        return []

    async def stop(self) -> None:
        """Shut the pool down within ``stop_timeout``, else dump and kill its processes."""
        if self.pool is None:
            return
        pids = set(self._seen_pids) | set(self._pids())
        done = threading.Event()

        def shutdown() -> None:
            with contextlib.suppress(Exception):
                self._shutdown()
            done.set()

        # A daemon thread, not the loop's executor: a shutdown that never returns must not
        # keep the interpreter from exiting.
        threading.Thread(target=shutdown, name=f"{self.name}-shutdown", daemon=True).start()
        deadline = time.monotonic() + self.stop_timeout
        while not done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not done.is_set():
            self.stop_blocked = True
            self.dumps.append(dump_stacks(os.getpid(), timeout=10.0))
        for pid in pids:  # through the blast-radius guard: a pid long gone may be reused
            with contextlib.suppress(ProcessLookupError, BlastRadiusError):
                kill(pid)
        await asyncio.to_thread(wait_gone, pids, 10.0)
        for key, _, future in self._pending:  # what came back before the end is committed
            if future.done() and not future.cancelled() and future.exception() is None:
                self._done.setdefault(key, []).append(future.result())
            future.cancel()
        self._pending = []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class ProcessPoolTarget(PeerTarget):
    """``concurrent.futures.ProcessPoolExecutor(workers)``, one ``submit`` per message."""

    name = "ProcessPoolExecutor"

    def _make(self) -> Any:
        return concurrent.futures.ProcessPoolExecutor(self.workers)

    def _submit(self, key: str, message_id: str, payload: Any) -> concurrent.futures.Future[Any]:
        return self.pool.submit(work, key, message_id, payload)

    def _pids(self) -> list[int]:
        return list(self.pool._processes or ())

    def _shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class MultiprocessingPoolTarget(PeerTarget):
    """``multiprocessing.Pool(workers)``, one ``apply_async`` per message."""

    name = "multiprocessing.Pool"

    def _make(self) -> Any:
        import multiprocessing

        return multiprocessing.Pool(self.workers)

    def _submit(self, key: str, message_id: str, payload: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pool.apply_async(
            work,
            (key, message_id, payload),
            callback=_setter(future.set_result, future),
            error_callback=_setter(future.set_exception, future),
        )
        return future

    def _pids(self) -> list[int]:
        return [p.pid for p in list(self.pool._pool) if p.pid is not None]

    def _shutdown(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _setter(how: Callable[[Any], None], future: concurrent.futures.Future[Any]) -> Any:
    def set_(value: Any) -> None:
        if not future.done():
            how(value)

    return set_


class LokyTarget(PeerTarget):
    """loky's reusable executor, as its documentation has users do: ``get_reusable_executor``
    for every submit, so that after a crash the next call gets a working executor."""

    name = "loky"

    def _executor(self) -> Any:
        from loky import get_reusable_executor

        return get_reusable_executor(max_workers=self.workers, reuse=True)

    def _make(self) -> Any:
        return self._executor()

    def _submit(self, key: str, message_id: str, payload: Any) -> concurrent.futures.Future[Any]:
        self.pool = self._executor()
        return self.pool.submit(work, key, message_id, payload)

    def _pids(self) -> list[int]:
        return list(getattr(self.pool, "_processes", None) or ())

    def _shutdown(self) -> None:
        self.pool.shutdown(wait=True, kill_workers=True)
