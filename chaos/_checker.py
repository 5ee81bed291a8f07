"""The history checker (Jepsen's list-append idea): what was acknowledged, against what committed.

A scenario's handler appends each message's id to its key's list, so the committed state itself
shows every anomaly. ``History`` records each submit (its id, key, whether it was acknowledged,
and when, on CLOCK_MONOTONIC); ``History.check(committed, dead_lettered, events)`` compares:

- lost: acknowledged, not dead-lettered, and in no committed list;
- duplicated: committed more than once (each extra copy counts);
- reordered: committed out of submission order within a key -- the fewest ids that must move,
  i.e. those outside a longest increasing subsequence of submission positions;
- unexpected: committed but never submitted (or under another key);
- dead_lettered: accounted apart, never "lost".

A submit that was not acknowledged (it raised, or the run died first) may or may not have
committed; neither is an anomaly. Each anomalous id gets a sentence from the target's events:
what happened to the workers after it was submitted (the target's events, and the faults the
scenario injected, as events of kind ``fault``).
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ANOMALIES = ("lost", "duplicated", "reordered", "unexpected")
_TELLING = {"fault", "died", "hung", "killed", "recycled", "degraded", "rewound", "gave_up"}


@dataclass(frozen=True)
class Submit:
    id: str
    key: str
    acked: bool
    mono: float | None = None


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    explanations: dict[str, str] = field(default_factory=dict)
    submitted: int = 0
    committed: int = 0

    @property
    def ok(self) -> bool:
        return not any(getattr(self, a) for a in ANOMALIES)

    def summary(self) -> str:
        counts = " ".join(f"{a}={len(getattr(self, a))}" for a in ANOMALIES)
        return f"{counts} dead_lettered={len(self.dead_lettered)}"

    def details(self, limit: int = 20) -> list[str]:
        """One line per anomaly kind: up to ``limit`` offending ids."""
        lines = []
        for a in ANOMALIES:
            ids = getattr(self, a)
            if ids:
                more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
                lines.append(f"{a}: {' '.join(ids[:limit])}{more}")
        return lines


class History:
    """What a scenario submitted, in order."""

    def __init__(self) -> None:
        self.submits: list[Submit] = []

    def submitted(self, id: str, key: str, *, acked: bool = True, mono: float | None = None):
        """Record a submit (``mono``: when, on CLOCK_MONOTONIC; by default now)."""
        if mono is None:
            mono = time.clock_gettime(time.CLOCK_MONOTONIC)
        self.submits.append(Submit(id, key, acked, mono))

    def check(
        self,
        committed: Mapping[str, list[Any]],
        dead_lettered: Iterable[str] = (),
        events: Iterable[Mapping[str, Any]] = (),
    ) -> Verdict:
        return check(self.submits, committed, dead_lettered, events)


def check(
    submits: Iterable[Submit],
    committed: Mapping[str, list[Any]],
    dead_lettered: Iterable[str] = (),
    events: Iterable[Mapping[str, Any]] = (),
) -> Verdict:
    """Compare each key's committed list of ids with what was submitted (see the module doc)."""
    dead = set(dead_lettered)
    submits = list(submits)
    verdict = Verdict(submitted=len(submits), dead_lettered=sorted(dead))
    position: dict[str, tuple[str, int]] = {}  # id -> (key, position in its key's order)
    per_key: dict[str, list[Submit]] = defaultdict(list)
    for s in submits:
        if s.id not in position:
            position[s.id] = (s.key, len(per_key[s.key]))
            per_key[s.key].append(s)
    seen: set[str] = set()
    for key, ids in committed.items():
        order: list[tuple[int, str]] = []
        for mid in ids:
            verdict.committed += 1
            where = position.get(mid)
            if where is None or where[0] != key:
                verdict.unexpected.append(f"{key}:{mid}")
            elif mid in seen:
                verdict.duplicated.append(mid)
            else:
                seen.add(mid)
                order.append((where[1], mid))
        verdict.reordered += out_of_order(order)
    verdict.lost = [s.id for s in submits if s.acked and s.id not in seen and s.id not in dead]
    timeline = sorted((e for e in events if e.get("kind") in _TELLING), key=lambda e: e["mono"])
    anomalous = {*verdict.lost, *verdict.duplicated, *verdict.reordered}
    when = {s.id: s.mono for s in submits}
    for mid in sorted(anomalous):
        verdict.explanations[mid] = explain(mid, when.get(mid), timeline)
    return verdict


def out_of_order(order: list[tuple[int, str]]) -> list[str]:
    """Ids outside a longest increasing subsequence of positions (the fewest that moved)."""
    tails: list[int] = []
    tail_at: list[int] = []
    prev = [-1] * len(order)
    for j, (i, _) in enumerate(order):
        k = bisect.bisect_left(tails, i)
        if k == len(tails):
            tails.append(i)
            tail_at.append(j)
        else:
            tails[k] = i
            tail_at[k] = j
        prev[j] = tail_at[k - 1] if k else -1
    keep: set[int] = set()
    j = tail_at[-1] if tail_at else -1
    while j >= 0:
        keep.add(j)
        j = prev[j]
    return [mid for j, (_, mid) in enumerate(order) if j not in keep]


def explain(mid: str, submitted_at: float | None, timeline: list[Mapping[str, Any]]) -> str:
    """One sentence: what happened to the workers after ``mid`` was submitted."""
    after = [e for e in timeline if submitted_at is None or e["mono"] >= submitted_at]
    if not after:
        return f"{mid}: no worker died, hung or was replaced after it was submitted"
    first = after[0]
    base = submitted_at if submitted_at is not None else first["mono"]
    what = first["kind"]
    if first.get("worker") is not None:
        who = f"worker {first['worker']} (pid {first['pid']})"
    else:
        who = f"pid {first['pid']}" if first.get("pid") else "the pool"
    detail = first.get("signal") or first.get("reason") or first.get("error") or ""
    if what == "fault":  # injected by the scenario: "pid 12 got kill (SIGKILL)"
        what, detail = f"got {detail}", ""
    inflight = f", {first['inflight']} messages in flight" if "inflight" in first else ""
    more = f"; {len(after) - 1} more such events after it" if len(after) > 1 else ""
    return (
        f"{mid}: {who} {what} {first['mono'] - base:+.3f} s after it was submitted"
        f"{f' ({detail})' if detail else ''}{inflight}{more}"
    )
