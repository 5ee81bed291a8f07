"""What every task-queue target shares: its Redis servers, its supervised worker, the evidence.

A ``QueueTarget`` starts two Redis servers of its own (``RedisServer``): the *broker* its
engine carries messages through, and the *store* its task commits to -- an append of the
message id to the key's list, as a team's task writes to its database, so that a broker fault
never touches what was committed. It runs the engine's worker command as a service
(``chaos.engines._service``: in a process group of its own, under a supervisor that starts it
again when it dies, as systemd's ``Restart=always`` would), and waits until it is ready.

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
import time
from pathlib import Path
from typing import Any

from .._errors import ChaosError
from .._process_faults import Injected
from .._processes import is_gone
from .._stacks import StackDump, dump_stacks
from ..hosts import Hosts, LeftBehind
from ._service import Service
from .redis_server import RedisServer

COMMITTED = "chaosgate:committed:"  # + key: the key's list of committed message ids
RUNNING = "chaosgate:running"  # message id -> pid of the process running its task now
QUEUE = "chaosgate"
# How long "never" is: past the engines' own timers for a death (Celery looks at its pool's
# children every 5 s: a killed one may be noticed only then), a redelivery, and a 1 s task.
COLLECT_TIMEOUT = 10.0
NOWHERE_GRACE = 1.0  # seconds all missing work must be nowhere before collection gives up
FINAL = ("erred",)  # where the engine has given up on a message: nothing brings it back
# Where work may wait, still somewhere (what is nowhere else is lost):
STUCK = (
    "queued", "intermediate", "unacknowledged", "started", "scheduled", "running", "unknown",
    "pending",
)  # fmt: skip


def commit(store: Any, key: str, message_id: str, payload: Any) -> Any:
    """The task's body, in every engine: mark, do what the payload asks, commit; the task's
    result (what the payload made ``workload.apply`` return) goes back to the engine."""
    from .. import workload

    store.hset(RUNNING, message_id, os.getpid())
    result = workload.apply(key, message_id, payload)
    store.pipeline().rpush(COMMITTED + key, message_id).hdel(RUNNING, message_id).execute()
    return result


def _text(reply: bytes | str) -> str:
    """A Redis reply as text (bytes: the harness's clients decode none; typed ``bytes | str``)."""
    return reply.decode() if isinstance(reply, bytes) else reply


class QueueTarget:
    name = "queue"
    kinds = frozenset({"leak", "unordered", "broker"})  # what it can take (+ "hosts" across)
    coordinator = "broker"  # across hosts: the host every worker depends on
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
        across_hosts: bool = False,
        **_system_options: Any,  # options meant for the system pool (hang_timeout...)
    ):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.collect_timeout = collect_timeout
        self.stop_timeout = stop_timeout
        self.across_hosts = across_hosts
        self.aof = aof
        self.hosts: Hosts | None = None  # the test hosts, across hosts (made at start)
        self.broker: RedisServer | None = RedisServer(self.data_dir, aof=aof, name="broker")
        self.store = RedisServer(self.data_dir, name="store")
        self.outstanding: list[str] = []
        self.failures: dict[str, str] = {}
        self.first_failure: float | None = None
        self.stop_blocked = False
        self.dumps: list[StackDump] = []
        self.where_left: dict[str, str] = {}  # id -> where it was when collection gave up
        self._acked: list[str] = []
        self._given_up: set[str] = set()
        self.services: list[Service] = []  # the worker (one per worker host, across hosts)
        self._publisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="publish")
        self._owns_servers = True

    # --- what each engine does differently -----------------------------------------------

    def _command(self, host: str | None = None) -> list[str]:
        """The worker's command (``python -m``); across hosts, the one on worker host ``host``."""
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
            across_hosts=self.across_hosts,
        )  # fmt: skip

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def _services(self) -> list[Service]:
        """The worker as a service: one on this machine, or across hosts one on each worker
        host (``_command(host)``: the worker there)."""
        env = self._environment()
        if self.hosts is None:
            log = self.data_dir / "worker.log"
            return [Service(f"the {self.name} worker", self._command(), log, self.ready_marker,
                            env=env)]  # fmt: skip
        return [
            Service(
                f"the {self.name} worker on {host}",
                self._command(host),
                self.data_dir / f"worker-{host}.log",
                self.ready_marker,
                env=env,
                hosts=self.hosts,
                host=host,
            )
            for host in self.worker_hosts()
        ]

    @property
    def capabilities(self) -> frozenset[str]:
        return self.kinds | ({"hosts"} if self.across_hosts else set())

    def host_of(self, pid: int) -> str:
        """The worker host whose namespace ``pid`` is in (the kernel's word)."""
        assert self.hosts is not None, "not across hosts, or not started"
        for host in self.worker_hosts():
            if pid in self.hosts.pids(host):
                return host
        raise ChaosError(f"pid {pid} is in none of the worker hosts")

    def host_names(self) -> list[str]:
        """The test hosts across hosts: the broker's, then each worker's."""
        return ["broker", *self.worker_hosts()]

    def worker_hosts(self) -> list[str]:
        return [f"w{i + 1}" for i in range(self.workers)]

    def _make_hosts(self) -> None:
        """Across hosts: the hosts, the broker inside its own, the store at the harness's end
        of the bridge (every host reaches it: what is committed is read as the harness sees
        it, whatever the partition)."""
        self.hosts = Hosts(self.host_names())
        if self.broker is not None:
            self.broker = RedisServer(
                self.data_dir, aof=self.aof, name="broker", hosts=self.hosts, host="broker"
            )
        self.store = RedisServer(self.data_dir, name="store", address=self.hosts.harness.address)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """The servers, the hosts across hosts, the worker; a start that fails leaves nothing
        (``stop``: every process, server and host it made)."""
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> None:
        if self.across_hosts and self._owns_servers:
            await asyncio.to_thread(self._make_hosts)
        if self._owns_servers:
            if self.broker is not None:
                await asyncio.to_thread(self.broker.start)
            await asyncio.to_thread(self.store.start)
        import redis

        self._store = redis.Redis.from_url(self.store.url, socket_timeout=10)
        if self.broker is not None:
            self._broker = redis.Redis.from_url(self.broker.url, socket_timeout=2)
        await asyncio.to_thread(self._connect)
        await asyncio.to_thread(self._spawn)

    def _connect(self) -> None:
        """The engine's client side, for publishing (called once the broker runs)."""

    def _spawn(self) -> None:
        """Start the worker's services, each under its supervisor, and wait until each is
        ready (``ChaosError`` past ``START_TIMEOUT`` s; a stop under way: given up)."""
        self.services = self._services()
        for service in self.services:
            service.start()

    @property
    def pid(self) -> int:
        """The worker's main process (the first worker's, across hosts)."""
        assert self.services, "not started"
        return self.services[0].pid

    @property
    def returncode(self) -> int | None:
        proc = self.services[0].proc if self.services else None
        return None if proc is None else proc.returncode

    @property
    def restarts(self) -> int:
        """How often a worker died and its supervisor started it again."""
        return sum(s.restarts for s in self.services)

    def again(self) -> QueueTarget:
        """A new worker on the same broker and store, waiting for the same acknowledged work
        (a service started again after a stop); its ``stop()`` leaves the servers running."""
        twin = self._twin()
        twin.broker, twin.store, twin._owns_servers = self.broker, self.store, False
        twin.hosts = self.hosts
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
            found[key] = [_text(m) for m in self._store.lrange(name, 0, -1)]
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
            pids = self.worker_pids() + [s.pid for s in self.services if not is_gone(s.pid)]
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
        running = {_text(k): int(v) for k, v in self._store.hgetall(RUNNING).items()}
        found = {}
        for mid in ids:
            if placed.get(mid) in FINAL:  # the engine gave up on it, whatever mark was left
                found[mid] = placed[mid]
            elif mid in running and not is_gone(running[mid]):
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
            for service in self._stop_order():
                if not await asyncio.to_thread(service.terminate, self.stop_timeout):
                    self.stop_blocked = True
                    dump = await asyncio.to_thread(dump_stacks, service.pid, timeout=10.0)
                    self.dumps.append(dump)
        finally:  # each step whatever the one before did; the hosts last, always
            steps: list[Any] = [self._kill_tree, *(lambda s=s: s.join(5.0) for s in self.services)]
            steps.append(lambda: self._publisher.shutdown(wait=False, cancel_futures=True))
            if self._owns_servers:
                steps += [self.broker.stop] if self.broker is not None else []
                steps.append(self.store.stop)
                steps += [self.hosts.close] if self.hosts is not None else []  # (LeftBehind)
            await _each(steps)

    def _stop_order(self) -> list[Service]:
        return list(self.services)

    def _kill_tree(self) -> None:
        """SIGKILL every process every worker service ever had (none is started again)."""
        for service in self.services:
            service.stop_supervising()
        errors = []
        for service in self.services:
            try:
                service.kill_tree()
            except ChaosError as e:
                errors.append(str(e))
        if errors:
            raise ChaosError("; ".join(errors))

    def kill_whole(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> Injected:
        """``sig`` to every process of every worker at once, as a service manager stops a
        service -- not started again -- then wait until all are gone (``ChaosError`` naming
        survivors, which are SIGKILLed)."""
        assert self.services, "not started"
        for service in self.services:
            service.stop_supervising()
        hits = [service.kill_whole(sig, timeout) for service in self.services]
        pids = sorted(p for hit in hits for p in hit.detail["pids"])
        first = hits[0]
        detail = {**first.detail, "pids": pids}
        return Injected("kill_whole", first.pid, first.mono, first.ts, detail)


async def _each(steps: list[Any]) -> None:
    """Run every step, in order, in one thread, whatever the ones before raised (shielded: a
    cancelled stop still tears everything down); then raise what the hosts' removal found
    left (``LeftBehind``) before any other error."""
    await asyncio.shield(asyncio.to_thread(_run_each, steps))


def _run_each(steps: list[Any]) -> None:
    errors: list[Exception] = []
    for step in steps:
        try:
            step()
        except Exception as e:
            errors.append(e)
    if errors:
        raise next((e for e in errors if isinstance(e, LeftBehind)), errors[0])
