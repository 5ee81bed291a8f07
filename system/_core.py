"""The worker core: apply messages to per-key states, deduplicate, and build checkpoints.

The same core runs under every runner (process, thread, inline); the runner only moves frames
and calls it. It does no I/O of its own besides the ``store`` it is given (a ``CheckpointStore``,
or any object with ``claim``/``load_state``/``commit``), and its time comes from the ``clock``
and ``sleep`` it is given (a retry's backoff), so unit tests drive it directly, on a fake clock.

Exactly-once: delivery is at-least-once (after a crash the dispatcher resends everything not yet
acknowledged), and the core skips every message whose offset is at or below what its partition
has already applied. States, outputs, dead letters and the applied offsets are committed in one
transaction, so each message's transition is committed exactly once.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from chaos import failpoints, format_plain
from chaos.failpoints import failpoint

from ._config import DEFAULTS
from ._frames import Ack, Dead, Rewind, Wire
from ._message import Message, Output

Handler = Callable[[Any, Message], Any]


_RETRY = object()


class _Unpicklable(Exception):
    """A handler's output could not be pickled (handled like the handler raising)."""


class WorkerCore:
    def __init__(
        self,
        handler: Handler,
        store: Any,
        partitions: Iterable[int],
        *,
        initial_state: Callable[[], Any] | None = None,
        checkpoint_every: int = DEFAULTS.checkpoint_every,
        checkpoint_interval: float = DEFAULTS.checkpoint_interval,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        progress: Any = None,
        poison: dict[int, str] | None = None,
        retries: int = DEFAULTS.retries,
        retry_backoff: float = DEFAULTS.retry_backoff,
    ):
        self.handler = handler
        self.store = store
        self.partitions = frozenset(partitions)
        self.initial_state = initial_state
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.clock = clock
        self.sleep = sleep  # a retry's backoff (a fake one in tests)
        self.applied: dict[int, int] = {}
        self.states: dict[str, Any] = {}
        self._dirty: dict[str, int] = {}  # key -> partition
        self._touched: set[int] = set()
        self._results: list[tuple[str, int, int, bytes]] = []
        self._dead: list[tuple[str, int, int, str, str, str]] = []
        self.uncommitted = 0
        self._first_uncommitted_at: float | None = None
        self.last_applied = -1  # highest offset applied, across partitions (the ack position)
        self.acked = -1
        self.committed: dict[int, int] = {}
        self.rewinding = False
        self._suspects: set[int] = set()  # offsets whose handler raised on a dirty state
        # The progress cell: [0] offset being applied, [1] messages started (see _progress).
        self.progress = progress.cells if progress is not None else [-1, 0, 0, 0]
        self.poison = dict(poison or {})  # offset -> why it is dead-lettered without applying
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.stop_requested = False  # set (by a signal) to stop after the current message

    def start(self) -> dict[int, int]:
        """Claim the partitions; return their committed offsets (the replay positions)."""
        self.committed = self.store.claim(self.partitions)
        self.applied = dict(self.committed)
        return dict(self.committed)

    # -- applying --------------------------------------------------------------------------------
    def state_of(self, key: str) -> Any:
        try:
            return self.states[key]
        except KeyError:
            found, state = self.store.load_state(key)
            if not found:
                state = self.initial_state() if self.initial_state is not None else None
            self.states[key] = state
            return state

    def apply(self, batch: list[Wire]) -> list[Ack | Rewind]:
        """Apply a batch in order; return frames for the supervisor (acks, or a rewind request).

        A handler that raises may have changed the key's state in place before raising. If that
        state holds uncommitted work of earlier messages, it cannot be told apart from the damage:
        the core then drops everything uncommitted, marks the message suspect, and asks the
        supervisor to resend from its last acknowledged position (``Rewind(position)``); it
        ignores batches until the supervisor answers ``Rewound``. On the replay it checkpoints
        just before the suspect message, so the message meets a clean, committed state.
        """
        out: list[Ack | Rewind] = []
        if self.rewinding:
            return out  # sent before the supervisor saw our rewind; it will resend them
        applied = self.applied
        sites = failpoints.ACTIVE  # empty (falsy) unless a test configured failpoints
        cell = self.progress
        new = 0
        for offset, mid, key, part, payload, attempt in batch:
            if self.stop_requested:
                break  # recycling: the rest is resent to the replacement
            if offset > applied.get(part, -1):  # else a replayed duplicate, already applied
                cell[0] = offset
                cell[1] += 1
                if self.poison and offset in self.poison:
                    self._dead_letter(offset, mid, key, part, self.poison.pop(offset), "")
                    applied[part] = offset
                    self._touched.add(part)
                    self.last_applied = offset
                    new += 1
                    continue
                if self._suspects and offset in self._suspects and key in self._dirty:
                    ack = self.checkpoint()
                    if ack is not None:
                        out.append(ack)
                if sites:
                    failpoint("worker.before_apply", id=mid, offset=offset)
                if not self._apply_one(offset, mid, key, part, payload, attempt):
                    self._suspects.add(offset)
                    self.reset()
                    self.rewinding = True
                    out.append(Rewind(self.acked))
                    return out
                self._suspects.discard(offset)
                applied[part] = offset
                if sites:
                    failpoint("worker.after_apply", id=mid, offset=offset)
                self._touched.add(part)
                new += 1
            self.last_applied = offset
        cell[0] = -1
        if batch and self._first_uncommitted_at is None:
            self._first_uncommitted_at = self.clock()  # duplicates need an ack too
        self.uncommitted += new
        return out

    def rewound(self) -> None:
        """The supervisor has rewound: batches from now on are the resent ones."""
        self.rewinding = False

    def reset(self) -> None:
        """Forget everything not committed: states, offsets, outputs, dead letters."""
        self.states.clear()
        self._dirty.clear()
        self._touched.clear()
        self._results = []
        self._dead = []
        self.applied = dict(self.committed)
        self.uncommitted = 0
        self._first_uncommitted_at = None
        self.last_applied = self.acked

    def _apply_one(
        self, offset: int, mid: str, key: str, part: int, payload: bytes, attempt: int
    ) -> bool:
        """Apply one message (or dead-letter it); False when its key needs a clean replay."""
        try:
            value = pickle.loads(payload)
        except Exception as e:
            self._dead_letter(offset, mid, key, part, f"payload cannot be unpickled: {e!r}")
            return True
        retry = 0
        while True:
            last = retry >= self.retries
            outcome = self._call(offset, mid, key, part, value, attempt + retry, last)
            if outcome is not _RETRY:
                return outcome
            self.sleep(self.retry_backoff * 2**retry)  # backoff: 1x, 2x, 4x ...
            retry += 1

    def _call(
        self, offset: int, mid: str, key: str, part: int, value: Any, attempt: int, last: bool
    ) -> Any:
        """One try of the handler: True (done), False (needs a clean replay) or _RETRY."""
        state = self.state_of(key)
        try:
            new = self.handler(state, Message(mid, key, value, offset, attempt))
            if type(new) is Output:
                try:
                    blob = pickle.dumps(new.value, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as e:
                    raise _Unpicklable(f"output cannot be pickled: {e!r}") from e
                self._results.append((mid, part, offset, blob))
                new = new.state
        except MemoryError:
            raise  # not the message's fault alone: the worker recycles (see serve)
        except Exception as e:
            if key in self._dirty:
                return False  # the state may be damaged in place: replay from the checkpoint
            self.states.pop(key, None)  # clean: the committed state is reloaded next time
            if isinstance(e, _Unpicklable):
                self._dead_letter(offset, mid, key, part, str(e))
                return True
            if not last:
                return _RETRY
            tries = self.retries + 1
            self._dead_letter(offset, mid, key, part, f"handler raised {e!r} ({tries} tries)")
            return True
        self.states[key] = new
        self._dirty[key] = part
        return True

    def _dead_letter(
        self, offset: int, mid: str, key: str, part: int, reason: str, trace: str | None = None
    ) -> None:
        if trace is None:  # the exception being handled, formatted safely in any thread
            error = sys.exc_info()[1]
            trace = format_plain(error) if error is not None else ""
        self._dead.append((mid, part, offset, key, reason, trace))

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_due(self) -> float | None:
        """Seconds until a checkpoint is due (0 = now), or None when nothing is uncommitted."""
        if self._first_uncommitted_at is None:
            return None
        if self.uncommitted >= self.checkpoint_every:
            return 0.0
        return max(0.0, self._first_uncommitted_at + self.checkpoint_interval - self.clock())

    def checkpoint(self) -> Ack | None:
        """Commit everything applied; the ``Ack`` to send, or None when there is nothing new.

        ``position`` is the highest offset this worker has applied: every message at or below it
        that was sent to this worker is now committed (a replayed duplicate was committed before).
        """
        self._first_uncommitted_at = None
        self.uncommitted = 0
        offsets: dict[int, int] = {}
        dead: list[Dead] = [(mid, offset, reason) for mid, _, offset, _, reason, _ in self._dead]
        if self._touched:
            dumps = pickle.dumps
            states = [
                (key, part, dumps(self.states[key], protocol=pickle.HIGHEST_PROTOCOL))
                for key, part in self._dirty.items()
            ]
            offsets = {p: self.applied[p] for p in self._touched}
            if failpoints.ACTIVE:
                failpoint("worker.before_commit", offsets=offsets)
            self.store.commit(offsets, states, self._results, self._dead)
            self.committed.update(offsets)
            if failpoints.ACTIVE:
                failpoint("worker.after_commit", offsets=offsets)
            self._dirty.clear()
            self._touched.clear()
            self._results = []
            self._dead = []
        if self.last_applied <= self.acked:
            return None
        self.acked = self.last_applied
        return Ack(self.last_applied, offsets, dead)
