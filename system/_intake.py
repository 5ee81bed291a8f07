"""The durable intake log: the source of truth for every submitted message.

One SQLite database, ``<data dir>/intake.db``, in WAL mode. Every message gets a global,
monotonic offset and is stored with its caller-chosen or generated id, key, partition and
pickled payload. The pool appends many messages per transaction (group commit): ``append`` is
called from one writer thread with everything submitted since the previous commit, and returns
once the batch is durable. ``synchronous=FULL`` makes "durable" survive power loss;
``durability="process"`` (``synchronous=NORMAL``) survives any process crash, which is all
``kill -9`` needs, for less I/O.

Format 2 stores a group commit as one row of ``batches`` (its messages pickled together, at most
``BATCH_BYTES`` of payload a row), not a row per message: SQLite's per-row work was most of the
writer's time. An id the caller chose is also in ``ids`` (a resubmitted one is a no-op that
returns the first offset); a generated id is ``<prefix>-<offset>``, the prefix random and kept
in ``meta`` for the data dir's life, so it is unique by construction, costs no index entry, and
is still known when a caller resubmits it (found at its offset). A caller may not choose an id
of that form for an offset not given yet: the pool would generate it later, for another
message.
``compact`` deletes whole batches that are both committed (every partition in them, up to its
offset there) and older than the id-dedup window, with their ids, and thins one that a lagging
partition holds (rewritten with only what is still to commit, once that is half of it or less);
SQLite reuses the freed pages, so the file stops growing once it holds a window's worth. A
format-1 log (a row per message) is converted at open, in one transaction.

The partition count is fixed for a data dir (state lives per partition), so it is stored in the
``meta`` table and a mismatch is refused with ``DataDirError``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import IO

from chaos import failpoints
from chaos.failpoints import failpoint

from ._errors import DataDirError
from ._frames import Row

FORMAT = "2"
_CHUNK = 500  # ids per "IN (...)" lookup, below SQLite's variable limit
BATCH_BYTES = 8 << 20  # payload bytes in one row of batches, at most (and one message, at least)
BATCH_ROWS = 2_000  # messages in one row of batches, at most
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_OFFSET, _PARTITION, _PAYLOAD, _SECOND = itemgetter(0), itemgetter(3), itemgetter(4), itemgetter(1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    first INTEGER PRIMARY KEY,  -- the offset of its first message (or before: thinned)
    last INTEGER NOT NULL,      -- and of its last (or after)
    n INTEGER NOT NULL,         -- how many messages (a converted log's offsets have gaps)
    ts REAL NOT NULL,           -- when it was written (time.time(): ages survive a restart)
    parts BLOB NOT NULL,        -- pickled {partition: its last offset in the batch}
    named BLOB,                 -- pickled [id, ...] of its messages in ids, if any
    rows BLOB NOT NULL          -- pickled [(offset, id, key, partition, payload), ...]
);
CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
"""

_INSERT = "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)"
_COLUMNS = ["first", "last", "n", "ts", "parts", "named", "rows"]
# Where format 1 kept its messages: a view now, so that an older chaosgate opening this file
# fails at once ("no such column: seq") instead of reading an empty log -- offsets from 0 again,
# taken by its workers for messages already committed.
_GUARD = (
    "CREATE VIEW IF NOT EXISTS log AS SELECT 'this intake.db is in format 2: open it with a "
    "chaosgate that reads it' AS refused"
)


Batch = tuple[int, int, int, float, bytes, bytes | None, bytes]  # a row of batches


def _chunks(rows: Sequence[Row]) -> Iterator[Sequence[Row]]:
    """``rows`` in runs of at most ``BATCH_ROWS`` messages and ``BATCH_BYTES`` of payload (one
    message at least): each is pickled on its own, so another thread gets the GIL between."""
    for lo in range(0, len(rows), BATCH_ROWS):
        part = rows[lo : lo + BATCH_ROWS]
        if sum(map(len, map(_PAYLOAD, part))) <= BATCH_BYTES:  # the usual case
            yield part
            continue
        start, size = 0, 0
        for i, row in enumerate(part):
            size += len(row[4])
            if size > BATCH_BYTES and i > start:
                yield part[start:i]
                start, size = i, len(row[4])
        yield part[start:]


def _last_offsets(rows: Sequence[Row]) -> dict[int, int]:
    """Each partition's last offset among ``rows`` (in offset order)."""
    return dict(zip(map(_PARTITION, rows), map(_OFFSET, rows), strict=True))


def _batches(rows: Sequence[Row], named: Sequence[tuple[str, int]]) -> Iterator[Batch]:
    """``rows`` as rows of ``batches`` (``_chunks``), each with its partitions' last offsets and
    the ids of ``named`` it holds; made as they are written."""
    names = sorted(named, key=_SECOND)
    j, now = 0, time.time()
    for chunk in _chunks(rows):
        last = chunk[-1][0]
        k = j
        while k < len(names) and names[k][1] <= last:
            k += 1
        mine = [n[0] for n in names[j:k]]
        j = k
        yield (
            chunk[0][0],
            last,
            len(chunk),
            now,
            pickle.dumps(_last_offsets(chunk), _PROTOCOL),
            pickle.dumps(mine, _PROTOCOL) if mine else None,
            pickle.dumps(chunk if type(chunk) is list else list(chunk), _PROTOCOL),
        )


def connect(path: Path, *, durability: str = "fsync") -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, autocommit (explicit BEGIN)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'fsync' else 'NORMAL'}")
    return conn


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE), rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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
        if meta.get("format", FORMAT) not in ("1", FORMAT):
            self._db.close()
            raise DataDirError(
                f"{self.path} is in intake format {meta['format']}, newer than this chaosgate "
                f"reads ({FORMAT}); open it with the chaosgate that wrote it"
            )
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
        self.id_prefix: str = meta.get("id_prefix") or self._new_id_prefix()
        self._looked: dict[int, tuple[int, ...]] = {}  # batch -> its laggards' committed, when
        # compaction last looked at it and could not thin it (or did)
        if self._table("log"):
            if meta.get("format") == FORMAT:  # written to by an older chaosgate since
                self._db.close()
                raise DataDirError(
                    f"{self.path} is in format {FORMAT} but has a format-1 log table: an older "
                    "chaosgate wrote to it since. Its messages are not in the log this one "
                    "reads; restore the data dir from before, or open it with that chaosgate"
                )
            self._convert_v1()
        self._db.execute(_GUARD)
        columns = [c[1] for c in self._db.execute("PRAGMA table_info(batches)")]
        if columns != _COLUMNS:  # a development build's format 2 (no release wrote it)
            self._db.close()
            raise DataDirError(
                f"{self.path} has a batches table of columns {columns}, not {_COLUMNS}: a "
                "development build of this format wrote it; start a new data dir"
            )
        # Never an offset twice: past every batch kept, and every batch compaction deleted.
        (last,) = self._db.execute("SELECT max(last) FROM batches").fetchone()
        self.next_offset: int = max(-1 if last is None else last + 1, self.floor())

    def _new_id_prefix(self) -> str:
        """This data dir's prefix of generated ids, made once (whoever opens it first)."""
        prefix = os.urandom(6).hex()
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id_prefix', ?)", (prefix,))
        return str(self._db.execute("SELECT v FROM meta WHERE k = 'id_prefix'").fetchone()[0])

    def reach(self, committed: dict[int, int]) -> int | None:
        """Go on past every offset ``committed`` (checkpoints.db) names; the log's end before,
        if it was behind them: it lost its tail (``durability="process"`` and a power loss, or
        an older copy put back). Those messages are gone; a new one given such an offset would
        be taken by its worker for one already applied, and skipped."""
        top = max(committed.values(), default=-1)
        if top < self.next_offset:
            return None
        end, self.next_offset = self.next_offset, top + 1
        return end

    def generated_offset(self, mid: str) -> int | None:
        """The offset ``mid`` names if it is of this log's generated form, else None."""
        head, sep, tail = mid.rpartition("-")
        if not sep or head != self.id_prefix or not tail.isdecimal():
            return None
        offset = int(tail)
        return offset if str(offset) == tail else None

    def _table(self, name: str) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self._db.execute(q, (name,)).fetchone() is not None

    def _convert_v1(self) -> None:
        """A format-1 log (a row per message) rewritten as batches, its ids all kept (which
        were generated is not known), in one transaction: a crash leaves it format 1."""
        with self._transaction():
            rows = self._db.execute("SELECT seq, id, key, partition, payload FROM log ORDER BY seq")
            chunk: list[Row] = []
            size = 0
            for row in rows:  # a batch's worth in memory at a time, whatever the payloads
                chunk.append(row)
                size += len(row[4])
                if len(chunk) == BATCH_ROWS or size >= BATCH_BYTES:
                    self._insert_all_named(chunk)
                    chunk, size = [], 0
            self._insert_all_named(chunk)
            self._db.execute("DROP TABLE log")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))

    def _insert_all_named(self, rows: list[Row]) -> None:
        """``rows``, every id among them kept in ``ids`` (a converted log's)."""
        if rows:
            named = [(r[1], r[0]) for r in rows]
            self._insert(_batches(rows, named), named)

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)

    def existing(self, ids: Sequence[str]) -> dict[str, int]:
        """Offsets of those ``ids`` already in the log: chosen by a caller, or generated."""
        found: dict[str, int] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            q = f"SELECT id, seq FROM ids WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self._db.execute(q, chunk))
        wanted: dict[int, str] = {}  # generated ids resubmitted: known while their batch is kept
        for mid in ids:
            offset = None if mid in found else self.generated_offset(mid)
            if offset is not None:
                wanted[offset] = mid
        found.update(self._generated_at(wanted))
        return found

    def _generated_at(self, wanted: dict[int, str]) -> Iterator[tuple[str, int]]:
        """``(id, offset)`` of each wanted offset whose message has that id, each batch that
        holds some of them unpickled once (a resubmit of 20,000 generated ids cost 13 s when
        each unpickled its own)."""
        q = "SELECT first, last FROM batches WHERE first <= ? ORDER BY first DESC LIMIT 1"
        spans: dict[int, list[int]] = {}
        for offset in wanted:
            span = self._db.execute(q, (offset,)).fetchone()
            if span is not None and span[1] >= offset:
                spans.setdefault(span[0], []).append(offset)
        for first, offsets in spans.items():
            (blob,) = self._db.execute(
                "SELECT rows FROM batches WHERE first = ?", (first,)
            ).fetchone()
            at = {r[0]: r[1] for r in pickle.loads(blob)}
            yield from ((wanted[o], o) for o in offsets if at.get(o) == wanted[o])

    def append(self, rows: Sequence[Row], named: Sequence[tuple[str, int]] = ()) -> None:
        """Durably append ``(offset, id, key, partition, payload)`` rows (consecutive offsets)
        in one transaction; ``named``: the ``(id, offset)`` of those whose id the caller chose."""
        if not rows:
            return
        batches = _batches(rows, named)
        one = len(rows) <= BATCH_ROWS and sum(map(len, map(_PAYLOAD, rows))) <= BATCH_BYTES
        if one and not named:  # one statement: its own transaction, and one wait for the GIL
            self._db.execute(_INSERT, next(batches))  # after it, not three
            return
        with self._transaction():
            self._insert(batches, named)

    def _insert(self, batches: Iterable[Batch], named: Sequence[tuple[str, int]]) -> None:
        self._db.executemany(_INSERT, batches)
        if named:
            self._db.executemany("INSERT INTO ids VALUES (?, ?)", named)

    def compact(self, committed: dict[int, int], below: int, before: float | None = None) -> int:
        """Delete the batches wholly under offset ``below`` (and written before ``before``, a
        ``time.time()``, if given) whose every partition has committed its messages in them,
        and their ids; how many messages. Such a batch that one lagging partition holds is
        thinned instead, once at least half its messages are committed: rewritten with only
        the messages still to commit (so a partition that lags holds its own messages, not
        every group commit since). What a replay needs (above a partition's committed offset)
        is never touched, and a crash mid-way changes nothing (one transaction)."""
        if below <= 0 or not committed:
            return 0
        gone: list[tuple[int, int, int, bytes | None]] = []
        thinned: list[tuple[int, bytes, bytes | None, bytes, int]] = []  # n, parts, named, rows
        dropped_ids: list[str] = []
        looked: dict[int, tuple[int, ...]] = {}
        n = 0
        through = self.compacted_through()  # per partition, its last offset deleted
        q = "SELECT first, last, n, parts, named FROM batches WHERE last < ? AND ts < ?"
        when = before if before is not None else float("inf")
        for first, last, size, parts, named in self._db.execute(
            q + " ORDER BY first", (below, when)
        ):
            lasts = pickle.loads(parts)
            done = {p for p, o in lasts.items() if committed.get(p, -1) >= o}
            if len(done) == len(lasts):
                gone.append((first, last, size, named))
                n += size
                for p, o in lasts.items():
                    through[p] = max(through.get(p, -1), o)
            elif 2 * len(done) >= len(lasts):  # most of its partitions are done: a look,
                behind = tuple(committed.get(p, -1) for p in lasts if p not in done)
                if self._looked.get(first) == behind:
                    continue  # unless its laggards moved on since the last (a batch unpickled)
                thin = self._thin(first, size, named, committed)
                looked[first] = behind
                if thin is not None:
                    batch, dropped, names = thin
                    thinned.append(batch)
                    n += size - batch[0]
                    dropped_ids += names
                    for p, o in dropped.items():
                        through[p] = max(through.get(p, -1), o)
        with self._transaction():
            self._db.executemany("DELETE FROM batches WHERE first = ?", [(g[0],) for g in gone])
            self._db.executemany(
                "UPDATE batches SET n = ?, parts = ?, named = ?, rows = ? WHERE first = ?",
                thinned,
            )
            ids = [(i,) for *_, named in gone if named for i in pickle.loads(named)]
            self._db.executemany("DELETE FROM ids WHERE id = ?", ids + [(i,) for i in dropped_ids])
            meta = [("compacted_through", json.dumps(through))]
            if gone:  # offsets are never given again, even once their batches are gone
                meta.append(("floor", str(max(self.floor(), gone[-1][1] + 1))))
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
            if failpoints.ACTIVE:
                failpoint("intake.compact", deleted=n)
        self._looked.update(looked)
        for g in gone:
            self._looked.pop(g[0], None)
        if failpoints.ACTIVE:
            failpoint("intake.compacted", deleted=n)
        return n

    def _thin(
        self, first: int, size: int, named: bytes | None, committed: dict[int, int]
    ) -> tuple[tuple[int, bytes, bytes | None, bytes, int], dict[int, int], list[str]] | None:
        """Batch ``first`` without its committed messages, if they are at least half of it:
        ``(n, parts, named, rows, first)``, each partition's last offset dropped, and the
        dropped ids of ``ids``; None if not worth a rewrite (each one halves a batch at
        least, so no message is pickled again more than ~11 times)."""
        (blob,) = self._db.execute("SELECT rows FROM batches WHERE first = ?", (first,)).fetchone()
        rows = pickle.loads(blob)
        keep = [r for r in rows if r[0] > committed.get(r[3], -1)]
        if 2 * len(keep) > size:
            return None
        gone = [r for r in rows if r[0] <= committed.get(r[3], -1)]
        names = set(pickle.loads(named)) if named else set()
        kept_names = [r[1] for r in keep if r[1] in names]
        batch = (
            len(keep),
            pickle.dumps(_last_offsets(keep), _PROTOCOL),
            pickle.dumps(kept_names, _PROTOCOL) if kept_names else None,
            pickle.dumps(keep, _PROTOCOL),
            first,
        )
        return batch, _last_offsets(gone), list(names - set(kept_names))

    def floor(self) -> int:
        """The offset past every batch compaction deleted (0: none)."""
        row = self._db.execute("SELECT v FROM meta WHERE k = 'floor'").fetchone()
        return int(row[0]) if row else 0

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

    def read_after(self, committed: dict[int, int], partitions: int) -> Iterator[Row]:
        """Every message not yet committed by its partition (``offset > committed[partition]``).

        A partition that no worker ever claimed has no entry: it starts from the beginning.
        """
        low = min(committed.get(p, -1) for p in range(partitions))
        q = "SELECT rows FROM batches WHERE last > ? ORDER BY first"
        for (blob,) in self._db.execute(q, (low,)):
            for row in pickle.loads(blob):
                if row[0] > committed.get(row[3], -1):
                    yield row

    def scan(self) -> Iterator[Row]:
        for (blob,) in self._db.execute("SELECT rows FROM batches ORDER BY first"):
            yield from pickle.loads(blob)

    def count(self) -> int:
        q = "SELECT coalesce(sum(n), 0) FROM batches"
        return int(self._db.execute(q).fetchone()[0])

    def close(self) -> None:
        self._db.close()
