"""Per-partition atomic checkpoints: key states, results, dead letters and committed offsets.

One SQLite database, ``<data dir>/checkpoints.db``, in WAL mode, shared by the workers. A commit
is one transaction holding, for the partitions a worker owns, the new states of the keys it
changed, the outputs and dead letters of the messages it applied, and each partition's committed
offset. SQLite makes that all-or-nothing: a worker killed mid-commit leaves the previous
checkpoint in place (a torn WAL frame fails its checksum and is discarded on the next open).

Fencing: when a worker claims partitions it bumps their ``epoch``; every commit checks, inside its
write transaction, that the epochs are still its own, so a stale worker (one that was presumed
dead and replaced) can never overwrite the state its replacement owns -- it gets ``Fenced``.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ._errors import Fenced
from ._intake import connect, transaction

EXPIRE_CHUNK = 10_000  # results dropped per transaction by results_age

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    partition INTEGER PRIMARY KEY,
    committed INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS states (
    key TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    output BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS result_times (  -- beside results, which older versions still write
    id TEXT PRIMARY KEY,  -- of a row of results
    ts REAL NOT NULL      -- when it was committed (time.time()), for results_age
);
CREATE INDEX IF NOT EXISTS result_times_ts ON result_times (ts);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    traceback TEXT NOT NULL,
    ts REAL NOT NULL
);
"""


class CheckpointStore:
    """Reads and atomically writes the committed state of partitions."""

    def __init__(self, data_dir: Path, *, durability: str = "fsync"):
        self.path = data_dir / "checkpoints.db"
        self._db = connect(self.path, durability=durability)
        self._db.executescript(_SCHEMA)
        self._epochs: dict[int, int] = {}

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)

    # -- ownership -------------------------------------------------------------------------------
    def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        """Own ``partitions`` (fencing older owners); return their committed offsets."""
        parts = sorted(partitions)
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO partitions VALUES (?, -1, 0)", [(p,) for p in parts]
            )
            self._db.executemany(
                "UPDATE partitions SET epoch = epoch + 1 WHERE partition = ?", [(p,) for p in parts]
            )
            rows = self._rows_for(parts, "partition, committed, epoch")
        self._epochs = {p: e for p, _, e in rows}
        return {p: c for p, c, _ in rows}

    def _rows_for(self, parts: list[int], cols: str) -> list[tuple[int, ...]]:
        marks = ",".join("?" * len(parts))
        q = f"SELECT {cols} FROM partitions WHERE partition IN ({marks})"
        return list(self._db.execute(q, parts))

    # -- reads -----------------------------------------------------------------------------------
    def load_state(self, key: str) -> tuple[bool, Any]:
        row = self._db.execute("SELECT state FROM states WHERE key = ?", (key,)).fetchone()
        return (False, None) if row is None else (True, pickle.loads(row[0]))

    def committed(self) -> dict[int, int]:
        return dict(self._db.execute("SELECT partition, committed FROM partitions"))

    def states(self) -> Iterator[tuple[str, Any]]:
        for key, blob in self._db.execute("SELECT key, state FROM states"):
            yield key, pickle.loads(blob)

    def result(self, message_id: str) -> tuple[bool, Any]:
        q = "SELECT output FROM results WHERE id = ?"
        row = self._db.execute(q, (message_id,)).fetchone()
        return (False, None) if row is None else (True, pickle.loads(row[0]))

    def forget(self, message_ids: Iterable[str]) -> int:
        """Drop the results of ``message_ids``; how many there were."""
        ids = list(message_ids)
        n = 0
        with self._transaction():
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                n += self._db.execute(f"DELETE FROM results WHERE id IN ({marks})", chunk).rowcount
                self._db.execute(f"DELETE FROM result_times WHERE id IN ({marks})", chunk)
        return n

    def time_untimed(self) -> int:
        """Give a commit time (now) to every result without one, and drop times of results
        gone; how many were given. Results written by an older chaosgate (an older data dir,
        or one opened by an older version since) have none, and would never expire. At the
        pool's open, with ``results_age`` set (its table is bounded by it, so is this)."""
        with self._transaction():
            n = self._db.execute(
                "INSERT INTO result_times SELECT id, ? FROM results "
                "WHERE id NOT IN (SELECT id FROM result_times)",
                (time.time(),),
            ).rowcount
            self._db.execute("DELETE FROM result_times WHERE id NOT IN (SELECT id FROM results)")
        return n

    def expire(self, before: float, chunks: int = 10) -> int:
        """Drop the results committed before ``before`` (a ``time.time()``), read or not, at
        most ``chunks`` transactions of ``EXPIRE_CHUNK`` each (the workers' commits wait for
        one at most; the caller, for ``chunks``); how many."""
        n = 0
        for _ in range(chunks):
            with self._transaction():
                q = "SELECT id FROM result_times WHERE ts < ? LIMIT ?"
                ids = [(i,) for (i,) in self._db.execute(q, (before, EXPIRE_CHUNK))]
                self._db.executemany("DELETE FROM results WHERE id = ?", ids)
                self._db.executemany("DELETE FROM result_times WHERE id = ?", ids)
            n += len(ids)
            if len(ids) < EXPIRE_CHUNK:
                break
        return n

    def dead_letters(self) -> list[dict[str, Any]]:
        cols = ("id", "partition", "offset", "key", "reason", "traceback", "ts")
        rows = self._db.execute("SELECT * FROM dead_letters ORDER BY seq")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    # -- the atomic commit -----------------------------------------------------------------------
    def commit(
        self,
        offsets: dict[int, int],
        states: list[tuple[str, int, bytes]],
        results: list[tuple[str, int, int, bytes]],
        dead: list[tuple[str, int, int, str, str, str]],
    ) -> None:
        """Commit states, results, dead letters and offsets of partitions in one transaction.

        Raises ``Fenced`` (and writes nothing) if another worker claimed one of the partitions.
        """
        now = time.time()
        with self._transaction():
            parts = sorted(offsets)
            for p, epoch in self._rows_for(parts, "partition, epoch"):
                if epoch != self._epochs.get(p):
                    raise Fenced(
                        f"partition {p} was claimed by a newer worker (epoch {epoch}, "
                        f"ours {self._epochs.get(p)}); this worker must stop"
                    )
            self._db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?)", states)
            if results:
                self._db.executemany(
                    "INSERT OR REPLACE INTO results (id, partition, seq, output) "
                    "VALUES (?, ?, ?, ?)",
                    results,
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO result_times VALUES (?, ?)",
                    [(r[0], now) for r in results],
                )
            if dead:
                self._db.executemany(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(*d, now) for d in dead],
                )
            self._db.executemany(
                "UPDATE partitions SET committed = ? WHERE partition = ?",
                [(off, p) for p, off in offsets.items()],
            )

    def close(self) -> None:
        self._db.close()


def forget_results(data_dir: Path, durability: str, message_ids: Iterable[str]) -> int:
    """``CheckpointStore.forget`` on a connection of its own (for another thread)."""
    store = CheckpointStore(data_dir, durability=durability)
    try:
        return store.forget(message_ids)
    finally:
        store.close()


def expire_results(data_dir: Path, durability: str, before: float, chunks: int) -> int:
    """``CheckpointStore.expire`` on a connection of its own (for another thread)."""
    store = CheckpointStore(data_dir, durability=durability)
    try:
        return store.expire(before, chunks)
    finally:
        store.close()
