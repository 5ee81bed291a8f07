"""The pool at two commits, side by side: throughput and recovery after kill -9, interleaved.

For a change that must not cost anything (a refactor): ``python bench/ab.py --before REV``
exports ``REV`` (``git archive``) into a temporary directory and runs, in turns, the same
measurement against it and against this working tree, each round in a fresh process with only
that tree's ``system`` on its path, so a noisy neighbour hurts both alike. Reports the medians
and their ratio (after / before).

Measured per round: 100,000 messages through 2 process workers (``throughput.py``'s own run), and
recovery of a SIGKILLed worker under load: from the kill to the replacement's ``ready``, and to
the first checkpoint after it, from the pool's own events (CLOCK_MONOTONIC, as the kill).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

ONE = r"""
import asyncio, json, os, signal, sys, tempfile, time, shutil
from pathlib import Path
from system import Pool, read_events
from throughput import count, pool  # bench/throughput.py: the same measurement as make bench

async def recovery():
    d = Path(tempfile.mkdtemp(prefix="chaosgate-ab-"))
    try:
        async with Pool(count, d, workers=2, partitions=8) as pool:
            await pool.submit_many([(f"k{i % 8}", i) for i in range(20_000)])
            await pool.drain()
            victim = pool.worker_pids()[0]
            load = asyncio.create_task(pool.submit_many([(f"k{i % 8}", i) for i in range(50_000)]))
            await asyncio.sleep(0.01)
            t_kill = time.clock_gettime(time.CLOCK_MONOTONIC)
            os.kill(victim, signal.SIGKILL)
            await load
            await pool.drain()
        events = read_events(d)
        died = next(e for e in events if e["kind"] == "died" and e["pid"] == victim)
        ready = next(e for e in events if e["kind"] == "ready" and e["mono"] > died["mono"]
                     and e["worker"] == died["worker"])
        ck = next(e for e in events if e["kind"] == "checkpointed" and e["mono"] > ready["mono"]
                  and e["worker"] == died["worker"])
        ms = lambda e: (e["mono"] - t_kill) * 1e3
        return {"detect_ms": ms(died), "ready_ms": ms(ready), "recovered_ms": ms(ck)}
    finally:
        shutil.rmtree(d)

def main():
    n = int(sys.argv[1])
    out = {"msgs_per_s": n / pool("process")(n)}
    out.update(asyncio.run(recovery()))
    print(json.dumps(out))
"""  # a module of its own: the handler must be importable in the worker processes


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(HERE), "archive", rev, "system", "chaos"],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


def one(tree: Path, measure: Path, messages: int) -> dict[str, float]:
    path = os.pathsep.join(map(str, [tree, measure, HERE / "bench"]))
    env = {**os.environ, "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-c", "import ab_measure; ab_measure.main()", str(messages)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise SystemExit(f"the measurement failed in {tree}:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="HEAD", help="the commit to compare with (git rev)")
    ap.add_argument("--after", default=None, help="a commit too (default: the working tree)")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chaosgate-ab-") as tmp:
        measure = Path(tmp, "measure")
        measure.mkdir()
        (measure / "ab_measure.py").write_text(ONE)
        after = HERE if args.after is None else export(args.after, Path(tmp, "after"))
        trees = {"before": export(args.before, Path(tmp, "before")), "after": after}
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(one(tree, measure, args.messages))
    against = "the working tree" if args.after is None else args.after
    print(f"{args.before} (before) against {against} (after), {args.rounds} rounds")
    print(f"{'figure':16} {'before':>10} {'after':>10} {'after/before':>13}")
    for figure in runs["before"][0]:
        b = statistics.median(r[figure] for r in runs["before"])
        a = statistics.median(r[figure] for r in runs["after"])
        print(f"{figure:16} {b:10,.1f} {a:10,.1f} {a / b:12.2f}x")


if __name__ == "__main__":
    main()
