"""Throughput of the pool against ProcessPoolExecutor.map and multiprocessing.Pool.imap, one run.

The same 100,000 small messages (key ``k<i mod 100>``, payload ``i``) through each, measured side
by side in one process, rounds interleaved so that a noisy neighbour hurts every contender alike;
the median of the rounds is reported with its ratio to the pool. Start-up is excluded for all
(each is warmed up with one message first). The pool runs in process mode with 2 workers, a
trivial handler (a per-key counter), checkpoints on and durable (fsync) intake, its data dir on
local disk: the figure includes logging every message durably, dispatching, applying, and
committing states and offsets exactly once. The peers just call a function, with no guarantees.

    python bench/throughput.py [--messages N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from system import Message, Pool


def count(state: int | None, message: Message) -> int:
    return (state or 0) + 1


def trivial(i: int) -> int:
    return i + 1


async def _pool_run(n: int, mode: str) -> float:
    data = Path(tempfile.mkdtemp(prefix="chaosgate-bench-", dir=Path.cwd()))
    try:
        async with Pool(count, data, workers=2, mode=mode) as pool:
            await pool.submit("warm", 0)
            await pool.drain()
            items = [(f"k{i % 100}", i) for i in range(n)]
            t0 = time.perf_counter()
            for lo in range(0, n, 10_000):
                await pool.submit_many(items[lo : lo + 10_000])
            await pool.drain()
            elapsed = time.perf_counter() - t0
            assert pool.stats()["committed"] == n + 1
            total = sum([await pool.query(f"k{k}") for k in range(100)])
            assert total == n, total
        return elapsed
    finally:
        shutil.rmtree(data)


def pool(mode: str):
    return lambda n: asyncio.run(_pool_run(n, mode))


def peer(open_pool, map_name: str, chunksize: int):
    """A peer pool's ``map``-like method over the same messages, warmed up first."""

    def run(n: int) -> float:
        with open_pool() as p:
            mapper = getattr(p, map_name)
            sum(mapper(trivial, [0]))
            t0 = time.perf_counter()
            out = sum(mapper(trivial, range(n), chunksize=chunksize))
            elapsed = time.perf_counter() - t0
        assert out == n * (n + 1) // 2
        return elapsed

    return run


def executor_map(chunksize: int):
    return peer(lambda: concurrent.futures.ProcessPoolExecutor(2), "map", chunksize)


def mp_imap(chunksize: int):
    return peer(lambda: multiprocessing.get_context("fork").Pool(2), "imap", chunksize)


CONTENDERS = {
    "system.Pool process, 2 workers (durable, exactly-once)": pool("process"),
    "system.Pool thread, 2 workers (durable, exactly-once)": pool("thread"),
    "ProcessPoolExecutor.map (chunksize=1, default)": executor_map(1),
    "ProcessPoolExecutor.map (chunksize=100)": executor_map(100),
    "multiprocessing.Pool.imap (chunksize=1, default)": mp_imap(1),
    "multiprocessing.Pool.imap (chunksize=100)": mp_imap(100),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name, run in CONTENDERS.items():
            times[name].append(run(args.messages))
    base = args.messages / statistics.median(next(iter(times.values())))
    print(f"{args.messages} messages, median of {args.rounds} interleaved rounds, 2 workers each")
    print(f"{'contender':58} {'msgs/s':>10} {'vs pool':>8}")
    for name, ts in times.items():
        rate = args.messages / statistics.median(ts)
        print(f"{name:58} {rate:10,.0f} {rate / base:7.2f}x")


if __name__ == "__main__":
    main()
