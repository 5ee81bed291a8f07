"""Targets: the small protocol through which a scenario drives any worker pool.

A target is started, given messages (``submit(key, payload, id)`` returns once the pool has
acknowledged the message), asked for its worker pids (to hurt them) and for its committed
per-key state (the list-append workload: each key's list of message ids, in commit order), and
stopped. Optional: ``committed_now()``, the same read without waiting for work in flight (the
harness polls it to measure recovery; without it, ``committed()`` is polled), and
``dead_lettered()``, the ids it gave up on (a mapping id -> reason, or a list of ids). What
else it can do is named in ``capabilities`` -- ``"events"`` (lifecycle events
with CLOCK_MONOTONIC times, for recovery figures), ``"failpoints"`` (chaos failpoint sites
inside it), ``"dead_letters"``, ``"restart"`` (stop and start again on the same state),
``"leak"`` (a payload ``{"leak_mb": N}`` makes the worker applying it keep N MB more),
``"unordered"`` (it promises no order within a key -- a task queue with several workers: the
checker judges none), ``"broker"`` (its messages travel through a Redis broker it started,
``target.broker``: the broker faults act on it) -- and a
scenario that needs one the target lacks is skipped with that reason, never passed.

``SystemTarget`` adapts ``system.Pool``; ``load_target("package.module:factory")`` builds a
user's own (the factory is called with the scenario's data directory).
"""

from __future__ import annotations

import asyncio
import importlib
import pickle
import sqlite3
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from . import workload
from ._errors import ChaosError


@runtime_checkable
class Target(Protocol):
    capabilities: frozenset[str]

    async def start(self) -> None: ...

    async def submit(self, key: str, payload: Any, id: str) -> None: ...

    def worker_pids(self) -> list[int]: ...

    async def committed(self) -> dict[str, list[Any]]:
        """Each key's committed message ids, in commit order, once everything acknowledged so
        far is processed (or given up); safe to call while submits go on."""
        ...

    async def stop(self) -> None: ...


def append_id(state: list[str] | None, message: Any) -> list[str]:
    """The list-append workload's handler: append the message's id to its key's list, after
    doing what a dict payload asks (``chaos.workload``: sleep, leak, hang, break the channel)."""
    if isinstance(message.payload, dict):
        workload.act(message.payload)
    state = [] if state is None else state
    state.append(message.id)
    return state


class SystemTarget:
    """``system.Pool`` as a target: every capability."""

    capabilities = frozenset({"events", "failpoints", "dead_letters", "restart", "leak"})

    def __init__(self, data_dir: str | Path, **pool_options: Any):
        self.data_dir = Path(data_dir)
        self.options = {"workers": 2, "partitions": 8, **pool_options}
        self.pool: Any = None

    async def start(self) -> None:
        from system import Pool

        self.pool = Pool(append_id, self.data_dir, **self.options)
        await self.pool.start()

    async def submit(self, key: str, payload: Any, id: str) -> None:
        await self.pool.submit(key, payload, id)

    def worker_pids(self) -> list[int]:
        return self.pool.worker_pids()

    async def drain(self, timeout: float | None = None) -> None:
        await self.pool.drain(timeout)

    async def committed(self) -> dict[str, list[Any]]:
        """The committed state, read from the checkpoint store (not from the workers' memory),
        once the pool has processed what it acknowledged -- after ``stop()``, as it is."""
        if not self.pool.closed:
            await self.pool.drain()
        return self._read()

    async def committed_now(self) -> dict[str, list[Any]]:
        """The committed state as it is now, without waiting for work in flight."""
        return await asyncio.to_thread(self._read)

    def _read(self) -> dict[str, list[Any]]:
        """Each key's state from the checkpoint store, read-only (a reader never blocks the
        pool's commits in WAL mode)."""
        path = self.data_dir / "checkpoints.db"
        if not path.exists():
            return {}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return {k: pickle.loads(v) for k, v in db.execute("SELECT key, state FROM states")}
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # created, not yet initialised
                return {}
            raise
        finally:
            db.close()

    def dead_lettered(self) -> dict[str, str]:
        return {d["id"]: d["reason"] for d in self.pool.dead_letters()}

    def events(self) -> list[dict[str, Any]]:
        from system import read_events

        return read_events(self.data_dir)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()


class TargetRefused(AssertionError):
    """The target stopped acknowledging work: a weakness of the target (an assertion, for the
    gate), not an error of the harness."""


def load_target(spec: str, where: str = "--chaos-target") -> Any:
    """The factory named by ``spec`` ("package.module:factory"), checked; errors say the fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ChaosError(
            f"bad target {spec!r} (from {where}): expected 'package.module:factory', e.g. "
            "'myapp.chaos:make_target'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ChaosError(
            f"cannot import {module_name!r} for target {spec!r} (from {where}): {e}; is the "
            "package installed, or on sys.path?"
        ) from e
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ChaosError(
            f"{module_name!r} has no {attr!r} for target {spec!r} (from {where}); define a "
            "factory there that takes the scenario's data dir and returns a target"
        ) from None
    if not callable(factory):
        raise ChaosError(f"{spec!r} (from {where}) is not callable: it must be a factory")
    return factory


async def submit_traffic(
    target: Any,
    history: Any,
    n: int,
    *,
    prefix: str,
    keys: int = 8,
    drain_every: int | None = None,
    work: float | None = None,
) -> None:
    """The list-append workload: ``n`` messages ``<prefix><i>`` over ``keys`` keys, each recorded
    in ``history`` once acknowledged (``drain_every``: drain after that many, so that the pool
    makes many small channel writes rather than a few large ones; ``work``: seconds each message
    keeps its worker busy -- the payload ``{"sleep": work}`` -- so that a fault finds work in
    flight even in a pool that commits at once)."""
    for i in range(n):
        key, mid = f"k{i % keys}", f"{prefix}{i}"
        if refused := await submit_one(
            target, history, key, i if work is None else {"sleep": work}, mid
        ):
            raise refused
        if drain_every and i % drain_every == drain_every - 1:
            await drained(target)


async def submit_one(
    target: Any, history: Any, key: str, payload: Any, mid: str
) -> TargetRefused | None:
    """Submit one message, recorded in ``history`` as acknowledged once the target returns, or
    as unacknowledged if it raised -- then the ``TargetRefused`` to raise, the cause kept."""
    from ._guard import TargetError, TargetHung, describe

    try:
        await target.submit(key, payload, mid)
    except TargetHung:  # not a refusal: the scenario fails as hung
        history.submitted(mid, key, acked=False)
        raise
    except Exception as e:
        history.submitted(mid, key, acked=False)
        why = describe(e.original if isinstance(e, TargetError) and e.original is not None else e)
        refused = TargetRefused(
            f"the target refused message {mid} ({why}): it takes no more work after the fault"
        )
        refused.__cause__ = e
        return refused
    history.submitted(mid, key)
    return None


async def drained(target: Any, timeout: float = 60.0) -> None:
    """Wait until the target has processed all it acknowledged: its ``drain`` if it has one,
    else its ``committed()`` (which the protocol lets wait for that)."""
    if hasattr(target, "drain"):
        await target.drain(timeout=timeout)
    else:
        await asyncio.wait_for(target.committed(), timeout)
