"""Planted pools: ``MiniPool``, a small correct multiprocess pool, and subclasses with one bug
each, for tests that must see chaosgate catch every bug and pass the correct pools.

Each class is a target factory (``cls(data_dir, **options)``): ``--chaos-target
planted:AcksEarlyDropsCrashed`` with ``tests/`` on PYTHONPATH. ``PLANTED`` maps each name to
``(class, category)``, the category a gate should report (``None``: a correct pool, that must
pass); ``CORRECT`` is ``MiniPool``.
"""

from .bugs import (
    AcksBeforeDurable,
    AcksEarlyDropsCrashed,
    AppliesRetriedTwice,
    DeadLettersOnCrash,
    DropsOneIn500,
    HangsAfterFault,
    LazyWorkers,
    OrphansWorkers,
    RequeuesRetriesAtBack,
    RestartsAfterSeconds,
    ResubmitsCommittedOnRecovery,
    RetriesOnce,
)
from .pool import MiniPool

CORRECT = MiniPool
PLANTED: dict[str, tuple[type[MiniPool], str | None]] = {
    "AcksEarlyDropsCrashed": (AcksEarlyDropsCrashed, "lost"),
    "ResubmitsCommittedOnRecovery": (ResubmitsCommittedOnRecovery, "duplicated"),
    "RequeuesRetriesAtBack": (RequeuesRetriesAtBack, "reordered"),
    "RestartsAfterSeconds": (RestartsAfterSeconds, "recovery"),
    "DropsOneIn500": (DropsOneIn500, "lost"),
    "DeadLettersOnCrash": (DeadLettersOnCrash, "dead_lettered"),
    "AcksBeforeDurable": (AcksBeforeDurable, "lost"),
    "OrphansWorkers": (OrphansWorkers, "leak"),
    "AppliesRetriedTwice": (AppliesRetriedTwice, "duplicated"),
    "RetriesOnce": (RetriesOnce, "lost"),
    "HangsAfterFault": (HangsAfterFault, "hung"),
    "LazyWorkers": (LazyWorkers, None),  # correct: workers start on demand
}

__all__ = [
    "CORRECT",
    "PLANTED",
    "AcksBeforeDurable",
    "AcksEarlyDropsCrashed",
    "AppliesRetriedTwice",
    "DeadLettersOnCrash",
    "DropsOneIn500",
    "HangsAfterFault",
    "LazyWorkers",
    "MiniPool",
    "OrphansWorkers",
    "RequeuesRetriesAtBack",
    "RestartsAfterSeconds",
    "ResubmitsCommittedOnRecovery",
    "RetriesOnce",
]
