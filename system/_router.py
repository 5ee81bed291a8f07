"""The router: which worker owns which message, and the dispatcher that sends it there.

Partition ``p`` belongs to lane ``p % workers`` (``lane_of``: the only copy of that rule;
``route`` inlines it). Each lane holds, in offset order, what is waiting for its worker
(``unsent``), what was sent and not yet applied (``inflight``), and what its worker applied and
has not yet committed (``applied``). Every message is in exactly one place until its ack pops it:
the intake writer's batch, or a lane's ``unsent``, ``inflight`` or ``applied``.

The dispatcher sends to every lane whose worker is ready (``lane.channel``) at most
``max_inflight`` messages not yet applied, ``max_batch`` (and ``max_batch_bytes``) per write:
credits come back as the worker applies (``Applied``), not when it checkpoints, so a rare
checkpoint does not stall the flow. An ack (after a checkpoint) pops what it covers; a death or
a ``Rewind`` puts everything not acknowledged back in front, to be sent again (``rewind``),
with its attempt counted. What waits for a checkpoint is bounded by ``max_outstanding``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter

from chaos import failpoints
from chaos.failpoints import failpoint

from ._channel import Channel
from ._config import PoolConfig
from ._frames import ATTEMPT, OFFSET, PARTITION, PAYLOAD, Batch, Flush, Row, Wire
from ._message import check_key, partition_of
from ._tally import Tally

log = logging.getLogger("system")
_PAYLOAD = itemgetter(PAYLOAD)


@dataclass
class Lane:
    index: int
    partitions: tuple[int, ...]
    unsent: deque[Wire] = field(default_factory=deque)
    inflight: deque[Wire] = field(default_factory=deque)
    applied: deque[Wire] = field(default_factory=deque)
    channel: Channel | None = None  # set while its worker is ready
    kill: Callable[[], None] = lambda: None  # its worker's
    flush_sent: bool = False


class Router:
    def __init__(self, config: PoolConfig, workers: int, partitions: int, tally: Tally):
        self.config = config
        self.partitions = partitions
        self.tally = tally
        self.wake = asyncio.Event()
        self.draining = 0  # drain() calls waiting: a worker with work in flight is told to flush
        self.lanes = self._lanes(workers)

    def _lanes(self, workers: int) -> list[Lane]:
        self.workers = workers
        return [Lane(i, tuple(range(i, self.partitions, workers))) for i in range(workers)]

    def lane_of(self, partition: int) -> Lane:
        return self.lanes[partition % self.workers]

    def lane_of_key(self, key: str) -> Lane:
        return self.lane_of(partition_of(check_key(key), self.partitions))

    def route(self, rows: Iterable[Row]) -> int:
        """New rows of the intake log, in offset order, to their lanes (first attempt)."""
        lanes, w, n = self.lanes, self.workers, 0
        for row in rows:
            lanes[row[PARTITION] % w].unsent.append((*row, 1))
            n += 1
        self.tally.added(n)
        self.wake.set()
        return n

    def regroup(self, workers: int) -> list[Wire]:
        """Every message not acknowledged, in offset order, to ``workers`` new lanes."""
        messages = sorted(
            m for lane in self.lanes for m in (*lane.applied, *lane.inflight, *lane.unsent)
        )
        self.lanes = self._lanes(workers)
        for m in messages:
            self.lane_of(m[PARTITION]).unsent.append(m)
        self.wake.set()
        return messages

    # -- a lane's worker -------------------------------------------------------------------------
    def open(self, lane: Lane, channel: Channel, kill: Callable[[], None]) -> None:
        """The lane's worker is ready: send it its work."""
        lane.channel, lane.kill = channel, kill
        self.wake.set()

    def close(self, lane: Lane) -> int:
        """The lane's worker is gone: what it had in flight goes back in front; how many."""
        lane.channel = None
        return self.rewind(lane)

    def applied(self, lane: Lane, position: int) -> None:
        """Everything sent up to ``position`` is applied: its credits come back."""
        inflight, applied = lane.inflight, lane.applied
        if inflight and inflight[-1][OFFSET] <= position:  # all of it (the usual case)
            applied.extend(inflight)
            inflight.clear()
        while inflight and inflight[0][OFFSET] <= position:
            applied.append(inflight.popleft())
        self.wake.set()

    def ack(self, lane: Lane, position: int, offsets: dict[int, int] | None = None) -> int:
        """Everything sent up to ``position`` is committed, and each partition of ``offsets`` up
        to its offset; how many messages that was."""
        if offsets:
            self.tally.offsets.update(offsets)
        n = 0
        for held in (lane.applied, lane.inflight):  # older first
            if held and held[-1][OFFSET] <= position:  # all of it (the usual case)
                n += len(held)
                held.clear()
            while held and held[0][OFFSET] <= position:
                held.popleft()
                n += 1
        lane.flush_sent = False
        self.tally.done(n)
        self.wake.set()
        return n

    def rewind(self, lane: Lane) -> int:
        """Put the lane's unacknowledged messages back in front, to be sent again; how many."""
        n = len(lane.applied) + len(lane.inflight)
        if n:
            held = (*lane.applied, *lane.inflight)
            again = [(*m[:ATTEMPT], m[ATTEMPT] + 1) for m in held]
            lane.unsent.extendleft(reversed(again))
            lane.applied.clear()
            lane.inflight.clear()
        lane.flush_sent = False
        self.wake.set()
        return n

    # -- the dispatcher --------------------------------------------------------------------------
    async def run(self) -> None:
        limit, size = self.config.max_inflight, self.config.max_batch
        while True:
            await self.wake.wait()
            self.wake.clear()
            for lane in self.lanes:
                channel = lane.channel
                if channel is None:
                    continue
                unsent, inflight = lane.unsent, lane.inflight
                try:
                    while unsent and len(inflight) < limit:
                        batch = self.take(unsent, min(limit - len(inflight), size))
                        inflight.extend(batch)
                        if failpoints.ACTIVE:
                            failpoint("dispatch.send", pipe=channel.break_, worker=lane.index)
                        channel.send_nowait(Batch(batch))
                    held = inflight or lane.applied
                    if self.draining and held and not unsent and not lane.flush_sent:
                        channel.send_nowait(Flush())
                        lane.flush_sent = True
                except EOFError:
                    continue  # the lane's supervisor sees the death and rewinds
                except Exception:  # a bug here must not stop dispatch for every worker
                    log.exception("dispatch to worker %s failed; restarting it", lane.index)
                    lane.kill()
            await asyncio.sleep(0)

    def take(self, unsent: deque[Wire], n: int) -> list[Wire]:
        """Up to ``n`` messages, and no more than ``max_batch_bytes`` of payload (at least one)."""
        cap = self.config.max_batch_bytes
        k = min(n, len(unsent))
        if sum(map(len, map(_PAYLOAD, islice(unsent, k)))) <= cap:  # the usual case: all k fit
            pop = unsent.popleft
            return [pop() for _ in range(k)]
        batch = [unsent.popleft()]
        size = len(batch[0][PAYLOAD])
        while unsent and len(batch) < n and size + len(unsent[0][PAYLOAD]) <= cap:
            size += len(unsent[0][PAYLOAD])
            batch.append(unsent.popleft())
        return batch
