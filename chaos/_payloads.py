"""Payload faults: a catalog of bad payloads, each named, with the outcome a pool should give it.

Some cannot be pickled at all (a lambda, a local class, ``__reduce__`` that raises, a lock, a
socket, a generator, nesting deeper than the pickler's recursion limit): a pool must refuse them
at submit and write nothing. Some pickle fine and then fail where they are unpickled (raising in
``__reduce__``'s reconstructor; a class that exists only in the submitting process): a pool must
dead-letter them in the worker and go on. One is merely huge (larger than a pipe buffer): a pool
must carry it. ``outcome(fault, mode)`` says which; ``payloads()`` is a Hypothesis strategy mixing
good payloads and bad ones.
"""

from __future__ import annotations

import socket
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

REFUSED, DEAD_LETTERED, OK = "refused", "dead_lettered", "ok"


def _explode(reason: str) -> Any:
    raise ValueError(f"CrashAtUnpickle: {reason}")


class CrashAtUnpickle:
    """Pickles fine; unpickling it raises ValueError (in whichever process unpickles it)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ("this payload refuses to be unpickled",))


class RaiseOnReduce:
    """Cannot be pickled: ``__reduce__`` raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("RaiseOnReduce refuses to be pickled")


GHOST_MODULE = "chaosgate_ghost_payloads"


def _missing_in_worker() -> Any:
    """An instance of a class whose module exists in this process only (not importable)."""
    ghost = sys.modules.get(GHOST_MODULE)
    if ghost is None:
        ghost = types.ModuleType(GHOST_MODULE)
        exec("class MissingInWorker:\n    pass\n", ghost.__dict__)
        sys.modules[GHOST_MODULE] = ghost
    return ghost.MissingInWorker()


def _local_class_instance() -> Any:
    class Local:
        pass

    return Local()


def _nested(depth: int = 100_000) -> Any:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _closed_socket() -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.close()  # a socket object all the same; closed so that it leaks no fd
    return s


def _generator() -> Any:
    return (i for i in range(3))


@dataclass(frozen=True)
class PayloadFault:
    """A named bad payload: ``make()`` builds it, ``outcome(mode)`` is what a pool should do."""

    name: str
    make: Callable[[], Any]
    refused: bool  # pickle.dumps fails in the submitting process
    fails_in_worker_process: bool = False  # pickles, but unpickling fails in another process
    fails_everywhere: bool = False  # pickles, but unpickling fails in any process
    why: str = ""

    def outcome(self, mode: str = "process") -> str:
        if self.refused:
            return REFUSED
        if self.fails_everywhere or (self.fails_in_worker_process and mode == "process"):
            return DEAD_LETTERED
        return OK


CATALOG: tuple[PayloadFault, ...] = (
    PayloadFault(
        "lambda", lambda: lambda x: x, refused=True, why="lambdas have no importable name"
    ),
    PayloadFault(
        "local_class_instance",
        _local_class_instance,
        refused=True,
        why="a class defined in a function cannot be found by name",
    ),
    PayloadFault("raise_on_reduce", RaiseOnReduce, refused=True, why="__reduce__ raises"),
    PayloadFault("lock", threading.Lock, refused=True, why="locks cannot be pickled"),
    PayloadFault("socket", _closed_socket, refused=True, why="sockets cannot be pickled"),
    PayloadFault("generator", _generator, refused=True, why="generators cannot be pickled"),
    PayloadFault(
        "deeply_nested",
        _nested,
        refused=True,
        why="100,000 levels exceed the pickler's recursion limit",
    ),
    PayloadFault(
        "crash_at_unpickle",
        CrashAtUnpickle,
        refused=False,
        fails_everywhere=True,
        why="its reconstructor raises ValueError",
    ),
    PayloadFault(
        "missing_in_worker",
        _missing_in_worker,
        refused=False,
        fails_in_worker_process=True,
        why="its class's module exists only in the submitting process",
    ),
    PayloadFault(
        "huge",
        lambda: b"\x00" * (8 * 2**20),
        refused=False,
        why="8 MiB, larger than a pipe buffer (64 KiB): harmless, must get through",
    ),
)
BY_NAME = {fault.name: fault for fault in CATALOG}


class Labelled(NamedTuple):
    """A payload and its fault (None for a good one), with a repr that stays short."""

    fault: PayloadFault | None
    value: Any

    def __repr__(self) -> str:
        if self.fault is None:
            return f"Labelled(good, {self.value!r:.80})"
        return f"Labelled({self.fault.name}, <{type(self.value).__name__}>)"


def payloads(good: Any = None, bad: tuple[PayloadFault, ...] = CATALOG) -> Any:
    """A Hypothesis strategy of ``Labelled(fault or None, payload)``: good mixed with bad ones.

    ``good`` is a strategy of valid payloads (default: JSON-like data); a good payload comes with
    ``None`` for its fault, so a test knows what to expect of each.
    """
    from hypothesis import strategies as st

    if good is None:
        scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
        good = st.recursive(
            scalars,
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=5), inner, max_size=4)
            ),
            max_leaves=10,
        )
    return st.one_of(
        good.map(lambda value: Labelled(None, value)),
        st.sampled_from(bad).map(lambda fault: Labelled(fault, fault.make())),
    )
