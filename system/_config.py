"""The pool's settings: one frozen object, the single home of every default and of validation.

``Pool(handler, data_dir, workers=2, ...)`` builds a ``PoolConfig`` from its keywords; the worker
side (``WorkerSpec``, ``WorkerCore``) takes its defaults from the same fields. A bad value is
refused with where it came from (``where``), what it must be and what it was.
"""

from __future__ import annotations

import dataclasses
import difflib
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._errors import UsageError
from ._fallback import WORKER_MEMORY

MODES = ("process", "thread", "inline")


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """Every setting of a pool, with its default (see the README's settings table)."""

    workers: int = 4
    mode: str = "process"  # or "thread", "inline", "auto" (chosen at start from free memory)
    partitions: int | None = None  # None: what the data dir has, else 4 x workers (at least 16)
    checkpoint_every: int = 5000  # messages ...
    checkpoint_interval: float = 0.05  # ... or seconds after the first uncommitted one
    durability: str = "fsync"  # or "process": survives a crash of the process, not of the machine
    max_inflight: int = 10_000  # sent to one worker and not yet applied (its credits)
    max_batch: int = 1_000  # messages in one channel write
    max_outstanding: int = 200_000  # submitted and not committed: submit() waits beyond it
    max_batch_bytes: int = 16 * 2**20
    max_payload_bytes: int = 256 * 2**20
    hang_timeout: float = 10.0  # no progress for this long: hung (dumped, then stopped)
    hang_grace: float = 2.0  # SIGTERM, then this long before SIGKILL
    start_timeout: float = 10.0  # not ready this long after its start: hung
    heartbeat_interval: float = 0.2
    retries: int = 2  # a raising handler is tried again this many times ...
    retry_backoff: float = 0.01  # ... after 1x, 2x, 4x ... this
    poison_after: int = 3  # deaths in a row with the same message in flight: dead-lettered
    memory_soft_limit: int | None = None  # RSS bytes: over it (or trending to it), recycle
    memory_hard_limit: int | None = None  # RLIMIT_AS bytes of each worker process
    memory_interval: float = 0.5
    memory_horizon: float = 5.0
    start_method: str = "forkserver"
    fallback_cooldown: float | None = 60.0  # climb back a rung after this long without trouble
    worker_memory: int = WORKER_MEMORY  # assumed per worker process, for mode="auto"
    warm_spare: bool = True  # process mode: a worker process started ahead, for a replacement
    dedup_window: int | None = 1_000_000  # a resubmitted id is a no-op within the last this
    # many messages; beyond it, committed messages leave the intake log (None: keep them all)
    dedup_age: float | None = None  # seconds: an id is also kept this long (None: by count
    # only); with dedup_window=None, by age only
    results_age: float | None = None  # seconds a committed result is kept, read or not, then
    # dropped (None: until pool.forget)
    compact_every: int = 50_000  # messages logged between two compactions of the intake log
    events_max_bytes: int = 64 * 2**20  # events.jsonl rotates past this size ...
    events_keep: int = 4  # ... keeping this many old files (events.jsonl.1 the newest)
    where: str = field(default="PoolConfig()", compare=False, repr=False)

    @classmethod
    def create(cls, where: str, **settings: Any) -> PoolConfig:
        """A config from keywords; an unknown name is refused with the nearest known one."""
        known = [f.name for f in dataclasses.fields(cls) if f.name != "where"]
        for name in settings:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
                raise UsageError(f"{where}: unknown setting {name!r}{hint}")
        return cls(where=where, **settings)

    def replace(self, **changes: Any) -> PoolConfig:
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise UsageError(f"{self.where}: {problem}")


def _problems(c: PoolConfig) -> Iterator[str]:
    """What is wrong with ``c``, in words that name the setting, its rule and its value."""
    if c.mode not in (*MODES, "auto"):
        yield f"mode must be one of auto, {', '.join(MODES)}; got {c.mode!r}"
    if c.durability not in ("fsync", "process"):
        yield f"durability must be 'fsync' or 'process'; got {c.durability!r}"
    for name in _POSITIVE_INTS:
        value = getattr(c, name)
        if type(value) is not int or value < 1:
            yield f"{name} must be an int >= 1; got {value!r}"
    if c.partitions is not None and (type(c.partitions) is not int or c.partitions < c.workers):
        yield f"partitions must be an int >= workers ({c.workers}); got {c.partitions!r}"
    for name, rule, ok in _RULES:
        if not ok(c):
            yield f"{name} must be {rule}; got {getattr(c, name)!r}"
    if c.memory_hard_limit is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        if c.memory_hard_limit < 64 * 2**20 or (0 <= hard < c.memory_hard_limit):
            yield (
                f"memory_hard_limit={c.memory_hard_limit:,} bytes is unusable: it caps a "
                "worker's whole address space (RLIMIT_AS: interpreter, uvloop, SQLite, "
                "thread stacks), so give at least 64 MiB"
                + (f", and at most this process's hard limit {hard:,}" if hard >= 0 else "")
            )


_POSITIVE_INTS = (
    "workers",
    "checkpoint_every",
    "max_inflight",
    "max_batch",
    "max_outstanding",
    "max_batch_bytes",
    "max_payload_bytes",
    "events_max_bytes",
    "compact_every",
)
_RULES: tuple[tuple[str, str, Callable[[PoolConfig], bool]], ...] = (
    (
        "heartbeat_interval",
        "> 0 and at most hang_timeout / 2",
        lambda c: 0 < c.heartbeat_interval <= c.hang_timeout / 2,
    ),
    ("start_timeout", "> 0 seconds", lambda c: c.start_timeout > 0),
    ("poison_after", ">= 1", lambda c: c.poison_after >= 1),
    ("retries", ">= 0", lambda c: c.retries >= 0),
    ("retry_backoff", ">= 0 seconds", lambda c: c.retry_backoff >= 0),
    ("checkpoint_interval", "> 0 seconds", lambda c: c.checkpoint_interval > 0),
    ("events_keep", ">= 0", lambda c: c.events_keep >= 0),
    ("warm_spare", "True or False", lambda c: type(c.warm_spare) is bool),
    (
        "dedup_window",
        "None or an int >= 0",
        lambda c: c.dedup_window is None or (type(c.dedup_window) is int and c.dedup_window >= 0),
    ),
    (
        "dedup_age",
        "None or seconds >= 0",
        lambda c: c.dedup_age is None or (type(c.dedup_age) in (int, float) and c.dedup_age >= 0),
    ),
    (
        "results_age",
        "None or seconds >= 0",
        lambda c: (
            c.results_age is None or (type(c.results_age) in (int, float) and c.results_age >= 0)
        ),
    ),
)

DEFAULTS = PoolConfig(where="defaults")
