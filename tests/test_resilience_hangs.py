"""Hung workers -- deadlock, busy loop, SIGSTOP -- are detected, dumped, replaced, and retried."""

import asyncio
import json
from pathlib import Path

import pytest

from chaos import failpoint_counts, freeze, set_failpoints, wait_until
from chaos import failpoints as fp
from handlers import hang_on_request
from system import Pool, read_events
from system._demo import append_payload

FAST = {"hang_timeout": 1.0, "heartbeat_interval": 0.1, "hang_grace": 0.5}


@pytest.fixture
def failpoint_log(tmp_path: Path, monkeypatch) -> Path:
    log = tmp_path / "fp.log"
    monkeypatch.setenv(fp.ENV_LOG, str(log))
    yield log
    set_failpoints("", replace=True)


async def run_to_completion(pool: Pool, n: int = 400, keys: int = 8) -> None:
    await pool.submit_many([(f"k{i % keys}", i, f"m{i}") for i in range(n)])
    await pool.drain(timeout=60)
    for k in range(keys):
        assert await pool.query(f"k{k}") == list(range(k, n, keys))  # each once, in order


def hung_events(data_dir: Path) -> list[dict]:
    return [e for e in read_events(data_dir) if e["kind"] == "hung"]


@pytest.mark.parametrize(
    ("spec", "frame"),
    [
        ("worker.before_apply=50*off->1*hang", "_hang_forever"),
        ("worker.before_apply=50*off->1*busy", "_act"),
    ],
    ids=["deadlock", "busy-loop"],
)
async def test_a_hung_handler_is_dumped_killed_and_replaced(
    tmp_path: Path, failpoint_log: Path, spec: str, frame: str
) -> None:
    set_failpoints(spec)
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4, **FAST) as pool:
        await run_to_completion(pool)
        assert pool.stats()["restarts"] == 1
    assert failpoint_counts(failpoint_log)["worker.before_apply"]["fires"] == 1
    (hung,) = hung_events(d)
    assert hung["silence"] > 1.0 and hung["id"] is not None
    dump = Path(hung["dump"])
    assert dump.parent == d / "dumps" and frame in dump.read_text()
    assert frame in hung["blocked"]
    assert json.loads(dump.with_suffix(".json").read_text())["method"] == "py-spy"
    died = [e for e in read_events(d) if e["kind"] == "died" and e["pid"] == hung["pid"]]
    assert died and died[0]["signal"] in ("SIGKILL(-9)", "SIGTERM(-15)")


async def test_a_frozen_worker_is_detected_from_its_silence(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4, **FAST) as pool:
        slot = pool._crew.supervisor_of("k0")
        await asyncio.to_thread(wait_until, slot.ready.is_set, 30, "the worker ready")
        victim = slot.handle.pid
        fault = freeze(victim)
        await run_to_completion(pool)
    (hung,) = hung_events(d)
    assert hung["pid"] == victim
    detection = hung["mono"] - fault.mono
    assert 1.0 < detection < 10.0, detection
    assert Path(hung["dump"]).exists()
    print(f"\nSIGSTOP detection: {detection * 1000:.0f} ms (hang_timeout 1 s, dump included)")


async def test_a_message_that_hangs_every_time_is_dead_lettered(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(hang_on_request, d, workers=1, partitions=2, **FAST) as pool:
        await pool.submit_many([("a", 1), ("a", "hang", "the-hanging-one"), ("a", 2)])
        await pool.drain(timeout=60)
        assert await pool.query("a") == [1, 2]
        (dead,) = pool.dead_letters()
        assert dead["id"] == "the-hanging-one"
        assert "in flight during 3 consecutive deaths" in dead["reason"]
    assert len(hung_events(d)) == 3
    kinds = [e["kind"] for e in read_events(d)]
    assert "poisoned" in kinds and "dead_lettered" in kinds


async def test_a_hung_thread_worker_is_abandoned_and_replaced(
    tmp_path: Path, failpoint_log: Path
) -> None:
    set_failpoints("worker.before_apply=50*off->1*hang")
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4, mode="thread", **FAST) as pool:
        await run_to_completion(pool)
    hung = hung_events(d)
    assert len(hung) == 1, [(e["worker"], e["silence"], e["blocked"]) for e in hung]
    assert "_hang_forever" in Path(hung[0]["dump"]).read_text()
    assert "_hang_forever" in hung[0]["blocked"]
    assert any(e["kind"] == "died" and e.get("error") == "abandoned (hung)" for e in read_events(d))


async def test_a_worker_hung_before_ready_is_caught_by_start_timeout(
    tmp_path: Path, failpoint_log: Path
) -> None:
    set_failpoints("worker.start=1*hang")  # the first worker process never gets ready
    d = tmp_path / "d"
    async with Pool(append_payload, d, workers=2, partitions=4, start_timeout=1.0, **FAST) as pool:
        await run_to_completion(pool)
    assert failpoint_counts(failpoint_log)["worker.start"]["fires"] == 1
    (hung,) = hung_events(d)
    assert 1.0 <= hung["silence"] < 1.0 + 3.0  # start_timeout, plus slack for a loaded machine
    assert "_hang_forever" in hung["blocked"]
