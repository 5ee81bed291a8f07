"""What the crew and its supervisors share: the rung they serve, and how a supervisor ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import PoolConfig
from ._errors import PoolBroken
from ._events import EventLog
from ._restart import RestartPolicy
from ._router import Lane, Router
from ._runners import WorkerHandle
from ._worker import WorkerSpec


@dataclass
class StepDown:
    """This rung cannot go on: take the next one."""

    reason: str
    error: BaseException | None = None


@dataclass
class Crewing:
    """What the supervisors of one configuration (mode, workers) share."""

    config: PoolConfig
    mode: str
    router: Router
    events: EventLog
    restart: RestartPolicy
    data_dir: Path
    spec: Callable[[Lane, str, dict[int, str]], WorkerSpec]  # lane, progress cell, poison
    launch: Callable[[WorkerSpec], Awaitable[WorkerHandle]]
    take_spare: Callable[[WorkerSpec], WorkerHandle | None]  # a warm spare, or None
    ended: Callable[[int, StepDown | PoolBroken], None]  # worker index, why it ended
    stopping: bool = False  # closing or reconfiguring: a worker that ends is not replaced
    side_tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # hang handlers
