"""Soak: millions of messages at a steady rate, a worker SIGKILLed every few seconds.

    python bench/soak.py [--messages 10000000] [--rate 50000] [--kill-every 5] [--workers 2]

Message ``i`` goes to key ``k<i mod K>`` with payload ``i``; the handler keeps, per key, how many
messages it applied, the last payload and how many came out of order, so the committed state
itself shows a lost message (a short count), a duplicate (a long one) or a reorder, without
holding millions of ids. Every second it samples the data dir's size (every file, the WAL
included), the pool process's RSS and the committed count. Reported: throughput in the first
and the last minute, disk and RSS after the first minute against the end, kills, and the
verdict: 0 lost, 0 duplicated, 0 reordered, or the run fails (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from system import Message, Pool

KEYS = 1000


def tally(state: tuple[int, int, int] | None, message: Message) -> tuple[int, int, int]:
    """``(applied, last payload, out of order)`` of a key."""
    n, last, disorder = state or (0, -1, 0)
    return n + 1, message.payload, disorder + (message.payload <= last)


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def soak(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    me = psutil.Process()
    samples: list[tuple[float, int, int, int]] = []  # (t, committed, disk, rss)
    kills = 0
    async with Pool(tally, data, workers=args.workers, durability="process") as pool:
        t0 = time.monotonic()

        async def submit() -> None:
            chunk = max(1, args.rate // 20)
            for n, lo in enumerate(range(0, args.messages, chunk)):
                await asyncio.sleep(max(0.0, t0 + n * chunk / args.rate - time.monotonic()))
                hi = min(args.messages, lo + chunk)
                await pool.submit_many([(f"k{i % KEYS}", i) for i in range(lo, hi)])

        async def kill() -> None:
            nonlocal kills
            rng = random.Random(1)
            while True:
                await asyncio.sleep(args.kill_every)
                pids = pool.worker_pids()
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                t = time.monotonic() - t0
                samples.append((t, pool.stats()["committed"], disk(data), me.memory_info().rss))

        side = [asyncio.create_task(kill()), asyncio.create_task(sample())]
        await submit()
        await pool.drain()
        elapsed = time.monotonic() - t0
        for task in side:
            task.cancel()
        states = {f"k{k}": await pool.query(f"k{k}") for k in range(KEYS)}
    lost = dup = disorder = 0
    for k in range(KEYS):
        want = len(range(k, args.messages, KEYS))
        n, _, bad = states[f"k{k}"] or (0, -1, 0)
        lost, dup, disorder = lost + max(0, want - n), dup + max(0, n - want), disorder + bad
    return {
        "elapsed": elapsed,
        "samples": samples,
        "kills": kills,
        "lost": lost,
        "dup": dup,
        "disorder": disorder,
    }


def rate_between(samples: list[tuple[float, int, int, int]], t1: float, t2: float) -> float:
    inside = [s for s in samples if t1 <= s[0] <= t2]
    if len(inside) < 2:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--kill-every", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="chaosgate-soak-", dir=Path.cwd()))
    try:
        r = asyncio.run(soak(args, data))
    finally:
        shutil.rmtree(data)
    s = r["samples"]
    end = s[-1][0]
    first, last = rate_between(s, 0, 60), rate_between(s, end - 60, end)
    after = [x for x in s if x[0] >= 60] or s
    disk_mb = [x[2] / 2**20 for x in after]
    rss_mb = [x[3] / 2**20 for x in after]
    print(
        f"{args.messages:,} messages at {args.rate:,}/s, {args.workers} workers, "
        f"a worker SIGKILLed every {args.kill_every} s: {r['kills']} kills, {r['elapsed']:.0f} s"
    )
    print(f"lost {r['lost']}, duplicated {r['dup']}, out of order {r['disorder']}")
    print(
        f"throughput: first minute {first:,.0f}/s, last minute {last:,.0f}/s ({last / first:.2f}x)"
        if first
        else "throughput: run shorter than a minute"
    )
    print(
        f"disk after the first minute: {min(disk_mb):.1f}-{max(disk_mb):.1f} MB "
        f"(median {statistics.median(disk_mb):.1f}), at the end {disk_mb[-1]:.1f} MB"
    )
    print(
        f"pool RSS after the first minute: {min(rss_mb):.1f}-{max(rss_mb):.1f} MB, "
        f"at the end {rss_mb[-1]:.1f} MB"
    )
    sys.exit(0 if r["lost"] == r["dup"] == r["disorder"] == 0 else 1)


if __name__ == "__main__":
    main()
