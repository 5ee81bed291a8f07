"""The history checker (Jepsen's list-append idea): what was acknowledged, against what committed.

A scenario's handler appends each message's id to its key's list, so the committed state itself
shows every anomaly. ``History`` records each submit (its id, key, whether it was acknowledged,
and when, on CLOCK_MONOTONIC); ``History.check(committed, dead_lettered, events)`` compares:

- lost: acknowledged, and neither committed nor dead-lettered;
- duplicated: committed more than once (each extra copy counts);
- reordered: committed late within its key -- after an id of the same key that was submitted
  after it (what a retry or redelivery at the back of a queue does); each is explained by the
  first id that overtook it (not judged for a target that promises no order: ``unordered``);
- unexpected: committed but never submitted (or under another key);
- dead_lettered: dead-lettered by the target but not named by the scenario as expected (with the
  expected reason, a regular expression, when one is given). Dead letters are accounted, never
  forgiven: a pool that dead-letters what a crash took shows it here, not as "recovered".

A submit that was not acknowledged (it raised, or the run died first) may or may not have
committed; neither is an anomaly. Each anomalous id gets a sentence from the target's events:
what happened to the workers after it was submitted (the target's events, and the faults the
scenario injected, as events of kind ``fault``).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ANOMALIES = ("lost", "duplicated", "reordered", "unexpected", "dead_lettered")
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
    dead_lettered: list[str] = field(default_factory=list)  # not expected: an anomaly
    expected_dead: list[str] = field(default_factory=list)  # named by the scenario, and seen
    explanations: dict[str, str] = field(default_factory=dict)
    submitted: int = 0
    committed: int = 0

    @property
    def ok(self) -> bool:
        return not any(getattr(self, a) for a in ANOMALIES)

    def summary(self) -> str:
        counts = " ".join(f"{a}={len(getattr(self, a))}" for a in ANOMALIES)
        return f"{counts} expected_dead={len(self.expected_dead)}" if self.expected_dead else counts

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

    def submitted(
        self, id: str, key: str, *, acked: bool = True, mono: float | None = None
    ) -> None:
        """Record a submit (``mono``: when, on CLOCK_MONOTONIC; by default now)."""
        if mono is None:
            mono = time.clock_gettime(time.CLOCK_MONOTONIC)
        self.submits.append(Submit(id, key, acked, mono))

    def acked(self) -> set[str]:
        return {s.id for s in self.submits if s.acked}

    def check(
        self,
        committed: Mapping[str, list[Any]],
        dead_lettered: Iterable[str] | Mapping[str, str] = (),
        events: Iterable[Mapping[str, Any]] = (),
        expected_dead: Mapping[str, str | None] | None = None,
        *,
        ordered: bool = True,
    ) -> Verdict:
        return check(self.submits, committed, dead_lettered, events, expected_dead, ordered=ordered)


def dead_letters_of(dead_lettered: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    """A target's dead letters as ``{id: reason}`` (it may give ids alone: reason "")."""
    if isinstance(dead_lettered, Mapping):
        return {str(k): str(v or "") for k, v in dead_lettered.items()}
    return {str(mid): "" for mid in dead_lettered}


def check(
    submits: Iterable[Submit],
    committed: Mapping[str, list[Any]],
    dead_lettered: Iterable[str] | Mapping[str, str] = (),
    events: Iterable[Mapping[str, Any]] = (),
    expected_dead: Mapping[str, str | None] | None = None,
    *,
    ordered: bool = True,
) -> Verdict:
    """Compare each key's committed list of ids with what was submitted (see the module doc);
    ``expected_dead``: the ids the scenario expects dead-lettered, each with a regular
    expression its reason must match (None: any reason); ``ordered=False``: for a target that
    promises no order within a key (a task queue with several workers), none is judged."""
    dead = dead_letters_of(dead_lettered)
    expected = dict(expected_dead or {})
    submits = list(submits)
    verdict = Verdict(submitted=len(submits))
    reasons: dict[str, str] = {}
    for mid, reason in sorted(dead.items()):
        pattern = expected.get(mid)
        if mid in expected and (pattern is None or re.search(pattern, reason)):
            verdict.expected_dead.append(mid)
        else:
            verdict.dead_lettered.append(mid)
            reasons[mid] = (
                f"{mid}: dead-lettered ({reason or 'no reason given'}), but not named as "
                f"expected by the scenario"
                if mid not in expected
                else f"{mid}: dead-lettered with reason {reason!r}, expected /{pattern}/"
            )
    position: dict[str, tuple[str, int]] = {}  # id -> (key, position in its key's order)
    per_key: dict[str, list[Submit]] = defaultdict(list)
    for s in submits:
        if s.id not in position:
            position[s.id] = (s.key, len(per_key[s.key]))
            per_key[s.key].append(s)
    seen: set[str] = set()
    for key, ids in committed.items():
        order: list[tuple[int, str]] = []  # (submission position, id), in commit order
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
        for mid, overtaker in late(order) if ordered else ():
            verdict.reordered.append(mid)
            reasons[mid] = f"{mid}: committed after {overtaker}, which was submitted after it"
    verdict.lost = [s.id for s in submits if s.acked and s.id not in seen and s.id not in dead]
    timeline = sorted((e for e in events if e.get("kind") in _TELLING), key=lambda e: e["mono"])
    anomalous = {*verdict.lost, *verdict.duplicated, *verdict.reordered, *verdict.dead_lettered}
    when = {s.id: s.mono for s in submits}
    for mid in sorted(anomalous):
        said = explain(mid, when.get(mid), timeline)
        verdict.explanations[mid] = (
            f"{reasons[mid]}; {said.split(': ', 1)[1]}" if mid in reasons else said
        )
    return verdict


def late(order: list[tuple[int, str]]) -> list[tuple[str, str]]:
    """``(id, overtaker)`` for each id committed after an id submitted after it (the first such
    one): the ids that moved back, not the ones that kept their place."""
    found = []
    top: tuple[int, str] | None = None  # the latest-submitted id committed so far
    for position, mid in order:
        if top is not None and position < top[0]:
            found.append((mid, top[1]))
        elif top is None or position > top[0]:
            top = (position, mid)
    return found


def explain(mid: str, submitted_at: float | None, timeline: list[Mapping[str, Any]]) -> str:
    """One sentence: what happened to the workers after ``mid`` was submitted."""
    after = [e for e in timeline if submitted_at is None or e["mono"] >= submitted_at]
    if not after:
        before = [e for e in timeline if e.get("kind") == "fault"]
        earlier = (
            f" (the last fault before it: {_who(before[-1])} got {before[-1]['reason']}, "
            f"{submitted_at - before[-1]['mono']:.3f} s earlier)"
            if before and submitted_at is not None
            else ""
        )
        return (  # what the harness knows: its own faults, and the target's events if any
            f"{mid}: no fault after it was submitted, and no worker death, hang or replacement "
            f"reported{earlier}"
        )
    first = after[0]
    base = submitted_at if submitted_at is not None else first["mono"]
    what = first["kind"]
    who = _who(first)
    detail = first.get("signal") or first.get("reason") or first.get("error") or ""
    if what == "fault":  # injected by the scenario: "pid 12 got kill (SIGKILL)"
        what, detail = f"got {detail}", ""
    inflight = f", {first['inflight']} messages in flight" if "inflight" in first else ""
    more = f"; {len(after) - 1} more such events after it" if len(after) > 1 else ""
    return (
        f"{mid}: {who} {what} {first['mono'] - base:+.3f} s after it was submitted"
        f"{f' ({detail})' if detail else ''}{inflight}{more}"
    )


def _who(event: Mapping[str, Any]) -> str:
    """Whom an event is about: a worker, a pid, what a fault aimed at (a process group), or the
    pool."""
    if event.get("worker") is not None:
        return f"worker {event['worker']} (pid {event['pid']})"
    if event.get("pid"):
        return f"pid {event['pid']}"
    return str(event.get("target") or "the pool")
