"""The pool's parts, one by one, without a worker process: fake launches, fake clocks."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from system import PoolBroken, PoolClosed, RestartPolicy, UsageError
from system._channel import MemoryChannel
from system._config import DEFAULTS, PoolConfig
from system._core import WorkerCore
from system._demo import append_payload
from system._events import EventLog, read_events
from system._frames import Ack, Batch, Exit, Flush, Ready
from system._ladder import Ladder
from system._lifecycle import Lifecycle, State
from system._router import Router
from system._runners import WorkerHandle
from system._supervisor import MAX_FAILED_STARTS, Crewing, StepDown, Supervisor
from system._tally import Tally
from system._worker import WorkerSpec

pytestmark = pytest.mark.timeout(10)


def row(offset: int, partition: int, payload: object = None) -> tuple:
    return (offset, f"m{offset}", f"k{offset}", partition, pickle.dumps(payload or offset))


# -- config ----------------------------------------------------------------------------------
def test_config_names_where_a_bad_value_came_from() -> None:
    with pytest.raises(UsageError, match=r"^Pool\(\): workers must be an int >= 1; got 0"):
        PoolConfig.create("Pool()", workers=0)
    with pytest.raises(UsageError, match=r"^\[tool\]: heartbeat_interval must be > 0 and at most"):
        PoolConfig.create("[tool]", heartbeat_interval=5.0, hang_timeout=1.0)
    with pytest.raises(UsageError, match=r"unknown setting 'wokers'; did you mean 'workers'\?"):
        PoolConfig.create("Pool()", wokers=2)
    with pytest.raises(UsageError, match="retries must be >= 0; got -1"):
        PoolConfig(retries=-1)
    assert PoolConfig.create("x", workers=2).replace(max_batch=7).max_batch == 7


def test_the_worker_side_takes_its_defaults_from_the_config() -> None:
    core = WorkerCore(append_payload, store=None, partitions=[0])
    assert (core.checkpoint_every, core.retries) == (DEFAULTS.checkpoint_every, DEFAULTS.retries)
    assert WorkerSpec(append_payload, "d", 0, (0,)).config == DEFAULTS


# -- frames ----------------------------------------------------------------------------------
def test_an_exit_in_words_and_as_an_event() -> None:
    assert Exit.of_status(-9).text() == "SIGKILL(-9)"
    assert Exit.of_status(1).as_event() == {"exitcode": 1, "signal": None}
    assert Exit.failed("abandoned").text() == "no exit code (abandoned)"
    assert Exit(0, recycled="rss").as_event() == {"exitcode": 0, "signal": None, "recycled": "rss"}


# -- router ----------------------------------------------------------------------------------
def router(workers: int = 2, partitions: int = 4, **config: Any) -> Router:
    c = PoolConfig(workers=workers, partitions=partitions, **config)
    return Router(c, workers, partitions, Tally(c.max_outstanding))


async def test_the_router_sends_by_partition_and_pops_what_an_ack_covers() -> None:
    r = router(max_batch=2)
    r.route([row(0, 0), row(1, 1), row(2, 2), row(3, 0)])
    assert [m[0] for m in r.lane_of(0).unsent] == [0, 2, 3]  # partitions 0 and 2: lane 0
    assert r.tally.outstanding == 4
    ours, theirs = MemoryChannel.pair()
    r.open(r.lanes[0], ours, lambda: None)
    dispatcher = asyncio.create_task(r.run())
    first, second = await theirs.recv(), await theirs.recv()
    assert [m[0] for m in first.messages] == [0, 2] and [m[0] for m in second.messages] == [3]
    assert r.ack(r.lanes[0], 2) == 2 and r.tally.committed == 2
    assert [m[0] for m in r.lanes[0].inflight] == [3]
    # A death: what was in flight goes back in front, its attempt counted.
    assert r.close(r.lanes[0]) == 1
    assert r.lanes[0].unsent[0][5] == 2 and r.lanes[0].channel is None
    dispatcher.cancel()


async def test_a_drain_asks_a_worker_with_work_in_flight_to_flush() -> None:
    r = router()
    r.route([row(0, 0)])
    ours, theirs = MemoryChannel.pair()
    r.draining = 1
    r.open(r.lanes[0], ours, lambda: None)
    dispatcher = asyncio.create_task(r.run())
    assert type(await theirs.recv()) is Batch and type(await theirs.recv()) is Flush
    dispatcher.cancel()


def test_regrouping_keeps_every_message_in_offset_order() -> None:
    r = router(workers=2, partitions=4)
    r.route([row(i, i % 4) for i in range(8)])
    r.lanes[1].inflight.append(r.lanes[1].unsent.popleft())
    moved = r.regroup(1)
    assert [m[0] for m in moved] == list(range(8)) and len(r.lanes) == 1
    assert [m[0] for m in r.lanes[0].unsent] == list(range(8))


def test_a_batch_stops_at_max_batch_bytes_but_takes_at_least_one() -> None:
    r = router(max_batch_bytes=10)
    r.route([row(0, 0, b"x" * 20), row(1, 0, b"y")])
    assert len(r.take(r.lanes[0].unsent, 5)) == 1


# -- ladder and lifecycle --------------------------------------------------------------------
def test_the_ladder_steps_down_and_climbs_back_after_a_doubling_cooldown() -> None:
    ladder = Ladder(cooldown=10.0)
    assert ladder.below(("process", 4)) == ("process", 2)
    assert ladder.below(("inline", 1)) is None
    ladder.stepped_down(("process", 4))
    ladder.stepped_down(("process", 2))
    assert ladder.climb_due(now=119.0, since=100.0) is None  # 2 steps: 20 s
    assert ladder.climb_due(now=120.0, since=100.0) == ("process", 2)
    assert Ladder(cooldown=None).climb_due(1e9, 0.0) is None


async def test_the_lifecycle_refuses_what_its_state_does_not_allow() -> None:
    life = Lifecycle()
    with pytest.raises(UsageError, match="not started"):
        life.check_open()
    life.move(State.OPEN)
    life.check_open()
    ready = asyncio.Event()
    waiting = asyncio.create_task(life.until(ready))
    await asyncio.sleep(0)
    life.end(PoolBroken("no rung left"))
    with pytest.raises(PoolBroken, match="no rung left"):
        await waiting
    life.end(PoolClosed("later"))  # the first end counts
    with pytest.raises(PoolBroken):
        life.check_open()
    with pytest.raises(RuntimeError, match="from open to closed"):
        life.move(State.CLOSED)


# -- core: a retry's backoff through the injected sleep --------------------------------------
def test_a_retry_backs_off_through_the_injected_sleep(tmp_path: Path) -> None:
    from system._checkpoint import CheckpointStore

    slept: list[float] = []

    def flaky(state: Any, message: Any) -> Any:
        raise RuntimeError("no")

    c = WorkerCore(flaky, CheckpointStore(tmp_path), [0], retries=2, sleep=slept.append)
    c.start()
    c.apply([(0, "m0", "k", 0, pickle.dumps(0), 1)])
    assert slept == [DEFAULTS.retry_backoff, 2 * DEFAULTS.retry_backoff]
    c.store.close()


# -- supervisor, with a fake launch ----------------------------------------------------------
class FakeWorker:
    """A launch that starts no process: each worker is a task on a memory channel."""

    def __init__(self, ready: bool = True, refuse: OSError | None = None):
        self.ready, self.refuse = ready, refuse
        self.handles: list[WorkerHandle] = []
        self.theirs: list[MemoryChannel] = []  # each worker's end of its channel

    async def __call__(self, spec: WorkerSpec) -> WorkerHandle:
        if self.refuse is not None:
            raise self.refuse
        loop = asyncio.get_running_loop()
        ours, theirs = MemoryChannel.pair()
        exited: asyncio.Future[Exit] = loop.create_future()

        def kill() -> None:
            theirs.close()
            if not exited.done():
                exited.set_result(Exit.of_status(-9))

        if self.ready:
            theirs.send_nowait(Ready(os.getpid(), {}))
        else:
            kill()  # dies before it is ready
        handle = WorkerHandle("inline", os.getpid(), ours, exited, kill)
        self.handles.append(handle)
        self.theirs.append(theirs)
        return handle


class Crews:
    """Crews for the supervisor tests; their event logs and progress cells closed after."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.made: list[Crewing] = []
        self.supervisors: list[Supervisor] = []

    def __call__(self, launch: Callable[..., Any], ended: list[Any]) -> Crewing:
        config = PoolConfig(workers=1, partitions=1)
        r = Router(config, 1, 1, Tally(config.max_outstanding))
        d = self.tmp_path
        crew = Crewing(
            config,
            "inline",
            r,
            EventLog(d / "events.jsonl"),
            RestartPolicy(base=0.001, cap=0.001),
            d,
            spec=lambda lane, cell, poison: WorkerSpec(append_payload, str(d), 0, (0,)),
            launch=launch,
            ended=lambda sup, outcome: ended.append(outcome),
        )
        self.made.append(crew)
        return crew

    def supervisor(self, crew: Crewing, **kw: Any) -> Supervisor:
        sup = Supervisor(crew, crew.router.lanes[0], **kw)
        self.supervisors.append(sup)
        return sup


@pytest.fixture
def crews(tmp_path: Path):
    made = Crews(tmp_path)
    yield made
    for sup in made.supervisors:
        sup.cell.close()
    for crew in made.made:
        crew.events.close()


async def test_a_dead_worker_is_replaced_and_its_work_sent_again(crews, tmp_path: Path) -> None:
    launch, ended = FakeWorker(), []
    crew = crews(launch, ended)
    crew.router.route([row(0, 0)])
    sup = crews.supervisor(crew)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    crew.router.lanes[0].inflight.append(crew.router.lanes[0].unsent.popleft())
    launch.handles[0].kill()
    while len(launch.handles) < 2 or not sup.ready.is_set():
        await asyncio.sleep(0.001)
    assert crew.router.lanes[0].unsent[0][5] == 2  # back in front, second attempt
    crew.stopping = True
    sup.stop()
    launch.handles[-1].kill()
    await asyncio.wait_for(running, 5)
    kinds = [e["kind"] for e in read_events(tmp_path)]
    assert kinds[:5] == ["started", "ready", "died", "started", "restarted"]
    died = next(e for e in read_events(tmp_path) if e["kind"] == "died")
    assert died["signal"] == "SIGKILL(-9)" and died["inflight"] == 1
    assert ended == [] and sup.restarts == 1


async def test_workers_that_never_get_ready_step_the_rung_down(crews) -> None:
    ended: list[Any] = []
    crew = crews(FakeWorker(ready=False), ended)
    await asyncio.wait_for(crews.supervisor(crew).run(), 5)
    (step,) = ended
    assert isinstance(step, StepDown)
    assert f"died before it was ready {MAX_FAILED_STARTS} times in a row" in step.reason


async def test_a_refused_spawn_steps_down_at_once(crews) -> None:
    ended: list[Any] = []
    refused = OSError(errno.EAGAIN, "no more processes")
    crew = crews(FakeWorker(refuse=refused), ended)
    await asyncio.wait_for(crews.supervisor(crew).run(), 5)
    assert ended[0].error is refused and "starting worker 0 failed" in ended[0].reason


async def test_an_ack_pops_the_work_and_clears_its_poison_mark(crews, tmp_path: Path) -> None:
    launch, ended = FakeWorker(), []
    crew = crews(launch, ended)
    sup = crews.supervisor(crew, poison={0: "poison"})
    crew.router.route([row(0, 0)])
    running = asyncio.create_task(sup.run())
    dispatcher = asyncio.create_task(crew.router.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    assert type(await asyncio.wait_for(launch.theirs[0].recv(), 5)) is Batch
    launch.theirs[0].send_nowait(Ack(0, {0: 0}, [("m0", 0, "poison")]))
    while crew.router.tally.committed < 1:
        await asyncio.sleep(0.001)
    assert sup.poison == {}
    crew.stopping = True
    launch.handles[0].kill()
    await asyncio.wait_for(running, 5)
    dispatcher.cancel()
    assert [e["id"] for e in read_events(tmp_path) if e["kind"] == "dead_lettered"] == ["m0"]
