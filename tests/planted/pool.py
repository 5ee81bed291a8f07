"""MiniPool: a small, correct, resilient multiprocess pool -- a chaos target whose subclasses in
``bugs.py`` each plant one bug, so that the gate's own tests can see chaosgate catch it.

How it stays correct:

- ``submit`` returns once the message is durable: a committed row of the ``intake`` table (SQLite
  in WAL mode, in ``data_dir``); submitting an id again is a no-op. A payload that cannot be
  pickled is refused (``system.PayloadError``) and nothing is written.
- A key always goes to the same worker (a stable hash of the key, blake2b: crc32's low bits put
  k0..k3 all on one of two workers), over the worker's own socket, so per-key order holds.
- A worker applies a message in one transaction: recorded in ``applied`` and appended to its key's
  list in ``lists``, unless ``applied`` has it already -- dedup in the durable store, so a retry
  is exactly-once. It acknowledges in batches (every 20 ms or 50 messages): a crash does leave
  applied-but-unacknowledged messages behind. A payload it cannot unpickle is dead-lettered.
- The parent keeps, per worker, what it sent that is not acknowledged (``in_flight``) and what
  came while no worker was ready (``waiting``). A worker's death (its process sentinel, or EOF
  on its socket) starts a replacement at once; once it is ready it gets the dead one's in-flight
  messages again (``retry``), then the waiting ones, in order. The oldest message in flight
  during 5 deaths in a row with no progress is dead-lettered as poison; from the second such
  death on (or a death before the worker said ready), restarts back off (50 ms doubling to 1 s).
- ``start`` on an existing data dir queues every intake row that is neither applied nor
  dead-lettered again: a crash of the whole pool loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import multiprocessing
import os
import pickle
import signal
import socket
import sqlite3
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from chaos._target import append_id

ACK_INTERVAL = 0.02  # a worker acknowledges at most this long after applying ...
ACK_BATCH = 50  # ... or once it has this many to acknowledge
POISON_DEATHS = 5
STOP_TIMEOUT = 5.0
COMMITTED_TIMEOUT = 10.0  # well inside the harness's target_timeout (30 s)
READY, STOP = b"ready", b"stop"  # control frames (a message frame is a pickle: never these)

SCHEMA = """
CREATE TABLE IF NOT EXISTS intake (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id NOT NULL UNIQUE, key TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS applied (id PRIMARY KEY);
CREATE TABLE IF NOT EXISTS lists (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, id NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (id PRIMARY KEY, reason TEXT NOT NULL);
"""  # ids have no type: an int id comes back an int


def open_db(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, 30 s busy timeout.
    synchronous=NORMAL: a commit survives the death of any process (not a power cut)."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# --- the worker process ---------------------------------------------------------------------


def worker_main(
    sock: socket.socket, db_path: str, dedup: str = "durable", exit_on_eof: bool = True
) -> None:
    """A worker: say ready, then apply each message its socket brings and acknowledge it in
    batches; exit on a stop frame, or on EOF (the parent is gone, or the socket was broken).

    ``dedup="memory"`` and ``exit_on_eof=False`` are planted bugs (see bugs.py)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # die quietly, like SIGTERM
    conn = Connection(sock.detach())
    db = open_db(db_path)
    seen: set[str] | None = set() if dedup == "memory" else None
    acks: list[str] = []
    since = 0.0  # when the oldest of ``acks`` was applied
    try:
        conn.send_bytes(READY)
        while True:
            due = since + ACK_INTERVAL - time.monotonic()
            if acks and (due <= 0 or len(acks) >= ACK_BATCH):
                conn.send_bytes(pickle.dumps(acks))
                acks = []
                continue
            if not conn.poll(max(due, 0.0) if acks else None):
                continue
            frame = conn.recv_bytes()
            if frame == STOP:
                if acks:
                    conn.send_bytes(pickle.dumps(acks))
                return
            mid, key, blob, check, retried = pickle.loads(frame)
            apply(db, mid, key, blob, check=check, seen=seen)
            if not acks:
                since = time.monotonic()
            acks.append(mid)
            if retried:  # acknowledge a retried message at once: the parent sees progress
                since = 0.0
    except (EOFError, OSError):
        if not exit_on_eof:
            while True:  # the planted bug: an orphan that outlives its pool
                time.sleep(3600)
    finally:
        db.close()


def apply(
    db: sqlite3.Connection,
    mid: str,
    key: str,
    blob: bytes,
    *,
    check: bool = True,
    seen: set[str] | None = None,
) -> None:
    """Apply one message: the payload's effects (chaos's list-append handler), then, in one
    transaction, record it as applied and append its id to its key's list -- unless it was
    applied before. A payload that cannot be unpickled (or whose handler raises) is dead-lettered.

    ``check=False`` (skip the applied check) and ``seen`` (dedup by an in-memory set) are
    planted bugs (see bugs.py)."""
    try:
        payload = pickle.loads(blob)
    except Exception as e:
        dead_letter(db, mid, f"cannot unpickle the payload: {type(e).__name__}: {e}")
        return
    try:
        append_id(None, SimpleNamespace(id=mid, payload=payload))  # sleep, started, leak_mb
    except Exception as e:
        dead_letter(db, mid, f"the handler raised {type(e).__name__}: {e}")
        return
    with transaction(db):
        sql = "INSERT OR IGNORE INTO applied(id) VALUES (?)"
        new = db.execute(sql, (mid,)).rowcount == 1
        if seen is not None:
            new = mid not in seen
            seen.add(mid)
        if new or not check:
            db.execute("INSERT INTO lists(key, id) VALUES (?, ?)", (key, mid))


def dead_letter(db: sqlite3.Connection, mid: str, reason: str) -> None:
    with transaction(db):
        db.execute("INSERT OR IGNORE INTO dead_letters(id, reason) VALUES (?, ?)", (mid, reason))


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL). Under forkserver the parent is the forkserver, which exits when
    the pool's process does; EOF on the socket is the main way a worker learns its pool is gone."""
    with contextlib.suppress(Exception):  # Linux only
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


# --- the parent -----------------------------------------------------------------------------


@dataclass(eq=False)
class Message:
    id: str
    key: str
    blob: bytes  # the pickled payload
    attempt: int = 0  # times sent again after a worker died
    check: bool = True  # the worker skips it if already applied (always, in a correct pool)


@dataclass(eq=False)
class Slot:
    """One worker's place: its current process and the work that belongs to it."""

    index: int
    process: Any = None
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None  # serving the current process
    timer: asyncio.TimerHandle | None = None  # a restart to come
    gen: int = 0  # bumped at each death: callbacks of an older process are ignored
    ready: bool = False  # the process said ready: send to it directly
    progressed: bool = False  # the process acknowledged something
    strikes: int = 0  # deaths in a row with work in flight and no progress
    failed_starts: int = 0  # deaths in a row before saying ready
    in_flight: deque[Message] = field(default_factory=deque)  # sent, not acknowledged
    retry: deque[Message] = field(default_factory=deque)  # a dead process had them in flight
    waiting: deque[Message] = field(default_factory=deque)  # came while no process was ready


def _frame(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data  # multiprocessing.Connection's framing


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack("!i", await reader.readexactly(4))
    if size == -1:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return await reader.readexactly(size)


class MiniPool:
    """The correct pool (see the module doc); a target: ``MiniPool(data_dir, workers=2)``."""

    capabilities = frozenset({"dead_letters", "restart"})
    worker_options: dict[str, Any] = {"dedup": "durable", "exit_on_eof": True}
    lazy = False  # start the workers at the first message rather than at start()
    stop_timeout = STOP_TIMEOUT

    def __init__(self, data_dir: str | Path, workers: int = 2, **_ignored: Any):
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "minipool.sqlite"
        self.workers = workers
        self._ctx = multiprocessing.get_context("forkserver")
        self._slots = [Slot(i) for i in range(workers)]
        self._spawned = False
        self._dead: list[Any] = []  # processes gone, to reap
        self._db: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # --- the target protocol ----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = open_db(self.db_path)
        self._db.executescript(SCHEMA)
        if not self.lazy:
            self._spawn_all()
        self._recover()

    async def submit(self, key: str, payload: Any, id: str) -> None:
        if self._db is None or self._stopping:
            raise RuntimeError("the pool is not running")
        try:
            blob = pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            from system import PayloadError

            raise PayloadError(
                f"message {id!r}: its payload cannot be pickled ({type(e).__name__}: {e}); "
                "nothing was written"
            ) from e
        if self._write_intake(id, key, blob):
            self._route(Message(id, key, blob))
        await asyncio.sleep(0)  # let deaths and acknowledgements be seen between submits

    def worker_pids(self) -> list[int]:
        return [s.process.pid for s in list(self._slots) if s.process is not None]

    async def committed(self) -> dict[str, list[Any]]:
        """Once every message acknowledged so far is applied (or dead-lettered, or dropped: at
        most 10 s), each key's committed ids in commit order, read from the store."""
        if self._db is None or self._stopping:
            return await self.committed_now()
        unfinished = {m.id for m in self._unfinished()}
        deadline = time.monotonic() + COMMITTED_TIMEOUT
        while unfinished and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            unfinished &= {m.id for m in self._unfinished()}
        return await self.committed_now()

    async def committed_now(self) -> dict[str, list[Any]]:
        """What is committed right now (no waiting)."""
        state: dict[str, list[Any]] = {}
        for key, mid in self._query("SELECT key, id FROM lists ORDER BY seq"):
            state.setdefault(key, []).append(mid)
        return state

    def dead_lettered(self) -> dict[str, str]:
        return dict(self._query("SELECT id, reason FROM dead_letters"))

    async def stop(self) -> None:
        """Stop frames, EOF, up to ``stop_timeout`` (5 s) for the workers to exit, SIGKILL for
        the rest; never hangs. What was not applied stays in the intake, for the next start."""
        if self._db is None:
            return
        self._stopping = True
        stopping = self._to_stop()
        for slot in self._slots:
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.writer is not None:
                if slot.process in stopping:
                    slot.writer.write(_frame(STOP))
                slot.writer.close()  # EOF for every worker
        deadline = time.monotonic() + self.stop_timeout
        while any(p.is_alive() for p in stopping) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for process in stopping:
            self._kill(process)
        tasks = {s.task for s in self._slots if s.task is not None and not s.task.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        for slot in self._slots:
            if slot.process is not None:
                self._loop.remove_reader(slot.process.sentinel)
                if slot.process in stopping:
                    slot.process = None
        for process in stopping + self._dead:
            self._kill(process)
            process.join(2.0)
            with contextlib.suppress(ValueError):
                process.close()
        self._dead = []
        self._db.close()
        self._db = None

    # --- not in the protocol: for tests that aim at a key's worker ------------------------

    def owner(self, key: str) -> int:
        """The index of the worker slot that owns ``key``."""
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.workers

    def worker_of(self, key: str) -> int | None:
        """The pid of the worker process that owns ``key`` (None while it is replaced)."""
        process = self._slots[self.owner(key)].process
        return None if process is None else process.pid

    # --- intake and routing -----------------------------------------------------------------

    def _write_intake(self, id: str, key: str, blob: bytes) -> bool:
        """Make the message durable (one committed row); False if its id was submitted before."""
        assert self._db is not None
        with transaction(self._db) as db:
            sql = "INSERT OR IGNORE INTO intake(id, key, payload) VALUES (?, ?, ?)"
            return db.execute(sql, (id, key, blob)).rowcount == 1

    def _recover(self) -> None:
        """Queue again every intake row neither applied nor dead-lettered, in intake order."""
        assert self._db is not None
        rows = self._db.execute(
            "SELECT id, key, payload FROM intake WHERE id NOT IN (SELECT id FROM applied) "
            "AND id NOT IN (SELECT id FROM dead_letters) ORDER BY seq"
        ).fetchall()
        for mid, key, blob in rows:
            self._route(Message(mid, key, blob))

    def _route(self, message: Message) -> None:
        if not self._spawned:
            self._spawn_all()
        slot = self._slots[self.owner(message.key)]
        if slot.ready:
            self._send(slot, message)
        else:
            slot.waiting.append(message)

    def _send(self, slot: Slot, message: Message) -> None:
        assert slot.writer is not None
        slot.in_flight.append(message)
        if slot.writer.transport.is_closing():  # broken: its death is about to be handled
            return
        m = message
        slot.writer.write(_frame(pickle.dumps((m.id, m.key, m.blob, m.check, m.attempt > 0))))

    def _unfinished(self) -> Iterator[Message]:
        for slot in list(self._slots):
            yield from list(slot.in_flight)
            yield from list(slot.retry)
            yield from list(slot.waiting)

    # --- workers: start, serve, lose ----------------------------------------------------------

    def _spawn_all(self) -> None:
        self._spawned = True
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        """Start a worker process for ``slot`` and a task to serve it."""
        assert self._loop is not None
        slot.timer = None
        if self._stopping:
            return
        ours, theirs = socket.socketpair()
        try:
            process = self._ctx.Process(
                target=worker_main,
                args=(theirs, str(self.db_path)),
                kwargs=dict(self.worker_options),
                name=f"minipool-worker-{slot.index}",
                daemon=True,
            )
            process.start()
        except Exception:  # e.g. the system refused a process: try again a little later
            ours.close()
            slot.timer = self._loop.call_later(0.5, self._spawn, slot)
            return
        finally:
            theirs.close()
        slot.process, slot.ready, slot.progressed = process, False, False
        self._loop.add_reader(process.sentinel, self._exited, slot, slot.gen, process)
        slot.task = self._loop.create_task(self._serve(slot, slot.gen, ours))

    async def _serve(self, slot: Slot, gen: int, sock: socket.socket) -> None:
        """The worker's hello (then send it what waits), then its acknowledgements, until its
        socket ends; then it is lost. The pool never cancels it: it ends when its socket does."""
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except Exception:
            sock.close()
            return self._lost(slot, gen)
        try:
            if gen != slot.gen:
                return
            slot.writer = writer
            if self._stopping:  # stop() came before this connection: its stop frame too
                if slot.process in self._to_stop():
                    writer.write(_frame(STOP))
                return
            if await _read_frame(reader) != READY:
                return
            if gen != slot.gen:
                return
            slot.ready = True
            for message in self._resend_order(slot):
                self._send(slot, message)
            while True:
                acks = pickle.loads(await _read_frame(reader))
                if gen != slot.gen:
                    return
                self._acked(slot, acks)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # the loop is being shut down without a stop()
            self._stopping = True  # start nothing more; this worker goes with the loop
            if gen == slot.gen and slot.process is not None:
                self._kill(slot.process)
            raise
        finally:
            writer.close()
            self._lost(slot, gen)

    def _acked(self, slot: Slot, ids: list[str]) -> None:
        slot.progressed, slot.strikes = True, 0
        for mid in ids:  # in the order sent
            while slot.in_flight and slot.in_flight.popleft().id != mid:
                pass

    def _exited(self, slot: Slot, gen: int, process: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(process.sentinel)  # it stays readable
        self._lost(slot, gen)

    def _lost(self, slot: Slot, gen: int) -> None:
        """The worker of generation ``gen`` died or its socket ended (whichever is seen first):
        make sure it is dead, then put its work back and start a replacement."""
        assert self._loop is not None
        if gen != slot.gen or self._stopping:
            return
        slot.gen += 1
        slot.failed_starts = 0 if slot.ready else slot.failed_starts + 1
        process, slot.process, slot.ready = slot.process, None, False
        self._loop.remove_reader(process.sentinel)
        self._kill(process)
        self._dead.append(process)
        if slot.writer is not None:
            slot.writer.transport.abort()
            slot.writer = None
        self._reap()
        self._worker_died(slot)

    def _worker_died(self, slot: Slot) -> None:
        retried = list(slot.in_flight)
        slot.in_flight.clear()
        if not retried:
            slot.strikes = 0
        elif slot.progressed:
            slot.strikes = 1
        else:
            slot.strikes += 1
        if slot.strikes >= POISON_DEATHS:  # the worker keeps dying on the oldest in flight
            poison = retried.pop(0)
            self._dead_letter(poison.id, f"poison: in flight during {POISON_DEATHS} worker deaths")
            slot.strikes = 0
        self._requeue(slot, retried)
        assert self._loop is not None
        slot.timer = self._loop.call_later(self.restart_delay(slot), self._spawn, slot)

    def _requeue(self, slot: Slot, retried: list[Message]) -> None:
        """Keep what the dead worker had in flight, for its replacement."""
        for message in retried:
            message.attempt += 1
        slot.retry.extend(retried)

    def _resend_order(self, slot: Slot) -> list[Message]:
        """What a new worker gets first: the retried messages (older), then those that waited."""
        order = [*slot.retry, *slot.waiting]
        slot.retry.clear()
        slot.waiting.clear()
        return order

    def restart_delay(self, slot: Slot) -> float:
        """At once; from the second death in a row without progress (or the first before the
        worker was ready), 50 ms doubling to 1 s."""
        n = max(slot.strikes - 1, slot.failed_starts)
        return 0.0 if n <= 0 else min(0.05 * 2 ** (n - 1), 1.0)

    def _to_stop(self) -> list[Any]:
        """The worker processes ``stop`` ends: every live one."""
        return [s.process for s in self._slots if s.process is not None]

    def _kill(self, process: Any) -> None:
        with contextlib.suppress(ValueError, ProcessLookupError):
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)

    def _reap(self) -> None:
        for process in list(self._dead):
            if not process.is_alive():
                process.close()
                self._dead.remove(process)

    # --- the store ----------------------------------------------------------------------------

    def _dead_letter(self, mid: str, reason: str) -> None:
        assert self._db is not None
        dead_letter(self._db, mid, reason)

    def _query(self, sql: str) -> list[Any]:
        """Read with a connection of its own (any thread may ask)."""
        if not self.db_path.exists():
            return []
        db = sqlite3.connect(self.db_path, timeout=30.0)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # no tables yet
            return []
        finally:
            db.close()
