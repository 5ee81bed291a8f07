"""The durable intake log: the source of truth for every submitted message.

One SQLite database, ``<data dir>/intake.db``, in WAL mode. Every message gets a global,
monotonic offset (``seq``) and is stored with its caller-chosen or generated id (unique: a
resubmitted id is a no-op that returns the first offset), key, partition and pickled payload.
``compact`` deletes what is both committed and older than the id-dedup window; SQLite reuses
the freed pages, so the file stops growing once it holds a window's worth.
The pool appends many messages per transaction (group commit): ``append`` is called from one
writer thread with everything submitted since the previous commit, and returns once the batch is
durable. ``synchronous=FULL`` makes "durable" survive power loss; ``durability="process"``
(``synchronous=NORMAL``) survives any process crash, which is all ``kill -9`` needs, for less I/O.

The partition count is fixed for a data dir (state lives per partition), so it is stored in the
``meta`` table and a mismatch is refused with ``DataDirError``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from chaos import failpoints
from chaos.failpoints import failpoint

from ._errors import DataDirError

FORMAT = "1"
_CHUNK = 500  # ids per "IN (...)" lookup, below SQLite's variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    partition INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


def connect(path: Path, *, durability: str = "fsync") -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, autocommit (explicit BEGIN)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'fsync' else 'NORMAL'}")
    return conn


def check_data_dir(path: str | os.PathLike[str], *, create: bool) -> Path:
    """Validate a data dir path, creating it when ``create``; raise ``DataDirError`` otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataDirError(f"data dir {p} is not a directory; pass a directory path")
    if not p.exists():
        if not create:
            raise DataDirError(
                f"data dir {p} does not exist; run `python -m system run --data-dir {p}` first "
                "or pass the data dir of an earlier run"
            )
        if not p.parent.is_dir():
            raise DataDirError(
                f"cannot create data dir {p}: its parent {p.parent} does not exist; "
                "create the parent or choose another path"
            )
        try:
            p.mkdir()
        except OSError as e:
            raise DataDirError(
                f"cannot create data dir {p}: {e.strerror}; choose another path"
            ) from e
    if create and not os.access(p, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {p} is not writable; fix its permissions or choose another")
    if not create and not (p / "intake.db").exists():
        raise DataDirError(
            f"{p} is not a chaosgate data dir (no intake.db); pass the --data-dir of a run"
        )
    return p


def lock_data_dir(path: Path) -> IO[str]:
    """Hold an exclusive lock on ``path`` for as long as the returned file stays open.

    Two pools on one data dir would both dispatch the same log; the second is refused instead.
    The kernel drops the lock when its holder dies, even by SIGKILL, so a crash never leaves a
    stale lock behind.
    """
    f = open(path / "lock", "a+", encoding="ascii")  # the caller closes it
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise DataDirError(
            f"data dir {path} is in use by another pool (pid {holder}); stop that one first, "
            "or use another data dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class IntakeLog:
    """Append-only message log with idempotent ids; one writer (the pool's writer thread)."""

    def __init__(self, data_dir: Path, partitions: int | None, *, durability: str = "fsync"):
        self.path = data_dir / "intake.db"
        try:
            self._db = connect(self.path, durability=durability)
            self._db.executescript(_SCHEMA)
            meta = dict(self._db.execute("SELECT k, v FROM meta"))
        except sqlite3.DatabaseError as e:
            raise DataDirError(
                f"{self.path} is not a usable intake log ({e}); pass another --data-dir"
            ) from e
        if "partitions" in meta:
            stored = int(meta["partitions"])
            if partitions is not None and partitions != stored:
                self._db.close()
                raise DataDirError(
                    f"data dir {data_dir} was made with partitions={stored}, not {partitions}; "
                    f"pass partitions={stored} (--partitions {stored}) or use a new data dir"
                )
            partitions = stored
        else:
            if partitions is None:
                partitions = 64
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("partitions", str(partitions)), ("format", FORMAT)],
                )
        self.partitions: int = partitions
        row = self._db.execute("SELECT max(seq) FROM log").fetchone()
        self.next_offset: int = 0 if row[0] is None else row[0] + 1

    def existing(self, ids: Sequence[str]) -> dict[str, int]:
        """Offsets of those ``ids`` already in the log."""
        found: dict[str, int] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            q = f"SELECT id, seq FROM log WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self._db.execute(q, chunk))
        return found

    def append(self, rows: Sequence[tuple[int, str, str, int, bytes]]) -> None:
        """Durably append ``(offset, id, key, partition, payload)`` rows in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def compact(self, committed: dict[int, int], below: int) -> int:
        """Delete the messages under offset ``below`` that their partition has committed; how
        many. What a replay needs (above a partition's committed offset) is never touched, and
        a crash mid-way deletes nothing (one transaction)."""
        if below <= 0 or not committed:
            return 0
        values = ",".join("(?, ?)" for _ in committed)
        q = (
            f"WITH c(p, o) AS (VALUES {values}) DELETE FROM log WHERE seq < ? "
            "AND seq <= (SELECT o FROM c WHERE p = log.partition)"
        )
        args = [x for item in committed.items() for x in item]
        through = self.compacted_through()
        for p, o in committed.items():
            through[p] = max(through.get(p, -1), min(o, below - 1))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(q, [*args, below])
            n = self._db.execute("SELECT changes()").fetchone()[0]  # (no rowcount after WITH)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('compacted_through', ?)",
                (json.dumps(through),),
            )
            if failpoints.ACTIVE:
                failpoint("intake.compact", deleted=n)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if failpoints.ACTIVE:
            failpoint("intake.compacted", deleted=n)
        return n

    def compacted_through(self) -> dict[int, int]:
        """Per partition, the offset up to which compaction may have deleted its messages."""
        row = self._db.execute("SELECT v FROM meta WHERE k = 'compacted_through'").fetchone()
        return {int(p): o for p, o in json.loads(row[0]).items()} if row else {}

    def check_committed(self, committed: dict[int, int]) -> None:
        """Refuse a checkpoint store older than what compaction deleted as committed."""
        behind = {
            p: (committed.get(p, -1), o)
            for p, o in self.compacted_through().items()
            if committed.get(p, -1) < o
        }
        if behind:
            p, (c, o) = min(behind.items())
            raise DataDirError(
                f"checkpoints.db is older than intake.db: partition {p} is committed up to "
                f"offset {c}, but the intake log deleted its messages up to {o} as committed "
                f"({len(behind)} partitions like it); those messages cannot be replayed. Put "
                "back the checkpoints.db that belongs with this intake.db"
            )

    def read_after(
        self, committed: dict[int, int], partitions: int
    ) -> Iterator[tuple[int, str, str, int, bytes]]:
        """Every message not yet committed by its partition (``offset > committed[partition]``).

        A partition that no worker ever claimed has no entry: it starts from the beginning.
        """
        low = min(committed.get(p, -1) for p in range(partitions))
        for row in self._db.execute("SELECT * FROM log WHERE seq > ? ORDER BY seq", (low,)):
            if row[0] > committed.get(row[3], -1):
                yield row

    def scan(self) -> Iterator[tuple[int, str, str, int, bytes]]:
        yield from self._db.execute("SELECT * FROM log ORDER BY seq")

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM log").fetchone()[0]

    def close(self) -> None:
        self._db.close()
