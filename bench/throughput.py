"""Throughput and memory of the pool against ProcessPoolExecutor, multiprocessing.Pool and loky.

The same 100,000 small messages (key ``k<i mod 100>``, payload ``i``) through each, measured side
by side in one process, rounds interleaved so that a noisy neighbour hurts every contender alike;
the median of the rounds is reported with its ratio to the pool. Start-up is excluded for all
(each is warmed up with one message first). The pool runs in process mode with 2 workers, a
trivial handler (a per-key counter), checkpoints on and durable (fsync) intake, its data dir on
local disk: the figure includes logging every message durably, dispatching, applying, and
committing states and offsets exactly once. The peers just call a function, with no guarantees.
Memory (a separate, untimed pass): the peak, while a contender runs, of the proportional set
size (PSS: shared pages split between their users) of this process and all its descendants,
less what it was just before.

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
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from system import Message, Pool


def count(state: int | None, message: Message) -> int:
    return (state or 0) + 1


def trivial(i: int) -> int:
    return i + 1


async def _pool_run(n: int, mode: str, settings: dict[str, Any]) -> float:
    data = Path(tempfile.mkdtemp(prefix="chaosgate-bench-", dir=Path.cwd()))
    try:
        async with Pool(count, data, workers=2, mode=mode, **settings) as pool:
            await pool.submit("warm", 0)
            await pool.drain()
            items = [(f"k{i % 100}", i) for i in range(n)]
            t0 = time.perf_counter()
            for lo in range(0, n, 10_000):
                await pool.submit_many(items[lo : lo + 10_000])
            await pool.drain()
            elapsed = time.perf_counter() - t0
            sample_memory()  # with every worker still there (in the memory pass only)
            assert pool.stats()["committed"] == n + 1
            total = sum([await pool.query(f"k{k}") for k in range(100)])
            assert total == n, total
        return elapsed
    finally:
        shutil.rmtree(data)


def pool(mode: str, **settings: Any):
    return lambda n: asyncio.run(_pool_run(n, mode, settings))


def peer(open_pool, map_name: str, chunksize: int):
    """A peer pool's ``map``-like method over the same messages, warmed up first."""

    def run(n: int) -> float:
        with open_pool() as p:
            mapper = getattr(p, map_name)
            sum(mapper(trivial, [0]))
            t0 = time.perf_counter()
            out = sum(mapper(trivial, range(n), chunksize=chunksize))
            elapsed = time.perf_counter() - t0
            sample_memory()
        assert out == n * (n + 1) // 2
        return elapsed

    return run


def loky_map(chunksize: int):
    def open_pool():
        from loky import get_reusable_executor

        executor = get_reusable_executor(max_workers=2)

        class Closing:  # shut down after the run, like the others
            def __enter__(self):
                return executor

            def __exit__(self, *exc):
                executor.shutdown(wait=True, kill_workers=True)

        return Closing()

    return peer(open_pool, "map", chunksize)


def executor_map(chunksize: int):
    return peer(lambda: concurrent.futures.ProcessPoolExecutor(2), "map", chunksize)


def mp_imap(chunksize: int):
    return peer(lambda: multiprocessing.get_context("fork").Pool(2), "imap", chunksize)


CONTENDERS = {
    "system.Pool process, 2 workers (durable, exactly-once)": pool("process"),
    "system.Pool thread, 2 workers (durable, exactly-once)": pool("thread"),
    "system.Pool process, checkpoints every 100,000 or 10 s": pool(
        "process", checkpoint_every=100_000, checkpoint_interval=10.0
    ),
    "ProcessPoolExecutor.map (chunksize=1, default)": executor_map(1),
    "ProcessPoolExecutor.map (chunksize=100)": executor_map(100),
    "multiprocessing.Pool.imap (chunksize=1, default)": mp_imap(1),
    "multiprocessing.Pool.imap (chunksize=100)": mp_imap(100),
    "loky executor.map (chunksize=1, default)": loky_map(1),
    "loky executor.map (chunksize=100)": loky_map(100),
}


def tree_pss() -> int:
    total = 0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def _no_sample() -> None:
    """Called by every contender after its work, before its pool closes (see peak_memory)."""


sample_memory = _no_sample


def peak_memory(run, n: int) -> int:
    """The run's peak extra memory (bytes): sampled every 20 ms and once right after the work
    (a separate pass from the timed rounds, so that sampling does not slow them down)."""
    global sample_memory
    base = tree_pss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        peak[0] = max(peak[0], tree_pss())

    def sampler() -> None:
        while not done.wait(0.02):
            sample()

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    sample_memory = sample
    try:
        run(n)
    finally:
        sample_memory = _no_sample
        done.set()
        thread.join()
    return peak[0] - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name, run in CONTENDERS.items():
            times[name].append(run(args.messages))
    memory = {name: peak_memory(run, args.messages) for name, run in CONTENDERS.items()}
    base = args.messages / statistics.median(next(iter(times.values())))
    print(f"{args.messages} messages, median of {args.rounds} interleaved rounds, 2 workers each")
    print(f"{'contender':58} {'msgs/s':>10} {'vs pool':>8} {'peak MB':>8}")
    for name, ts in times.items():
        rate = args.messages / statistics.median(ts)
        mb = memory[name] / 2**20
        print(f"{name:58} {rate:10,.0f} {rate / base:7.2f}x {mb:8.0f}")


if __name__ == "__main__":
    main()
