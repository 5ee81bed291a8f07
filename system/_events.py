"""Lifecycle events: one JSON object per line in ``<data dir>/events.jsonl``, and a live stream.

Every event has ``kind``, ``ts`` (wall clock, seconds since the epoch), ``mono`` (CLOCK_MONOTONIC
seconds, comparable across processes of this machine, so a fault's timestamp taken elsewhere can
be subtracted from it), ``worker`` and ``pid`` (None for pool-wide events), plus kind-specific
detail. Kinds: started, ready, died, restarted, checkpointed, drained, gave_up, stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

log = logging.getLogger("system")


#: Kinds a person running the pool is told about on the ``system`` logger (the rest: events.jsonl).
_TOLD = frozenset(
    {"died", "restarted", "gave_up", "killed", "degraded", "hung", "recycled", "intake_behind"}
)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class EventLog:
    """``events.jsonl``, rotated by size: past ``max_bytes`` it becomes ``events.jsonl.1`` (the
    one before ``.2``, and so on); the ``keep`` newest old files are kept, older ones removed."""

    def __init__(self, path: Path, max_bytes: int = 64 * 2**20, keep: int = 4):
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._file = open(path, "a", encoding="utf-8")  # closed in close()
        self._subscribers: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.counts: dict[str, int] = {}

    def emit(
        self, kind: str, worker: int | None = None, pid: int | None = None, **detail: Any
    ) -> dict[str, Any]:
        event: dict[str, Any] = {"kind": kind, "ts": time.time(), "mono": monotonic()}
        event.update(worker=worker, pid=pid)
        event.update(detail)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not self._file.closed:
            self._file.write(json.dumps(event, default=repr) + "\n")
            self._file.flush()
            if self._file.tell() > self.max_bytes:
                self._rotate()
        for q in self._subscribers:
            q.put_nowait(event)
        if kind in _TOLD:
            log.warning("%s", _describe(event))
        return event

    def _rotate(self) -> None:
        self._file.close()
        old = _rotated(self.path)
        for n, path in sorted(old.items(), reverse=True):
            if n >= self.keep:
                path.unlink(missing_ok=True)
            else:
                path.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from now on, until the pool stops."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(q)

    def close(self) -> None:
        for q in self._subscribers:
            q.put_nowait(None)
        self._file.close()


def _rotated(path: Path) -> dict[int, Path]:
    """The rotated files of ``path``: ``{1: events.jsonl.1, 2: ...}`` (1 the newest)."""
    found = {}
    for p in path.parent.glob(f"{path.name}.*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit():
            found[int(suffix)] = p
    return found


def read_events(data_dir: str | Path) -> list[dict[str, Any]]:
    """The events in ``<data dir>/events.jsonl`` and the rotated files kept, oldest first (a line
    torn by a crash mid-write is skipped)."""
    path = Path(data_dir) / "events.jsonl"
    files = [p for _, p in sorted(_rotated(path).items(), reverse=True)]
    found = []
    for f in [*files, path]:
        try:
            text = f.read_text(encoding="utf-8")
        except FileNotFoundError:  # rotated away meanwhile
            continue
        for line in text.splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def live_workers(events: list[dict[str, Any]]) -> dict[int, int]:
    """``{worker: pid}`` of the workers that are ready and have not died or stopped since."""
    live: dict[int, int] = {}
    for e in events:
        if e["kind"] == "ready":
            live[e["worker"]] = e["pid"]
        elif e["kind"] in ("died", "stopped") and live.get(e["worker"]) == e["pid"]:
            del live[e["worker"]]
    return live


def _describe(event: dict[str, Any]) -> str:
    skip = {"kind", "ts", "mono", "worker", "pid"}
    who = (
        f"worker {event['worker']} (pid {event['pid']})" if event["worker"] is not None else "pool"
    )
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    return f"{who}: {event['kind']} {rest}".rstrip()
