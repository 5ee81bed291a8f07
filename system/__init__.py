"""``system``: a resilient, exactly-once, key-affine worker pool -- chaosgate's system under test.

Submit ``(key, payload, id)`` messages; a handler ``handler(state, message) -> state`` runs in
long-lived worker processes (or threads, or inline) that own partitions of the keys; each
message's state transition is committed exactly once, also across ``kill -9``.
"""

from ._config import PoolConfig
from ._errors import (
    DataDirError,
    Fenced,
    PayloadError,
    PoolBroken,
    PoolClosed,
    PoolError,
    UsageError,
    WorkerLost,
)
from ._events import live_workers, read_events
from ._message import Message, Output, partition_of
from ._pool import Pool
from ._restart import RestartPolicy
from ._sync import SyncPool

__all__ = [
    "DataDirError",
    "Fenced",
    "Message",
    "Output",
    "PayloadError",
    "Pool",
    "PoolBroken",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "RestartPolicy",
    "SyncPool",
    "UsageError",
    "WorkerLost",
    "live_workers",
    "partition_of",
    "read_events",
]
