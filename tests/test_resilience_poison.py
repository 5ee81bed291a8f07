"""Poison: handler errors retried then dead-lettered, unpicklable outputs, crash loops on one
message -- each ends as a dead letter with its reason, and the pool keeps going."""

from pathlib import Path

from conftest import cli
from handlers import crash_on_request, fail_first_attempts, unpicklable_output
from system import Pool, read_events


async def test_a_flaky_handler_is_retried_with_backoff(tmp_path: Path) -> None:
    async with Pool(
        fail_first_attempts, tmp_path, workers=1, partitions=2, retries=2, retry_backoff=0.05
    ) as pool:
        await pool.submit("k", "x")
        await pool.drain(timeout=30)
        assert await pool.query("k") == [(3, "x")]  # the third try succeeded
        assert pool.dead_letters() == []


async def test_a_handler_failing_past_its_retries_is_dead_lettered(tmp_path: Path) -> None:
    async with Pool(
        fail_first_attempts, tmp_path, workers=1, partitions=2, retries=1, mode="inline"
    ) as pool:
        await pool.submit("k", "x", "flaky")
        await pool.drain(timeout=30)
        (dead,) = pool.dead_letters()
        assert dead["id"] == "flaky"
        assert (
            dead["reason"] == "handler raised ConnectionError('flaky dependency (attempt 2)') "
            "(2 tries)"
        )
        assert "ConnectionError: flaky dependency" in dead["traceback"]
    events = [e for e in read_events(tmp_path) if e["kind"] == "dead_lettered"]
    assert [e["id"] for e in events] == ["flaky"]


async def test_an_output_that_cannot_be_pickled_is_dead_lettered(tmp_path: Path) -> None:
    async with Pool(unpicklable_output, tmp_path, workers=1, partitions=2) as pool:
        await pool.submit_many([("k", 1), ("k", "bad-output", "bad"), ("k", 2)])
        await pool.drain(timeout=30)
        assert await pool.query("k") == 2
        (dead,) = pool.dead_letters()
        assert dead["id"] == "bad" and dead["reason"].startswith("output cannot be pickled")


async def test_a_message_that_kills_its_worker_every_time_is_dead_lettered(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with Pool(crash_on_request, d, workers=2, partitions=4, poison_after=3) as pool:
        items = [(f"k{i % 4}", i, f"m{i}") for i in range(200)]
        await pool.submit_many([*items[:100], ("k1", "crash", "killer"), *items[100:]])
        await pool.drain(timeout=60)
        for k in range(4):
            assert await pool.query(f"k{k}") == list(range(k, 200, 4))
        (dead,) = pool.dead_letters()
        assert dead["id"] == "killer"
        assert "in flight during 3 consecutive deaths" in dead["reason"]
        assert "SIGKILL(-9)" in dead["reason"]
        assert pool.stats()["restarts"] == 3
    listing = cli("dead-letters", "--data-dir", str(d))
    assert listing.returncode == 0
    assert "killer" in listing.stdout and "3 consecutive deaths" in listing.stdout
    verify = cli("verify", "--data-dir", str(d))  # the same list-append shape as the demo
    assert verify.returncode == 0, verify.stdout
    assert verify.stdout.startswith("lost=0 duplicated=0 reordered=0 unexpected=0 dead_lettered=1")
