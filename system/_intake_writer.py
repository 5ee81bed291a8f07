"""The intake writer: submits wait here until they are durable in the intake log.

``submit`` prepares each message (pickled, checked, given its partition), waits while
``max_outstanding`` messages are not committed (backpressure), and parks a future. The writer
task takes every parked submit at once (group commit), appends them in a thread of its own
(in the event loop if the system refuses a thread), drops ids already in the log (a resubmitted
id answers with the first offset), hands the new rows to the router, and answers each future
with its offsets. Every ``compact_every`` messages it then compacts the log (in the same
thread, so never beside an append): what is committed and older than ``dedup_window`` goes;
and results committed more than ``results_age`` seconds ago are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from chaos import failpoints
from chaos.failpoints import failpoint

from ._checkpoint import EXPIRE_CHUNK, expire_results
from ._config import PoolConfig
from ._errors import PayloadError, PoolBroken, UsageError
from ._events import EventLog
from ._fallback import is_refusal
from ._frames import Row
from ._intake import IntakeLog
from ._message import check_key, partition_of
from ._router import Router

#: A prepared submit: ``(id, key, partition, payload, id_was_generated)``.
Entry = tuple[str, str, int, bytes, bool]
Parked = tuple[list[Entry], asyncio.Future[list[int]]]
T = TypeVar("T")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_KEYS_CACHED = 100_000  # keys whose partition is kept (a CRC-32 each, else), then forgotten
log = logging.getLogger("system")


class IntakeWriter:
    def __init__(self, intake: IntakeLog, router: Router, events: EventLog, config: PoolConfig):
        self.intake = intake
        self.router = router
        self.tally = router.tally
        self.events = events
        self.max_payload = config.max_payload_bytes
        self.window, self.age = config.dedup_window, config.dedup_age
        self.results_age, self.durability = config.results_age, config.durability
        self.data_dir = intake.path.parent
        self.compact_every = config.compact_every
        self._since_compact = 0
        self._pending: list[Parked] = []
        self._writing: list[Parked] | None = None
        self._has_pending = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chaosgate-intake")
        self._inline = False  # no thread could be had: write in the loop
        self._generated = intake.id_prefix + "-"  # + the offset: given in _append
        self._parts: dict[str, int] = {}  # key -> partition, for the keys seen lately

    @property
    def writing(self) -> bool:
        return self._writing is not None

    def prepare(self, key: str, payload: Any, mid: str | None) -> Entry:
        """One submit, checked and pickled (the hot path: per message, in the event loop)."""
        if type(key) is not str:
            check_key(key)  # raises, naming the fix
        try:
            blob = pickle.dumps(payload, protocol=_PROTOCOL)
        except Exception as e:
            raise PayloadError(
                f"payload of type {_kind(payload)} for key {key!r} cannot be pickled "
                f"({type(e).__name__}: {e}); nothing was written. Submit plain data (or an "
                "importable class) instead"
            ) from e
        if len(blob) > self.max_payload:
            raise PayloadError(
                f"payload of type {_kind(payload)} for key {key!r} is {len(blob):,} bytes "
                f"pickled, over max_payload_bytes={self.max_payload:,}; nothing was written. "
                "Store it elsewhere and submit a reference, or raise max_payload_bytes"
            )
        part = self._parts.get(key)
        if part is None:
            if len(self._parts) >= _KEYS_CACHED:
                self._parts.clear()
            part = self._parts[key] = partition_of(key, self.router.partitions)
        if mid is None:
            return ("", key, part, blob, True)
        if type(mid) is not str:
            raise UsageError(f"id must be a str or None; got {type(mid).__name__} {mid!r:.60}")
        if mid.startswith(self._generated):
            self._check_not_minted(mid)
        return (mid, key, part, blob, False)

    def _check_not_minted(self, mid: str) -> None:
        """Refuse an id of the pool's generated form for an offset it has not given yet: it
        would generate that id later, for another message (one it gave is resubmitted)."""
        offset = self.intake.generated_offset(mid)
        if offset is not None and offset >= self.intake.next_offset:
            raise UsageError(
                f"id {mid!r} is of the form this pool generates ({self._generated}<offset>), "
                f"for offset {offset}, which it has not given yet: it would be another "
                "message's id. Choose ids of another form (resubmitting an id the pool "
                "generated is fine); nothing was written"
            )

    def prepare_many(self, items: Iterable[tuple[Any, ...]]) -> list[Entry]:
        """``prepare`` for each ``(key, payload[, id])`` item, the common case inlined (a str
        key, a payload that pickles within the limit); anything else goes through ``prepare``,
        which names the fault."""
        dumps, cap, parts, generated = (
            pickle.dumps,
            self.max_payload,
            self._parts,
            self._generated,
        )
        entries: list[Entry] = []
        add = entries.append
        for item in items:
            if len(item) == 2:
                key, payload = item
                mid = None
            elif len(item) == 3:
                key, payload, mid = item
            else:
                raise UsageError(
                    f"submit_many takes (key, payload) or (key, payload, id) items; got "
                    f"{len(item)} values: {item!r:.80}"
                )
            part = parts.get(key) if type(key) is str else None
            if part is None or (mid is not None and type(mid) is not str):
                add(self.prepare(key, payload, mid))
                continue
            try:
                blob = dumps(payload, _PROTOCOL)
            except Exception:
                blob = None
            if blob is None or len(blob) > cap:
                add(self.prepare(key, payload, mid))  # raises, naming the fault
            elif mid is None:
                add(("", key, part, blob, True))
            else:
                if mid.startswith(generated):
                    self._check_not_minted(mid)
                add((mid, key, part, blob, False))
        return entries

    async def submit(self, entries: list[Entry], check_open: Callable[[], None]) -> list[int]:
        """Wait for room, then until ``entries`` are durable; their offsets."""
        while self.tally.outstanding >= self.tally.max_outstanding:
            self.tally.room.clear()
            await self.tally.room.wait()
            check_open()
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((entries, fut))
        self._set_busy()
        self._has_pending.set()
        return await fut

    def _set_busy(self) -> None:
        self.tally.writing = bool(self._pending) or self._writing is not None
        self.tally.update()

    async def run(self) -> None:
        while True:
            await self._has_pending.wait()
            self._has_pending.clear()
            batch, self._pending = self._pending, []
            self._writing = batch
            try:
                rows, offsets = await self._in_thread(self._append, batch)
            except Exception as e:
                err = PoolBroken(
                    f"the intake log could not be written ({e!r}); nothing was lost "
                    "that was acknowledged, but these submits were not logged"
                )
                err.__cause__ = e
                self._answer(batch, err)
                self._writing = None
                self._set_busy()
                continue
            self._writing = None
            self.tally.submitted += len(rows)
            self.router.route(rows)
            i = 0
            for entries, fut in batch:
                if not fut.done():
                    fut.set_result(offsets[i : i + len(entries)])
                i += len(entries)
            self._set_busy()
            self._since_compact += len(rows)
            if self._since_compact >= self.compact_every:
                self._since_compact = 0
                if self.window is not None or self.age is not None:  # else: all, for good
                    await self._compact()
                if self.results_age is not None:
                    await self._expire_results()

    async def _compact(self) -> None:
        """Compact the log past the id-dedup window (the last ``dedup_window`` messages, and
        those of the last ``dedup_age`` seconds), after the writes it follows are answered: a
        compaction that fails costs disk, never a message (it is told, tried again next time)."""
        below = self.intake.next_offset - (self.window or 0)
        before = time.time() - self.age if self.age is not None else None
        offsets = dict(self.tally.offsets)
        try:
            removed = await self._in_thread(self.intake.compact, offsets, below, before)
        except Exception as e:
            log.warning("compacting the intake log failed (%r); it is tried again later", e)
            self.events.emit("compacted", removed=0, below=below, error=repr(e))
            return
        if removed:
            self.events.emit("compacted", removed=removed, below=below)

    async def _expire_results(self) -> None:
        """Drop the results older than ``results_age``: as many as ``compact_every`` messages can
        have made, and 100,000 at least (so it keeps up, and never holds submits long); a
        failure is told, tried again."""
        before = time.time() - (self.results_age or 0.0)
        chunks = max(10, -(-self.compact_every // EXPIRE_CHUNK) + 1)
        args = (self.data_dir, self.durability, before, chunks)
        try:
            n = await self._in_thread(expire_results, *args)
        except Exception as e:
            log.warning("dropping results past results_age failed (%r); tried again later", e)
            self.events.emit("results_expired", removed=0, error=repr(e))
            return
        if n:
            self.events.emit("results_expired", removed=n)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the writer thread; in the event loop itself if no thread can be had."""
        if not self._inline:
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._thread, fn, *args)
            except RuntimeError as e:
                if not is_refusal(e):
                    raise
                self._inline = True
                self.events.emit(
                    "degraded",
                    None,
                    None,
                    component="intake writer",
                    reason=repr(e),
                    detail="appending to the intake log in the event loop: slower, never lost",
                )
        return fn(*args)

    def _append(self, batch: list[Parked]) -> tuple[list[Row], list[int]]:
        intake = self.intake
        entries = [e for group, _ in batch for e in group]
        if failpoints.ACTIVE:
            failpoint("intake.append", messages=len(entries))
        seen = intake.existing([e[0] for e in entries if not e[4]])
        rows: list[Row] = []
        offsets: list[int] = []
        named: list[tuple[str, int]] = []
        nxt, generated = intake.next_offset, self._generated
        for mid, key, part, blob, auto in entries:
            if auto:
                mid = f"{generated}{nxt}"
            else:
                known = seen.get(mid)
                if known is not None:
                    offsets.append(known)
                    continue
                seen[mid] = nxt
                named.append((mid, nxt))
            rows.append((nxt, mid, key, part, blob))
            offsets.append(nxt)
            nxt += 1
        if rows:
            intake.append(rows, named)
            intake.next_offset = nxt
        return rows, offsets

    def _answer(self, batch: list[Parked], err: Exception) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(err)

    def fail(self, err: Exception) -> None:
        """The pool ended: every submit not yet answered gets ``err``."""
        if self._writing is not None:
            self._answer(self._writing, err)
        self._answer(self._pending, err)
        self._pending.clear()

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def _kind(payload: Any) -> str:
    return f"{type(payload).__module__}.{type(payload).__qualname__}"
