"""Messages, outputs and the stable partition hash.

The partition of a key must be the same in every process and every run, so it is computed with
CRC-32 of the key's UTF-8 bytes, never with the built-in ``hash()`` (salted per process).
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

from ._errors import UsageError


class Message(NamedTuple):
    """What a handler sees: ``handler(state, message) -> state`` (or ``Output(state, value)``)."""

    id: str
    key: str
    payload: Any
    offset: int
    attempt: int


class Output(NamedTuple):
    """Return ``Output(state, value)`` from a handler to record ``value`` as the message's result.

    Results are committed atomically with the state, keyed by message id, so the results table is
    an idempotent outbox: ``pool.result(id)`` returns the value exactly once committed.
    """

    state: Any
    value: Any


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key``: stable across processes, runs and machines."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def check_key(key: object) -> str:
    if type(key) is not str:
        raise UsageError(
            f"key must be a str, got {type(key).__name__} {key!r:.60}; "
            "convert it with str(key) (keys are hashed to partitions by their UTF-8 bytes)"
        )
    return key
