"""``system``: a resilient, exactly-once, key-affine worker pool -- chaosgate's system under test.

Submit ``(key, payload, id)`` messages; a handler ``handler(state, message) -> state`` runs in
long-lived worker processes (or threads, or inline) that own partitions of the keys; each
message's state transition is committed exactly once, also across ``kill -9``.

The parts (``Pool`` in ``_pool`` is the facade that wires them; dependencies go one way, down)::

    submit(key, payload, id) ──► IntakeWriter (_intake_writer): group commit to the IntakeLog
          ▲ returns the offset once durable         │  ids deduplicated; backpressure (Tally)
          │                                         ▼ new rows, in offset order
                                        Router (_router): lane.unsent  (lane = partition % workers)
                                                  │  dispatcher: at most max_inflight per lane
                                                  ▼  not yet applied, max_batch per write
                                          lane.inflight ──Batch──► worker (_worker: WorkerCore)
                                                  ▲ ◄── Applied(position) ──┤ (credits back)
                                          lane.applied                      │ checkpoint (N msgs,
                                                  └──────── Ack(position) ──┘ T seconds, flush)
    Every compact_every messages, the writer compacts the log past dedup_window.

    Crew (_crew): a Supervisor (_supervisor) per lane: launch (or take the warm _spare) ─►
        Ready ─► ... ─► exit seen on the sentinel fd ─► read the acks it sent before dying ─►
        rewind applied and inflight to the front of unsent ─► RestartPolicy: backoff delay, or
        StepDown ─► relaunch; the replacement claims the partitions (fencing), skips what was
        already committed, and checkpoints the replay at once.
    Watch (_watch): hung and memory checks every heartbeat. Ladder (_ladder): the rung to step
        down to (Crew.reconfigure), and when to climb back.
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
