"""Every frame on the channel between the supervisor and a worker, and how a worker exited.

To a worker: ``Assign`` (a warm spare's lane), ``Batch``, ``Query``, ``Flush``, ``Rewound``,
``Stop``. From a worker: ``Ready``
once it has claimed its partitions, ``Applied`` after each batch (every message at or below
``position`` that it was sent is applied: credits come back), ``Ack`` after each checkpoint
(... is committed), ``Rewind`` (resend everything after ``position``; see
``WorkerCore.apply``), ``State`` (a query's answer).

The messages inside a ``Batch`` stay plain tuples (``Wire``, read through the ``OFFSET`` ...
``ATTEMPT`` indices): a named tuple per message costs 4x more to pickle, on the hot path.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

#: A message between the dispatcher and a worker: ``(offset, id, key, partition, payload,
#: attempt)``; an intake row is the same without ``attempt``.
Wire = tuple[int, str, str, int, bytes, int]
Row = tuple[int, str, str, int, bytes]
OFFSET: Final = 0
ID: Final = 1
KEY: Final = 2
PARTITION: Final = 3
PAYLOAD: Final = 4
ATTEMPT: Final = 5


class Batch(NamedTuple):
    messages: list[Wire]


class Assign(NamedTuple):
    """To a warm spare: serve this lane (``spec``: its ``WorkerSpec``)."""

    spec: Any


class Query(NamedTuple):
    rid: int
    key: str


class Flush(NamedTuple):
    """Checkpoint now (the pool is draining)."""


class Rewound(NamedTuple):
    """The supervisor has put back what was in flight: batches from now on are the resent ones."""


class Stop(NamedTuple):
    """Checkpoint and leave."""


class Ready(NamedTuple):
    pid: int
    committed: dict[int, int]


#: A dead letter in an ack: ``(id, offset, reason)``.
Dead = tuple[str, int, str]


class Ack(NamedTuple):
    position: int
    offsets: dict[int, int]
    dead: list[Dead]


class Applied(NamedTuple):
    position: int


class Rewind(NamedTuple):
    position: int


class State(NamedTuple):
    rid: int
    state: bytes  # pickled


ToWorker = Assign | Batch | Query | Flush | Rewound | Stop
FromWorker = Ready | Applied | Ack | Rewind | State


@dataclass(frozen=True)
class Exit:
    """How a worker ended: its exit code, the signal that ended it, or what went wrong."""

    exitcode: int | None
    signal: str | None = None  # e.g. "SIGKILL(-9)"
    error: str | None = None
    recycled: str | None = None  # why it was asked to stop (memory), when it did so cleanly

    @classmethod
    def of_status(cls, code: int | None) -> Exit:
        """From a process's exit status (negative: the signal that ended it)."""
        if code is not None and code < 0:
            try:
                name = _signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return cls(code, f"{name}({code})")
        return cls(code)

    @classmethod
    def failed(cls, error: str, exitcode: int | None = None) -> Exit:
        return cls(exitcode, None, error)

    def text(self) -> str:
        """A person's words: ``SIGKILL(-9)``, ``exit code 1``, ``no exit code (abandoned)``."""
        text = self.signal or (
            f"exit code {self.exitcode}" if self.exitcode is not None else "no exit code"
        )
        return f"{text} ({self.error})" if self.error else text

    def as_event(self) -> dict[str, Any]:
        """The fields of a ``died``/``stopped`` event (``error``, ``recycled`` only when set)."""
        detail: dict[str, Any] = {"exitcode": self.exitcode, "signal": self.signal}
        if self.error is not None:
            detail["error"] = self.error
        if self.recycled is not None:
            detail["recycled"] = self.recycled
        return detail
