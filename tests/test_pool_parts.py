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

from system import PayloadError, PoolBroken, PoolClosed, RestartPolicy, UsageError
from system._channel import MemoryChannel
from system._config import DEFAULTS, PoolConfig
from system._core import WorkerCore
from system._crew import Crew
from system._crewing import Crewing, StepDown
from system._demo import append_payload
from system._events import EventLog, read_events
from system._frames import Ack, Batch, Exit, Flush, Ready
from system._intake_writer import IntakeWriter
from system._ladder import Ladder
from system._lifecycle import Lifecycle, State
from system._router import Router
from system._runners import WorkerHandle
from system._supervisor import MAX_FAILED_STARTS, Supervisor
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


async def test_credits_come_back_when_work_is_applied_not_when_it_is_committed() -> None:
    r = router(workers=1, max_inflight=2, max_batch=2)
    r.route([row(i, 0) for i in range(6)])
    lane = r.lanes[0]
    ours, theirs = MemoryChannel.pair()
    r.open(lane, ours, lambda: None)
    dispatcher = asyncio.create_task(r.run())
    assert [m[0] for m in (await theirs.recv()).messages] == [0, 1]
    await asyncio.sleep(0.01)
    assert len(lane.unsent) == 4  # no credit left: nothing more sent
    r.applied(lane, 1)  # applied, not yet checkpointed: the credits come back
    assert [m[0] for m in (await theirs.recv()).messages] == [2, 3]
    assert [m[0] for m in lane.applied] == [0, 1] and r.tally.committed == 0
    assert r.ack(lane, 2) == 3  # a checkpoint covers the applied ones and one in flight
    assert [m[0] for m in lane.inflight] == [3] and not lane.applied
    r.applied(lane, 3)
    await theirs.recv()
    assert r.close(lane) == 3  # a death: applied-but-uncommitted ones are sent again too
    assert [m[0] for m in lane.unsent] == [3, 4, 5] and lane.unsent[0][5] == 2
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
            take_spare=lambda spec: None,
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


async def test_spares_that_die_before_they_serve_are_no_failed_starts(crews) -> None:
    """A taken spare that dies before its Ready (the kill that took the worker took it too)
    says nothing of starting a worker: the next one is launched, and the pool stays up."""
    spares, launch, ended = FakeWorker(ready=False), FakeWorker(), []
    crew = crews(launch, ended)
    left = [MAX_FAILED_STARTS + 1]

    def take_spare(spec: WorkerSpec) -> WorkerHandle | None:
        if left[0] <= 0:
            return None
        left[0] -= 1
        return spares.handles[-1] if spares.handles else None

    for _ in range(MAX_FAILED_STARTS + 1):
        await spares(WorkerSpec(append_payload, "d", 0, (0,)))
    crew.take_spare = take_spare
    sup = crews.supervisor(crew)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    assert ended == [] and sup.failed_starts == 0 and len(launch.handles) == 1
    crew.stopping = True
    sup.stop()
    launch.handles[-1].kill()
    await asyncio.wait_for(running, 5)


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


# -- intake writer -----------------------------------------------------------------------------
@pytest.fixture
def intake(tmp_path: Path):
    from system._intake import IntakeLog

    log = IntakeLog(tmp_path, 4, durability="process")
    yield log
    log.close()


@pytest.fixture
async def writing(intake, tmp_path: Path, request):
    """A running intake writer over ``router(**request.param)``: ``(router, writer)``."""
    r = router(**request.param)
    events = EventLog(tmp_path / "events.jsonl")
    writer = IntakeWriter(intake, r, events, PoolConfig())
    running = asyncio.create_task(writer.run())
    yield r, writer
    running.cancel()
    writer.close()
    events.close()


@pytest.mark.parametrize("writing", [{"max_outstanding": 100}], indirect=True)
async def test_the_intake_writer_logs_once_per_id_in_one_group_commit(intake, writing) -> None:
    r, writer = writing

    def never_closed() -> None:
        pass

    first, again = await asyncio.gather(
        writer.submit([writer.prepare("a", 1, "x"), writer.prepare("b", 2, None)], never_closed),
        writer.submit([writer.prepare("a", 1, "x")], never_closed),  # the same id: a no-op
    )
    assert first == [0, 1] and again == [0]
    assert sum(len(lane.unsent) for lane in r.lanes) == 2 and r.tally.submitted == 2
    assert r.tally.outstanding == 2 and not r.tally.idle.is_set()
    with pytest.raises(PayloadError, match="over max_payload_bytes"):
        IntakeWriter(intake, r, writer.events, PoolConfig(max_payload_bytes=4)).prepare(
            "a", "x" * 10, None
        )


@pytest.mark.parametrize("writing", [{"max_outstanding": 100}], indirect=True)
async def test_prepare_many_is_prepare_for_each_item_and_refuses_alike(intake, writing) -> None:
    """submit_many's inlined path: the same entries as prepare, the same refusals -- also for a
    key it has seen, whose partition it keeps."""
    r, _ = writing
    writer = IntakeWriter(intake, r, EventLog(intake.path.parent / "e.jsonl"), PoolConfig(
        max_payload_bytes=64))  # fmt: skip
    items = [("a", 1, "x"), ("b", [2]), ("a", "three")]
    for _ in range(2):  # the second time, every key is known
        many = writer.prepare_many(items)
        one = [writer.prepare(*item) if len(item) == 3 else writer.prepare(*item, None)
               for item in items]  # fmt: skip
        assert [e[1:] for e in many] == [e[1:] for e in one] and many[0][0] == "x"
        assert many[1][0] == one[1][0] == "" and many[1][4]  # generated at the append
    minted = f"{intake.id_prefix}-{intake.next_offset + 3}"  # the pool's form, an offset ahead
    for prepare in (writer.prepare_many, lambda items: [writer.prepare(*i) for i in items]):
        with pytest.raises(UsageError, match=r"which it has not given yet.*nothing was written"):
            prepare([("a", 1, minted)])  # "a" known: prepare_many's inlined path
    with pytest.raises(PayloadError, match="over max_payload_bytes=64"):
        writer.prepare_many([("a", 1), ("a", "x" * 100)])
    with pytest.raises(PayloadError, match="cannot be pickled"):
        writer.prepare_many([("a", lambda: 1)])
    with pytest.raises(UsageError, match="id must be a str or None"):
        writer.prepare_many([("a", 1, 7)])
    with pytest.raises(UsageError, match="key must be a str"):
        writer.prepare_many([(3, 1)])
    with pytest.raises(UsageError, match="got 1 values"):
        writer.prepare_many([("a",)])
    writer.events.close()


@pytest.mark.parametrize("writing", [{"max_outstanding": 1}], indirect=True)
async def test_a_submit_waits_while_max_outstanding_are_not_committed(writing) -> None:
    r, writer = writing
    await writer.submit([writer.prepare("a", 1, None)], lambda: None)
    second = asyncio.create_task(writer.submit([writer.prepare("a", 2, None)], lambda: None))
    await asyncio.sleep(0.05)
    assert not second.done()  # backpressure: one outstanding, none committed
    r.lanes[r.lane_of_key("a").index].inflight.append(r.lane_of_key("a").unsent.popleft())
    r.ack(r.lane_of_key("a"), 0)
    assert await asyncio.wait_for(second, 5) == [1]


# -- crew: a new rung, poison marks following their messages -----------------------------------
async def test_a_reconfiguration_moves_every_message_and_its_poison_mark(tmp_path: Path) -> None:
    config = PoolConfig(workers=2, partitions=4, mode="inline")
    r = Router(config, 2, 4, Tally(config.max_outstanding))
    events = EventLog(tmp_path / "events.jsonl")
    launch, broken = FakeWorker(), []
    crew = Crew(
        config=config,
        router=r,
        events=events,
        restart=RestartPolicy(base=0.001, cap=0.001),
        data_dir=tmp_path,
        spec=lambda mode, lane, cell, poison: WorkerSpec(append_payload, str(tmp_path), 0, (0,)),
        launch=lambda mode, spec: launch(spec),
        ladder=Ladder(cooldown=None),
        on_broken=broken.append,
    )
    r.route([row(0, 1), row(1, 3), row(2, 0)])  # offsets 0 and 1 on lane 1
    crew.start("inline")
    crew.supervisors[1].poison[1] = "in flight during 3 deaths"
    await crew.reconfigure("thread", 1, reason="test", kind="degraded")
    assert crew.mode == "thread" and len(crew.supervisors) == 1
    assert [m[0] for m in r.lanes[0].unsent] == [0, 1, 2]
    assert crew.supervisors[0].poison == {1: "in flight during 3 deaths"}
    (step,) = [e for e in read_events(tmp_path) if e["kind"] == "degraded"]
    assert (step["was_workers"], step["workers"], step["replaying"]) == (2, 1, 3)
    crew.halt()
    for handle in launch.handles:
        handle.kill()
    await crew.stop(5.0)
    await crew.cancel()
    events.close()
    assert broken == []


# -- watch: hung by silence, on a fake clock -----------------------------------------------------
async def test_a_worker_silent_for_hang_timeout_is_hung_once(crews, monkeypatch) -> None:
    from system import _watch

    stopped: list[dict[str, Any]] = []

    async def stop_hung(handle: WorkerHandle, index: int, **how: Any) -> None:
        stopped.append(how)

    monkeypatch.setattr(_watch, "stop_hung", stop_hung)
    launch, ended = FakeWorker(), []
    crew = crews(launch, ended)
    sup = crews.supervisor(crew)
    running = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    timeout = crew.config.hang_timeout
    _watch.check(sup, now=100.0)  # first sight of its progress cell
    sup.cell.cells[2] += 1  # its loop ticked: alive
    _watch.check(sup, now=100.0 + timeout)
    assert not sup.hanging
    _watch.check(sup, now=100.0 + 2 * timeout + 0.1)  # silent for longer than hang_timeout
    _watch.check(sup, now=100.0 + 3 * timeout)  # told once, not again
    await asyncio.sleep(0)
    assert sup.hanging and len(stopped) == 1
    assert stopped[0]["silence"] > timeout and stopped[0]["hang_timeout"] == timeout
    crew.stopping = True
    launch.handles[0].kill()
    await asyncio.wait_for(running, 5)


# -- events: rotated by size, read back in order -------------------------------------------------
def test_the_event_log_rotates_by_size_and_reads_back_in_order(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", max_bytes=600, keep=2)
    for i in range(200):
        log.emit("tick", None, None, seq=i)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 3 * (600 + 200)
    seqs = [e["seq"] for e in read_events(tmp_path)]
    assert seqs == list(range(seqs[0], 200)) and seqs[0] > 0  # the newest, contiguous, in order


def test_compaction_removes_only_what_is_committed_and_out_of_the_window(intake) -> None:
    for b in range(10):  # group commit b: offsets 10b..10b+9, all of partition b % 4
        batch = [row(i, b % 4) for i in range(10 * b, 10 * b + 10)]
        intake.append(batch, [(r[1], r[0]) for r in batch])
    committed = {0: 99, 1: 99, 2: 25}  # partition 3: never committed
    replay = list(intake.read_after(committed, 4))
    # Under 80: batches 0..7. Committed whole: 0 and 4 (partition 0), 1 and 5 (partition 1);
    # batch 2 only up to 25 of 29, 6 and the partition-3 ones not at all.
    assert intake.compact(committed, below=80) == 40
    assert intake.count() == 60
    assert intake.compacted_through() == {0: 49, 1: 59}  # what it deleted, no more
    assert list(intake.read_after(committed, 4)) == replay  # a replay misses nothing
    assert intake.existing(["m96", "m20"]) == {"m96": 96, "m20": 20}  # kept: known
    assert intake.existing(["m4", "m15", "m30"]) == {"m30": 30}  # m4, m15 are gone
    assert intake.compact(committed, below=80) == 0  # what is left stays, until committed


# -- the warm spare --------------------------------------------------------------------------------
async def test_the_spare_is_handed_a_lane_and_replaced_and_one_that_dies_is_too(
    monkeypatch,
) -> None:
    from system import _spare

    monkeypatch.setattr(_spare, "PAUSE", 0.01)
    launch = FakeWorker()
    spare = _spare.Spare(
        launch=lambda: launch(WorkerSpec(append_payload, "d", -1, ())), wanted=lambda: True
    )

    async def nothing() -> None:
        pass

    spare.start_once(nothing)
    while spare.handle is None:
        await asyncio.sleep(0.001)
    first = spare.handle
    lane_spec = WorkerSpec(append_payload, "d", 3, (3,))
    assert spare.take(lane_spec) is first and spare.handle is None
    assign = await launch.theirs[0].recv()
    assert assign.spec == lane_spec
    while spare.handle is None:  # another one, at once
        await asyncio.sleep(0.001)
    second = spare.handle
    second.kill()  # dies unused: replaced after a pause
    while spare.handle in (None, second):
        await asyncio.sleep(0.001)
    await spare.close()
    assert len(launch.handles) == 3 and all(h.exited.done() for h in launch.handles[1:])
