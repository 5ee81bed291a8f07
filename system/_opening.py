"""Opening a data dir: its lock, intake log, checkpoint store and event log, all or none.

A failed open closes again whatever it had opened, so it holds nothing; ``Opened.close`` closes
them in order, the event log last, after its final event.
"""

from __future__ import annotations

import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ._checkpoint import CheckpointStore
from ._config import PoolConfig
from ._errors import DataDirError, UsageError
from ._events import EventLog
from ._fallback import choose_mode
from ._intake import IntakeLog, check_data_dir, lock_data_dir


@dataclass
class Opened:
    data_dir: Path
    lock: Any
    intake: IntakeLog
    store: CheckpointStore
    events: EventLog
    committed: dict[int, int]  # each partition's committed offset, as opened

    def close(self, kind: str, **detail: Any) -> None:
        """Close everything, saying ``kind`` (with ``detail``) as the last event."""
        self.intake.close()
        self.store.close()
        self.events.emit(kind, **detail)
        self.events.close()
        self.lock.close()


def open_data_dir(data_dir: Path, config: PoolConfig) -> Opened:
    data_dir = check_data_dir(data_dir, create=True)
    opened: list[Any] = []  # closed again if anything below fails: a failed start holds nothing
    try:
        lock = lock_data_dir(data_dir)
        opened.append(lock)
        intake = IntakeLog(data_dir, config.partitions, durability=config.durability)
        opened.append(intake)
        if config.workers > intake.partitions:
            raise UsageError(
                f"workers ({config.workers}) > partitions ({intake.partitions}) of this data "
                "dir; use at most as many workers as partitions"
            )
        try:
            store = CheckpointStore(data_dir, durability=config.durability)
        except sqlite3.DatabaseError as e:
            raise DataDirError(
                f"{data_dir / 'checkpoints.db'} is not a usable checkpoint store ({e}); "
                "restore it from a backup, or use another data dir"
            ) from e
        opened.append(store)
        if config.results_age is not None:
            store.time_untimed()
        events = EventLog(
            data_dir / "events.jsonl", max_bytes=config.events_max_bytes, keep=config.events_keep
        )
        opened.append(events)
        committed = store.committed()
        intake.check_committed(committed)
        end = intake.reach(committed)
        if end is not None:
            events.emit(
                "intake_behind",
                log_end=end,
                committed_to=intake.next_offset - 1,
                detail="intake.db ends before what checkpoints.db committed: it lost its tail "
                "(durability='process' and a power loss, or an older copy put back); the "
                "messages acknowledged past its end are gone. New offsets go on past them",
            )
    except BaseException:
        for thing in reversed(opened):
            thing.close()
        raise
    return Opened(data_dir, lock, intake, store, events, committed)


def travels(handler: Any, initial_state: Any, mode: str) -> bool:
    """Can the handler and initial state be sent to worker processes? Refused if they must be."""
    for what, obj in [("handler", handler), ("initial_state", initial_state)]:
        try:
            pickle.dumps(obj)
        except Exception as e:
            if mode == "process":
                raise UsageError(
                    f"{what} {obj!r:.80} cannot be sent to worker processes ({e}); define it "
                    "at module level, or use mode='thread'"
                ) from e
            return False
    return True


def resolve_mode(config: PoolConfig, picklable: bool) -> tuple[str, str]:
    """``(mode, why)`` for ``mode="auto"``: from the free memory, if the handler can travel."""
    if not picklable:
        return "thread", "the handler cannot be sent to processes"
    available = psutil.virtual_memory().available
    spare = 1 if config.warm_spare else 0  # process mode starts one more, ahead
    return choose_mode(config.workers, available, config.worker_memory, spare)
