"""The built-in demo workload (list-append) behind ``python -m system run | verify | dump``.

Message ``i`` (0 <= i < M) has id ``m<i>``, key ``k<i mod K>`` and payload ``i``; the handler
appends the payload to its key's list. So the committed state itself shows every lost, duplicated
or reordered message: each key's list must be exactly its payloads in submission (offset) order.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from chaos import History, Verdict

from ._checkpoint import CheckpointStore
from ._intake import IntakeLog, check_data_dir
from ._message import Message
from ._pool import Pool

CHUNK = 10_000


def append_payload(state: list[Any] | None, message: Message) -> list[Any]:
    """The demo handler: append the payload to the key's list."""
    if state is None:
        state = []
    state.append(message.payload)
    return state


async def run(
    data_dir: str,
    *,
    workers: int,
    messages: int,
    keys: int,
    mode: str,
    partitions: int | None,
    durability: str,
    grace: float,
    rate: float | None = None,
) -> int:
    pool = Pool(
        append_payload,
        data_dir,
        workers=workers,
        mode=mode,
        partitions=partitions,
        durability=durability,
        dedup_window=None,  # a rerun resubmits every id: all must stay known
    )
    await pool.start()
    stop = pool.add_signal_handlers()
    t0 = time.perf_counter()

    async def submit_all() -> None:
        # Paced: chunks of rate/20 messages every 50 ms on a fixed schedule (no drift).
        chunk = CHUNK if rate is None else max(1, int(rate / 20))
        for n, lo in enumerate(range(0, messages, chunk)):
            if rate is not None:
                await asyncio.sleep(max(0.0, t0 + n * chunk / rate - time.perf_counter()))
            hi = min(messages, lo + chunk)
            await pool.submit_many([(f"k{i % keys}", i, f"m{i}") for i in range(lo, hi)])
        await pool.drain()

    work = asyncio.create_task(submit_all())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stats = pool.stats()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        await pool.close(grace)
        seconds = time.perf_counter() - t0
        assert pool.stop_signal is not None
        print(
            f"stopped by signal {pool.stop_signal} after {seconds:.2f} s: committed="
            f"{pool.stats()['committed']} restarts={stats['restarts']} mode={mode}; "
            "nothing is lost -- run again with the same --data-dir to finish"
        )
        return 128 + pool.stop_signal
    stopped.cancel()
    try:
        work.result()
    finally:
        await pool.close(grace)
    seconds = time.perf_counter() - t0
    done = stats["committed"]
    print(
        f"messages={messages} committed_now={done} seconds={seconds:.3f} "
        f"rate={done / seconds:.0f}/s restarts={stats['restarts']} mode={mode} workers={workers}"
    )
    return 0


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _read(data_dir: str) -> tuple[list[tuple[int, str, str, Any]], dict[str, Any], set[str]]:
    import pickle

    path = check_data_dir(data_dir, create=False)
    intake = IntakeLog(path, None)
    try:
        submitted = [
            (seq, mid, key, pickle.loads(blob)) for seq, mid, key, _, blob in intake.scan()
        ]
    finally:
        intake.close()
    if not (path / "checkpoints.db").exists():
        return submitted, {}, set()
    store = CheckpointStore(path)
    try:
        states = dict(store.states())
        dead = {d["id"] for d in store.dead_letters()}
    finally:
        store.close()
    return submitted, states, dead


def dump(data_dir: str) -> int:
    _, states, _ = _read(data_dir)
    ordered = {k: states[k] for k in sorted(states, key=_natural)}
    json.dump(ordered, sys.stdout, default=repr)
    sys.stdout.write("\n")
    return 0


def check(
    submitted: list[tuple[int, str, str, Any]], states: dict[str, Any], dead: set[str]
) -> Verdict:
    """The demo's committed lists (payloads) against the intake log, by ``chaos``'s checker.

    Every logged message was acknowledged (submit returns once it is durable), so each one
    must be committed exactly once, in order, or be dead-lettered.
    """
    ids = {(key, payload): mid for _, mid, key, payload in submitted}
    committed: dict[str, list[Any]] = {}
    for key, state in states.items():
        if not isinstance(state, list):
            raise TypeError(f"state of {key!r} is {type(state).__name__}, not the demo's list")
        committed[key] = [ids.get((key, p), f"payload {p!r}") for p in state]
    history = History()
    for _, mid, key, _ in submitted:
        history.submitted(mid, key, acked=True, mono=0.0)
    return history.check(committed, dead)


def dead_letters(data_dir: str, as_json: bool = False) -> int:
    path = check_data_dir(data_dir, create=False)
    if not (path / "checkpoints.db").exists():
        found: list[dict[str, Any]] = []
    else:
        store = CheckpointStore(path)
        try:
            found = store.dead_letters()
        finally:
            store.close()
    if as_json:
        json.dump(found, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"{len(found)} dead-lettered message(s) in {path}")
    for d in found:
        last = d["traceback"].strip().splitlines()[-1:] or [""]
        print(f"{d['id']}  key={d['key']}  offset={d['offset']}  {d['reason']}")
        if last[0]:
            print(f"    {last[0]}")
    return 0


def verdict_of(data_dir: str | Path) -> Verdict:
    """The checker's verdict on a demo data dir (what ``verify`` prints)."""
    return check(*_read(str(data_dir)))


def verify(data_dir: str) -> int:
    submitted, states, dead = _read(data_dir)
    verdict = check(submitted, states, dead)
    print(f"{verdict.summary()} messages={len(submitted)} keys={len(states)}")
    for line in verdict.details():
        print(line)
    # Dead letters are this pool's own declared outcome (``dead-letters`` says why): listed, not
    # a failure of the data dir. (A chaos verdict counts them against its objective.)
    failed = any(getattr(verdict, a) for a in ("lost", "duplicated", "reordered", "unexpected"))
    return 1 if failed else 0
