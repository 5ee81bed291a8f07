"""Recovery figures of a real kill -9, from the pool's events."""

import asyncio
from pathlib import Path

from chaos import kill, recovery_of, wait_until
from system import Pool, read_events
from system._demo import append_payload


async def test_detection_restart_and_recovery_of_a_kill(tmp_path: Path) -> None:
    async with Pool(
        append_payload, tmp_path, workers=2, partitions=4, checkpoint_interval=0.5
    ) as pool:
        await pool.submit_many([(f"k{i % 8}", i) for i in range(4000)])
        slot = pool._crew.supervisor_of("k0")
        await asyncio.to_thread(wait_until, slot.ready.is_set, 30, "the worker")
        await pool.query("k0")  # applied, not committed yet (checkpoint every 0.5 s)
        fault = kill(slot.handle.pid)
        await pool.drain(timeout=60)
    figures = recovery_of(fault.mono, fault.pid, read_events(tmp_path))
    assert figures.worker == slot.index
    assert 0 <= figures.detection < figures.restart <= figures.recovery < 30
    died = next(e for e in read_events(tmp_path) if e["kind"] == "died")
    assert died["inflight"] > 0 and died["inflight_last"] is not None
    print(f"\n{figures.as_dict()}")


def test_no_figures_without_events() -> None:
    figures = recovery_of(100.0, 1234, [{"kind": "ready", "mono": 101.0, "worker": 0, "pid": 9}])
    assert figures.detection is None and figures.recovery is None
