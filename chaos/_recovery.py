"""Recovery metrics of one fault, from its CLOCK_MONOTONIC time and the target's events.

- detection: fault -> the target noticed (``died``, ``hung`` or ``killed`` of the faulted pid);
- restart: fault -> a replacement for that worker is ``ready``;
- recovery: fault -> every message that was in flight at the fault is committed again: the
  first ``checkpointed`` of that worker whose position reaches the death's ``inflight_last``
  (or the first one after the restart, when nothing was in flight).

Events are those of ``system`` (``events.jsonl``); a target without events has no figures here,
and a scenario measures its recovery from its committed state instead. Each figure is None when
the event never came (the scenario decides whether that fails it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_NOTICED = ("died", "hung", "killed")


@dataclass(frozen=True)
class Recovery:
    fault_pid: int
    worker: int | None
    detection: float | None  # seconds
    restart: float | None
    recovery: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.fault_pid,
            "worker": self.worker,
            "detection_ms": _ms(self.detection),
            "restart_ms": _ms(self.restart),
            "recovery_ms": _ms(self.recovery),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def recovery_of(fault_mono: float, pid: int, events: Iterable[Mapping[str, Any]]) -> Recovery:
    """The recovery figures of a fault to ``pid`` at ``fault_mono`` (see the module doc)."""
    after = sorted((e for e in events if e.get("mono", 0) >= fault_mono), key=lambda e: e["mono"])
    noticed = next((e for e in after if e["kind"] in _NOTICED and e.get("pid") == pid), None)
    if noticed is None:
        return Recovery(pid, None, None, None, None)
    worker = noticed.get("worker")
    died = next((e for e in after if e["kind"] == "died" and e.get("pid") == pid), noticed)
    ready = next(
        (
            e
            for e in after
            if e["kind"] == "ready"
            and e.get("worker") == worker
            and e.get("pid") != pid
            and e["mono"] >= died["mono"]
        ),
        None,
    )
    recovered = None
    if ready is not None:
        last = died.get("inflight_last")
        recovered = next(
            (
                e
                for e in after
                if e["kind"] == "checkpointed"
                and e.get("worker") == worker
                and e["mono"] >= ready["mono"]
                and (last is None or e.get("position", -1) >= last)
            ),
            None,
        )
    return Recovery(
        pid,
        worker,
        noticed["mono"] - fault_mono,
        None if ready is None else ready["mono"] - fault_mono,
        None if recovered is None else recovered["mono"] - fault_mono,
    )
