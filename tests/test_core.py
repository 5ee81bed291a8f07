"""The worker core: apply in order, dedup replays, checkpoint on count/time, dead-letter poison."""

import pickle
from pathlib import Path

import pytest

from system import Message, Output
from system._checkpoint import CheckpointStore
from system._core import WorkerCore
from system._demo import append_payload
from system._frames import Ack, Rewind


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def wire(offset: int, key: str = "k", payload: object = None, part: int = 0) -> tuple:
    value = offset if payload is None else payload
    return (offset, f"m{offset}", key, part, pickle.dumps(value), 1)


def core(path: Path, handler=append_payload, **kw) -> WorkerCore:
    c = WorkerCore(handler, CheckpointStore(path), [0, 1], **kw)
    c.start()
    return c


def test_replay_after_a_crash_applies_each_message_once(tmp_path: Path) -> None:
    a = core(tmp_path)
    a.apply([wire(0), wire(1), wire(2, part=1, key="j")])
    assert a.checkpoint() == (2, {0: 1, 1: 2}, [])
    a.apply([wire(3), wire(4)])  # applied, never committed: the worker "dies" here
    b = core(tmp_path)  # the replacement
    assert b.applied == {0: 1, 1: 2}
    # The dispatcher resends everything unacknowledged, and some of what was acknowledged.
    assert b.apply([wire(1), wire(2, part=1, key="j"), wire(3), wire(4), wire(5)]) == []
    assert b.state_of("k") == [0, 1, 3, 4, 5]
    assert b.checkpoint() == (5, {0: 5}, [])
    assert CheckpointStore(tmp_path).load_state("k") == (True, [0, 1, 3, 4, 5])


def test_an_ack_covers_replayed_duplicates_even_with_nothing_to_commit(tmp_path: Path) -> None:
    a = core(tmp_path)
    a.apply([wire(0), wire(1)])
    a.checkpoint()
    b = core(tmp_path)
    assert b.apply([wire(0), wire(1)]) == []
    assert b.checkpoint_due() is not None  # the supervisor still waits for an ack of these
    assert b.checkpoint() == (1, {}, [])
    assert b.checkpoint() is None


def test_checkpoint_is_due_after_n_messages_or_t_seconds(tmp_path: Path) -> None:
    clock = Clock()
    c = core(tmp_path, checkpoint_every=3, checkpoint_interval=0.5, clock=clock)
    assert c.checkpoint_due() is None
    c.apply([wire(0)])
    assert c.checkpoint_due() == 0.5
    clock.now = 0.4
    assert c.checkpoint_due() == pytest.approx(0.1)
    c.apply([wire(1), wire(2)])
    assert c.checkpoint_due() == 0.0  # three uncommitted
    c.checkpoint()
    assert c.checkpoint_due() is None


def test_poison_is_dead_lettered_and_the_rest_goes_on(tmp_path: Path) -> None:
    def handler(state, message: Message):
        if message.payload == "boom":
            raise ValueError("bad payload")
        return Output((state or 0) + 1, f"done {message.id}")

    c = core(tmp_path, handler=handler)
    bad_pickle = (1, "m1", "k", 0, b"\x80\x05not a pickle", 1)
    # "boom" meets a clean key (nothing uncommitted for "j"): dead-lettered in place.
    frames = c.apply(
        [wire(0, payload=1), bad_pickle, wire(2, key="j", payload="boom"), wire(3, payload=3)]
    )
    assert frames == []
    c.checkpoint()
    store = CheckpointStore(tmp_path)
    assert store.load_state("k") == (True, 2)
    assert store.load_state("j") == (False, None)
    assert store.result("m3") == (True, "done m3")
    dead = {d["id"]: d for d in store.dead_letters()}
    assert set(dead) == {"m1", "m2"}
    assert "cannot be unpickled" in dead["m1"]["reason"]
    assert "handler raised ValueError('bad payload')" in dead["m2"]["reason"]
    assert "ValueError: bad payload" in dead["m2"]["traceback"]


def test_a_handler_that_damages_a_dirty_state_and_raises_is_replayed_clean(
    tmp_path: Path,
) -> None:
    def handler(state, message: Message):
        state = [] if state is None else state
        state.append(message.payload)  # in place, before deciding to fail
        if message.payload == "bad":
            raise ValueError("bad")
        return state

    c = core(tmp_path, handler=handler)
    c.apply([wire(0, payload=1)])
    assert c.checkpoint() == (0, {0: 0}, [])
    batch = [wire(1, payload=2), wire(2, payload="bad"), wire(3, payload=4)]
    # m2 raised after appending to a state holding m1's uncommitted append: ask for a replay.
    assert c.apply(batch) == [Rewind(0)]
    assert c.apply([wire(4, payload=5)]) == []  # stale frames are ignored until "rewound"
    c.rewound()
    replay = [(o, i, k, p, b, a + 1) for o, i, k, p, b, a in [*batch, wire(4, payload=5)]]
    frames = c.apply(replay)
    assert frames == [Ack(1, {0: 1}, [])]  # checkpointed just before the suspect message
    c.checkpoint()
    store = CheckpointStore(tmp_path)
    assert store.load_state("k") == (True, [1, 2, 4, 5])  # no trace of "bad"
    assert [d["id"] for d in store.dead_letters()] == ["m2"]
    assert store.committed()[0] == 4


def test_initial_state_factory_and_message_fields(tmp_path: Path) -> None:
    seen: list[Message] = []

    def handler(state, message):
        seen.append(message)
        return state

    c = core(tmp_path, handler=handler, initial_state=dict)
    c.apply([wire(7, key="x", payload={"a": 1})])
    assert c.state_of("x") == {}
    assert seen == [Message("m7", "x", {"a": 1}, 7, 1)]
