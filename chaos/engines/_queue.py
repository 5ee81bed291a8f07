"""What every task-queue target shares: its Redis servers, its supervised worker, the evidence.

A ``QueueTarget`` starts two Redis servers of its own (``RedisServer``): the *broker* its
engine carries messages through, and the *store* its task commits to -- an append of the
message id to the key's list, as a team's task writes to its database, so that a broker fault
never touches what was committed. It starts the engine's worker command in a process group of
its own, under a supervisor that starts it again when it dies (as systemd's ``Restart=always``
would; at most ``MAX_RESTARTS`` times), and waits for the line that says it is ready.

The evidence is the harness's own: ``committed()`` is read from the store; work acknowledged
(its publish returned) and not committed after ``collect_timeout`` is placed from the broker's
own lists (``where``: queued, unacknowledged or started, running in a live process, or
nowhere); what is still somewhere is ``outstanding`` (the cell is hung, with py-spy dumps of
the workers), what is nowhere is lost, by the checker. The task marks the pid running each
message in the store as it begins (``RUNNING``), and clears it as it commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .._errors import BlastRadiusError, ChaosError
from .._process_faults import Injected, send_signal
from .._processes import descendants, is_gone, wait_gone
from .._stacks import StackDump, dump_stacks
from .redis_server import RedisServer

COMMITTED = "chaosgate:committed:"  # + key: the key's list of committed message ids
RUNNING = "chaosgate:running"  # message id -> pid of the process running its task now
QUEUE = "chaosgate"
START_TIMEOUT = 30.0
MAX_RESTARTS = 10
# How long "never" is: past the engines' own timers for a death (Celery looks at its pool's
# children every 5 s: a killed one may be noticed only then), a redelivery, and a 1 s task.
COLLECT_TIMEOUT = 10.0
NOWHERE_GRACE = 1.0  # seconds all missing work must be nowhere before collection gives up
# Where work may wait, still somewhere (what is nowhere else is lost):
STUCK = (
    "queued", "intermediate", "unacknowledged", "started", "scheduled", "running", "unknown",
)  # fmt: skip


def commit(store: Any, key: str, message_id: str, payload: Any) -> Any:
    """The task's body, in every engine: mark, do what the payload asks, commit; the task's
    result (what the payload made ``workload.apply`` return) goes back to the engine."""
    from .. import workload

    store.hset(RUNNING, message_id, os.getpid())
    result = workload.apply(key, message_id, payload)
    store.pipeline().rpush(COMMITTED + key, message_id).hdel(RUNNING, message_id).execute()
    return result


class QueueTarget:
    name = "queue"
    capabilities = frozenset({"leak", "unordered", "broker"})
    ready_marker = b""  # what the worker's log says once it takes work
    config = "defaults"  # the engine's configuration (each engine names its own)
    not_applicable: dict[str, str] = {}  # the matrix families it cannot take, and why

    def __init__(
        self,
        data_dir: str | Path,
        workers: int = 2,
        *,
        aof: bool = False,
        collect_timeout: float = COLLECT_TIMEOUT,
        stop_timeout: float = 10.0,
        **_system_options: Any,  # options meant for the system pool (hang_timeout...)
    ):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.collect_timeout = collect_timeout
        self.stop_timeout = stop_timeout
        self.broker = RedisServer(self.data_dir, aof=aof, name="broker")
        self.store = RedisServer(self.data_dir, name="store")
        self.outstanding: list[str] = []
        self.failures: dict[str, str] = {}
        self.first_failure: float | None = None
        self.stop_blocked = False
        self.dumps: list[StackDump] = []
        self.where_left: dict[str, str] = {}  # id -> where it was when collection gave up
        self.restarts = 0
        self._acked: list[str] = []
        self._given_up: set[str] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._lifecycle = threading.Lock()  # a restart and a stop never overlap
        self._supervisor: threading.Thread | None = None
        self._publisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="publish")
        self._seen: dict[int, psutil.Process] = {}  # every process of the worker ever seen
        self._owns_servers = True

    # --- what each engine does differently -----------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return {}

    def _publish(self, key: str, message_id: str, payload: Any) -> None:
        raise NotImplementedError

    def _placed(self) -> dict[str, str]:
        """Message id -> "queued" / "unacknowledged" / "started", from the broker's lists."""
        raise NotImplementedError

    def _twin(self) -> QueueTarget:
        """The same target, configured alike, on no servers yet (``again`` gives it these)."""
        return type(self)(
            self.data_dir, self.workers, config=self.config,
            collect_timeout=self.collect_timeout, stop_timeout=self.stop_timeout,
        )  # fmt: skip

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._owns_servers:
            await asyncio.to_thread(self.broker.start)
            await asyncio.to_thread(self.store.start)
        import redis

        self._store = redis.Redis.from_url(self.store.url, socket_timeout=10)
        self._broker = redis.Redis.from_url(self.broker.url, socket_timeout=2)
        await asyncio.to_thread(self._connect)
        await asyncio.to_thread(self._spawn)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="supervise")
        self._supervisor.start()

    def _connect(self) -> None:
        """The engine's client side, for publishing (called once the broker runs)."""

    def _spawn(self) -> None:
        """Start the worker and wait until its log says it is ready (``ChaosError`` past
        ``START_TIMEOUT`` s, or if a stop began meanwhile: its processes are killed)."""
        log_path = self.data_dir / "worker.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        env = {**os.environ, **self._environment()}
        here = str(Path(__file__).resolve().parents[2])  # chaosgate's own chaos, first
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", *self._command()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: the whole worker, signalled
            )  # fmt: skip
        self._note(self._proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with open(log_path, "rb") as f:
                f.seek(start)
                if self.ready_marker in f.read():
                    return
            if self._proc.poll() is not None or time.monotonic() > deadline or self._stopping:
                tail = log_path.read_text(errors="replace").splitlines()[-8:]
                self._kill_tree()
                raise ChaosError(
                    f"the {self.name} worker did not come up within {START_TIMEOUT:g} s (exit "
                    f"{self._proc.returncode}): " + " | ".join(tail)
                )
            time.sleep(0.02)

    def _supervise(self) -> None:
        """Start the worker again when it dies, as a service manager would: what is left of
        the dead one is killed first (systemd kills what is left in the service's cgroup), and
        never once a stop has begun."""
        while self._proc is not None:
            self._proc.wait()
            time.sleep(0.1)  # systemd's RestartSec default
            with self._lifecycle:
                if self._stopping or self.restarts >= MAX_RESTARTS:
                    return
                self._kill_tree()  # the dead one's leftovers (RQ's orphaned workers)
                self.restarts += 1
                try:
                    self._spawn()
                except ChaosError:
                    return

    def _note(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            if pid not in self._seen:
                self._seen[pid] = psutil.Process(pid)

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def again(self) -> QueueTarget:
        """A new worker on the same broker and store, waiting for the same acknowledged work
        (a service started again after a stop); its ``stop()`` leaves the servers running."""
        twin = self._twin()
        twin.broker, twin.store, twin._owns_servers = self.broker, self.store, False
        twin._acked = list(self._acked)
        return twin

    # --- work ------------------------------------------------------------------------------

    async def submit(self, key: str, payload: Any, id: str) -> None:
        """Publish; acknowledged when the publish returns (raises: refused -- a payload the
        engine cannot encode, or a broker it cannot reach)."""
        await asyncio.wrap_future(self._publisher.submit(self._publish, key, id, payload))
        self._acked.append(id)

    async def committed_now(self) -> dict[str, list[Any]]:
        return await asyncio.to_thread(self._read)

    def _read(self) -> dict[str, list[Any]]:
        found = {}
        for name in self._store.scan_iter(match=COMMITTED + "*", count=1000):
            key = name.decode()[len(COMMITTED) :]
            found[key] = [m.decode() for m in self._store.lrange(name, 0, -1)]
        return found

    async def committed(self) -> dict[str, list[Any]]:
        """The store's lists, once every acknowledged message is in one, or all that is missing
        has been nowhere for ``NOWHERE_GRACE`` s (lost: nothing brings it back), or
        ``collect_timeout`` s have passed (a message given up on once is not waited for
        again: it counts if it came since); then what is missing is placed (``where``), and
        what is still somewhere is ``outstanding``."""
        deadline = time.monotonic() + self.collect_timeout
        gone_since: float | None = None  # since when all that is missing is nowhere
        looked = 0.0
        while True:
            state = await self.committed_now()
            done = {m for ids in state.values() for m in ids}
            missing = [m for m in self._acked if m not in done]
            now = time.monotonic()
            if set(missing) <= self._given_up or now > deadline:
                break
            if now - looked >= 0.2:  # nowhere for a second: no timer of the engine brings
                looked = now  # it back (a task between its ack and its mark: milliseconds)
                places = await asyncio.to_thread(self.where, missing)
                if any(w.split()[0] in STUCK for w in places.values()):
                    gone_since = None
                elif gone_since is None:
                    gone_since = now
                elif now - gone_since >= NOWHERE_GRACE:
                    break
            await asyncio.sleep(0.02)
        self._given_up.update(missing)  # "never" is known: not waited for again
        self.where_left = await asyncio.to_thread(self.where, missing) if missing else {}
        if self.where_left:  # what committed while it was being placed is not missing
            state = await self.committed_now()
            done = {m for ids in state.values() for m in ids}
            self.where_left = {m: w for m, w in self.where_left.items() if m not in done}
        stuck = [m for m, w in self.where_left.items() if w.split()[0] in STUCK]
        if stuck and not self.outstanding:  # newly stuck: where is everyone waiting?
            pids = self.worker_pids() + ([self.pid] if self._proc else [])
            self.dumps += [await asyncio.to_thread(dump_stacks, p, timeout=10.0) for p in pids]
        self.outstanding = stuck
        return state

    def where(self, ids: list[str]) -> dict[str, str]:
        """Where each id is now, by the broker's and the store's own lists: ``queued``,
        ``unacknowledged`` (back after the visibility timeout), ``started`` (in the engine's
        started registry), ``running in pid P`` (its task began there and that process
        lives), ``unknown`` (the broker cannot be read now), or ``nowhere``."""
        import redis

        try:
            placed = self._placed()
            elsewhere = "nowhere"
        except (redis.ConnectionError, redis.TimeoutError):  # down or frozen: not known
            placed, elsewhere = {}, "unknown"
        running = {k.decode(): int(v) for k, v in self._store.hgetall(RUNNING).items()}
        found = {}
        for mid in ids:
            if mid in running and not is_gone(running[mid]):
                found[mid] = f"running in pid {running[mid]}"
            else:
                found[mid] = placed.get(mid, elsewhere)
        return found

    def dead_lettered(self) -> list[str]:
        return []

    # --- stop ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Warm shutdown (SIGTERM) within ``stop_timeout``, else a dump and SIGKILL of every
        process the worker ever had; then the broker and the store, whatever happened."""
        try:
            self._stopping = True  # a start under way gives up at once (see _spawn)
            with self._lifecycle:  # and none begins from here on
                pass
            if self._proc is not None and self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(self._proc.wait, self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.stop_blocked = True
                    dump = await asyncio.to_thread(dump_stacks, self.pid, timeout=10.0)
                    self.dumps.append(dump)
        finally:
            await asyncio.to_thread(self._kill_tree)
            if self._supervisor is not None:
                await asyncio.to_thread(self._supervisor.join, 5.0)
            self._publisher.shutdown(wait=False, cancel_futures=True)
            if self._owns_servers:
                await asyncio.to_thread(self.broker.stop)
                await asyncio.to_thread(self.store.stop)

    def _kill_tree(self) -> None:
        """SIGKILL the worker's process group and every process of it ever seen still running
        (psutil checks each is the same process: a reused pid is never hit), and wait."""
        if self._proc is None:
            return
        for proc in descendants(self._proc.pid):  # (some leave the group: RQ's horses)
            self._note(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)  # its own group (start_new_session)
        for proc in self._seen.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)
        left = wait_gone(self._seen, 10.0)
        if left:
            raise ChaosError(f"the worker's processes {sorted(left)} survived SIGKILL for 10 s")

    def kill_whole(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> Injected:
        """``sig`` to every process of the worker at once (its process group), as a service
        manager stops a service -- not started again -- then wait until all are gone
        (``ChaosError`` naming survivors, which are SIGKILLed)."""
        assert self._proc is not None
        self._stopping = True
        with self._lifecycle:  # not started again (a start under way has given up)
            pass
        tree = {self.pid, *(p.pid for p in descendants(self.pid))}
        for pid in tree:
            self._note(pid)
        mono, ts = time.clock_gettime(time.CLOCK_MONOTONIC), time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        _signal_each(tree - {self.pid}, sig)  # as systemd signals its whole cgroup
        left = wait_gone(tree, timeout)
        if left:
            self._kill_tree()
            raise ChaosError(f"pids {sorted(left)} still alive {timeout:g} s after {sig!r}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
        name = signal.Signals(sig).name
        return Injected("kill_whole", self.pid, mono, ts, {"signal": name, "pids": sorted(tree)})

    def _live_children(self, pid: int) -> list[psutil.Process]:
        try:
            kids = psutil.Process(pid).children()
        except psutil.Error:
            return []
        return [k for k in kids if not is_gone(k.pid)]


def _signal_each(pids: set[int], sig: int) -> None:
    """``sig`` to each pid through the blast-radius guard (one already gone is skipped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, BlastRadiusError):
            send_signal(pid, sig)
