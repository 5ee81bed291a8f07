"""Bounded disk: the intake log keeps a window of ids (and thins what a lagging partition holds),
results go when forgotten or past results_age, events rotate -- and a crash anywhere in a
compaction loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chaos import History, set_failpoints
from chaos._target import append_id
from system import DataDirError, Message, Output, Pool, UsageError, _checkpoint, read_events
from system._checkpoint import CheckpointStore
from system._intake import IntakeLog

ROOT = Path(__file__).resolve().parent.parent


def rows_in_log(d: Path) -> int:
    log = IntakeLog(d, None)
    try:
        return log.count()
    finally:
        log.close()


async def test_the_log_keeps_a_window_of_ids_and_no_more(tmp_path: Path) -> None:
    settings = {"workers": 2, "partitions": 4, "dedup_window": 500, "compact_every": 500}
    async with Pool(append_id, tmp_path, durability="process", **settings) as pool:
        for chunk in range(10):
            items = [(f"k{i % 4}", i, f"m{i}") for i in range(chunk * 500, chunk * 500 + 500)]
            await pool.submit_many(items)
            await pool.drain(timeout=60)
        assert await pool.submit("k0", 0, "m4999") == 4999  # in the window: a no-op
        assert await pool.submit("k0", 0, "m0") == 5000  # beyond it: new, as documented
        await pool.drain(timeout=60)
    assert rows_in_log(tmp_path) <= 500 + 1
    compacted = [e for e in read_events(tmp_path) if e["kind"] == "compacted"]
    assert len(compacted) >= 8 and sum(e["removed"] for e in compacted) >= 4000


RUN = """
import asyncio, sys
from chaos._target import append_id
from system import Pool

async def main(d):
    async with Pool(append_id, d, workers=2, partitions=4, durability="process",
                    dedup_window=0, compact_every=200) as pool:
        for chunk in range(20):
            ids = [f"m{i}" for i in range(chunk * 100, chunk * 100 + 100)]
            print("submitting", chunk, flush=True)
            await pool.submit_many([(f"k{i % 7}", 0, mid) for i, mid in enumerate(ids)])
            print("acked", chunk, flush=True)
            await pool.drain()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("site", ["intake.compact", "intake.compacted"])
async def test_a_crash_in_a_compaction_loses_nothing(tmp_path: Path, site: str) -> None:
    d = tmp_path / "d"
    env = {
        **os.environ,
        "CHAOSGATE_FAILPOINTS": f"{site}=2*off->1*kill(SIGKILL)",  # the 3rd compaction
        "CHAOSGATE_FAILPOINT_LOG": str(tmp_path / "failpoints.log"),
        "PYTHONPATH": str(ROOT),
    }
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", RUN, str(d)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr
    lines = run.stdout.split("\n")[:-1]  # whole lines only: the kill may tear the last one
    acked = {int(line.split()[1]) for line in lines if line.startswith("acked")}
    tried = {int(line.split()[1]) for line in lines if line.startswith("sub")}
    assert 3 <= len(acked) < 20, run.stdout
    # Reopen without the fault and without compaction: finish what was logged, then judge.
    async with Pool(append_id, d, workers=2, durability="process", dedup_window=None) as pool:
        await pool.drain(timeout=60)
    history = History()
    for chunk in sorted(tried):
        for i in range(chunk * 100, chunk * 100 + 100):
            history.submitted(f"m{i}", f"k{(i - chunk * 100) % 7}", acked=chunk in acked, mono=0.0)
    store = CheckpointStore(d)
    try:
        committed = dict(store.states())
    finally:
        store.close()
    verdict = history.check(committed)
    assert verdict.ok, verdict.summary()


async def test_a_compaction_that_fails_costs_disk_never_a_message(tmp_path: Path) -> None:
    set_failpoints("intake.compact=raise(OSError, ENOSPC)")
    try:
        async with Pool(
            append_id, tmp_path, workers=2, partitions=4, dedup_window=0, compact_every=100
        ) as pool:
            for chunk in range(5):
                ids = [f"m{i}" for i in range(chunk * 100, chunk * 100 + 100)]
                await pool.submit_many([(f"k{i % 4}", 0, mid) for i, mid in enumerate(ids)])
                await pool.drain(timeout=60)
            assert pool.stats()["committed"] == 500
    finally:
        set_failpoints("", replace=True)
    failed = [e for e in read_events(tmp_path) if e["kind"] == "compacted" and "error" in e]
    assert failed and ("ENOSPC" in failed[0]["error"] or "No space" in failed[0]["error"])
    assert rows_in_log(tmp_path) == 500  # nothing deleted, nothing lost


async def test_a_checkpoint_store_older_than_the_compaction_is_refused(tmp_path: Path) -> None:
    settings = {"workers": 1, "partitions": 4, "dedup_window": 0, "compact_every": 10}
    async with Pool(append_id, tmp_path / "d", **settings) as pool:
        await pool.submit_many([(f"k{i % 4}", 0, f"a{i}") for i in range(10)])
        await pool.drain(timeout=30)
    old = (tmp_path / "d" / "checkpoints.db").read_bytes()  # (closed: no WAL left)
    async with Pool(append_id, tmp_path / "d", **settings) as pool:
        await pool.submit_many([(f"k{i % 4}", 0, f"b{i}") for i in range(10)])
        await pool.drain(timeout=30)
        await pool.submit_many([(f"k{i % 4}", 0, f"c{i}") for i in range(10)])  # compacts b*
        await pool.drain(timeout=30)
    (tmp_path / "d" / "checkpoints.db").write_bytes(old)  # "restored from a backup"
    with pytest.raises(DataDirError, match=r"checkpoints\.db is older than intake\.db"):
        await Pool(append_id, tmp_path / "d", **settings).start()


async def test_the_window_can_be_an_age_as_well(tmp_path: Path, monkeypatch) -> None:
    """dedup_age: an id stays known at least that long, whatever the count window says; past
    both, its message goes once committed. The clock the log stamps batches with is moved on,
    not waited for."""
    import time as real_time

    from system import _intake, _intake_writer

    now = [real_time.time()]
    clock = type("Clock", (), {"time": staticmethod(lambda: now[0])})
    monkeypatch.setattr(_intake, "time", clock)
    monkeypatch.setattr(_intake_writer, "time", clock)
    settings = {"workers": 2, "partitions": 4, "dedup_window": 0, "dedup_age": 3600.0,
                "compact_every": 100}  # fmt: skip
    async with Pool(append_id, tmp_path, durability="process", **settings) as pool:
        await pool.submit_many([(f"k{i % 4}", i, f"m{i}") for i in range(300)])
        await pool.drain(timeout=60)
        await pool.submit_many([(f"k{i % 4}", i, f"n{i}") for i in range(100)])  # compacts
        await pool.drain(timeout=60)
        assert await pool.submit("k0", 0, "m0") == 0  # an hour is not up: still known
        now[0] += 3601.0
        await pool.submit_many([(f"k{i % 4}", i, f"o{i}") for i in range(100)])  # compacts
        await pool.drain(timeout=60)
        assert await pool.submit("k0", 0, "m0") == 500  # past the hour: new, as documented
        await pool.drain(timeout=60)
    assert rows_in_log(tmp_path) <= 100 + 1  # the last write and the resubmit, at most
    with pytest.raises(Exception, match=r"dedup_age must be None or seconds >= 0"):
        Pool(append_id, tmp_path / "x", dedup_age=-1)


async def test_a_generated_id_is_known_when_resubmitted_and_cannot_be_minted(
    tmp_path: Path,
) -> None:
    """A generated id is <prefix>-<offset>, its prefix the data dir's: resubmitted (say, read
    from a dead letter) it is a no-op, also after a reopen; one for an offset not given yet is
    refused (the pool would generate it for another message); another form is a new id."""
    settings = {"workers": 1, "partitions": 4, "durability": "process"}
    async with Pool(append_id, tmp_path, **settings) as pool:
        offsets = await pool.submit_many([("k", i) for i in range(3)])
        await pool.drain(timeout=60)
    log = IntakeLog(tmp_path, None)
    prefix, ids = log.id_prefix, [row[1] for row in log.scan()]
    log.close()
    assert ids == [f"{prefix}-{o}" for o in offsets]
    async with Pool(append_id, tmp_path, **settings) as pool:
        assert await pool.submit("k", 9, ids[1]) == offsets[1]  # known: a no-op
        ahead = f"{prefix}-{offsets[-1] + 5}"
        with pytest.raises(UsageError, match=r"has not given yet.*nothing was written"):
            await pool.submit_many([("k", 8, "fine"), ("k", 9, ahead)])
        assert await pool.submit("k", 9, f"{prefix}-0{offsets[1]}") == offsets[-1] + 1  # new
        await pool.drain(timeout=60)
        assert await pool.query("k") == [*ids, f"{prefix}-0{offsets[1]}"]


def echo(state: int | None, message: Message) -> Output:
    return Output((state or 0) + 1, message.payload)


async def test_results_are_dropped_past_results_age_read_or_not(
    tmp_path: Path, monkeypatch
) -> None:
    """results_age: a committed result is kept that long, then dropped (an id generated for
    it need not be known to the caller: without it, such results were kept for ever). In
    thread mode, so that the clock the workers stamp results with is the one moved on."""
    import time as real_time

    from system import _intake_writer

    now = [real_time.time()]
    clock = type("Clock", (), {"time": staticmethod(lambda: now[0])})
    monkeypatch.setattr(_checkpoint, "time", clock)
    monkeypatch.setattr(_intake_writer, "time", clock)
    settings = {"workers": 2, "partitions": 4, "mode": "thread", "results_age": 60.0,
                "compact_every": 100}  # fmt: skip
    async with Pool(echo, tmp_path, **settings) as pool:
        await pool.submit_many([(f"k{i % 4}", i, f"m{i}") for i in range(100)])
        await pool.submit_many([(f"k{i % 4}", i) for i in range(100)])  # generated ids
        await pool.drain(timeout=60)
        assert pool.result("m7") == (True, 7)
        now[0] += 61.0
        events = pool.events()
        await pool.submit_many([(f"k{i % 4}", i, f"n{i}") for i in range(100)])  # expires
        async with asyncio.timeout(30):  # after the submit is answered, in the writer thread
            async for event in events:
                if event["kind"] == "results_expired":
                    assert event == {**event, "removed": 200}
                    break
        await pool.drain(timeout=60)
        assert pool.result("m7") == (False, None)
        assert pool.result("n7") == (True, 7)  # committed after: kept
    store = _checkpoint.CheckpointStore(tmp_path)
    try:
        (left,) = store._db.execute("SELECT count(*) FROM results").fetchone()
    finally:
        store.close()
    assert left == 100
    with pytest.raises(Exception, match=r"results_age must be None or seconds >= 0"):
        Pool(echo, tmp_path / "x", results_age=-1)


def test_results_without_a_time_get_one_at_open(tmp_path: Path) -> None:
    """Result times are a table beside results: an older data dir's results, and those an older
    chaosgate writes later (it knows no result_times), get their time at the pool's open --
    else they would never expire; times of results gone go too."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "checkpoints.db")
    db.execute("CREATE TABLE results (id TEXT PRIMARY KEY, partition INTEGER NOT NULL, "
               "seq INTEGER NOT NULL, output BLOB NOT NULL)")  # fmt: skip
    db.execute("INSERT INTO results VALUES ('a', 0, 0, ?)", (pickle.dumps(1),))
    db.commit()
    db.close()
    store = _checkpoint.CheckpointStore(tmp_path)
    try:
        assert store.result("a") == (True, 1)
        assert store.time_untimed() == 1 and store.time_untimed() == 0
        assert store.expire(before=0.0) == 0  # stamped as of its open, not as of 1970
        # An older chaosgate opening it again still writes results as it did, and forgets
        # some: the next open times the one, drops the other's time.
        store._db.execute("INSERT INTO results VALUES ('b', 0, 1, ?)", (pickle.dumps(2),))
        store._db.execute("DELETE FROM results WHERE id = 'a'")
        assert store.time_untimed() == 1
        assert store._db.execute("SELECT id FROM result_times").fetchall() == [("b",)]
        assert store.expire(before=float("inf")) == 1 and store.result("b") == (False, None)
    finally:
        store.close()


def test_expiry_takes_a_bounded_share_at_a_time(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_checkpoint, "EXPIRE_CHUNK", 10)
    store = _checkpoint.CheckpointStore(tmp_path)
    try:
        store.claim([0])
        store.commit({0: 24}, [], [(f"r{i}", 0, i, b"x") for i in range(25)], [])
        assert [store.expire(float("inf"), chunks=2) for _ in range(3)] == [20, 5, 0]
        assert store.result("r0") == (False, None)
    finally:
        store.close()
