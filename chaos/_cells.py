"""A matrix cell as a pytest test: run it, classify it, hold it to its strict expectation.

``judge_cell`` is the body every comparison test shares (``scenarios/test_peers.py`` for the
pools, ``scenarios/test_engines.py`` for the task queues): start the target (served from a
process of its own for the families that hurt its whole tree), run the cell
(``chaos._matrix.run_cell``), check the history against what the harness read back, classify
the outcome, and then:

- a cell expected to be good must be good (``recovered``, ``recycled``, ``drained``);
- a cell expected to show a weakness must show that one ("a|b": either), with every fault
  fired and effective, and then raises ``Weakness`` -- which the test's strict ``xfail``
  expects: a pool that changed its behaviour, for better or worse, fails the run;
- ``n/a`` is skipped with its reason, never passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ._guard import TargetHung
from ._matrix import GOOD, NOT_APPLICABLE, SERVED, classify, describe, records, run_cell
from ._scenario import unfired_message
from ._served import ServedTarget
from .hosts import LeftBehind

GOOD_OR_NA = GOOD | {NOT_APPLICABLE}


class Weakness(Exception):
    """The pool showed the weakness expected of it, and chaosgate caught it."""


async def judge_cell(
    chaos: Any,
    tmp_path: Path,
    target_name: str,
    family: str,
    factory: Any,
    options: dict[str, Any],
    *,
    workers: int,
    expected: tuple[str, str] | None,
    spec: str | None = None,
    matrix: str = "pools",
) -> dict[str, Any]:
    """Run and judge one cell (see the module doc); ``expected``: (outcome, why), or None for
    a user's own target, which must be good. ``spec``: the target as a served process builds it
    ("package.module:factory"), for the ``SERVED`` families; ``matrix``: which comparison
    table the cell belongs to ("pools", "engines")."""
    if family in SERVED and spec is not None:  # the pool in a process of its own
        bound = chaos.target_timeout
        options = {k: v for k, v in options.items() if k != "stop_timeout"}  # the server's own
        served = ServedTarget(
            spec, tmp_path / "data", timeout=bound, ack_timeout=bound, stop_timeout=bound * 0.7,
            workers=workers, **options,
        )  # fmt: skip
        target = chaos.guard(served, kill=served.kill_whole)
    else:
        target = chaos.guard(factory(tmp_path / "data", workers=workers, **options))
    chaos.target = target
    verdict, kept = None, {}
    events: list[dict[str, Any]] = []
    ordered = "unordered" not in target.capabilities
    seen: dict[str, Any] = {}
    try:
        await target.start()
        seen.update(await run_cell(chaos, target, family, tmp_path, workers))
        if "final" in seen:  # what the pool committed by the time it exited
            if hasattr(target, "where_left"):  # a task queue: what its restart never got to
                kept = records(target)
            verdict = chaos.history.check(
                seen["final"], [], [], chaos.expected_dead, ordered=ordered
            )
        elif not seen.get("hung") and not seen.get("not_applicable"):
            committed = await target.committed()
            kept = records(target)
            events = target.events() if "events" in target.capabilities else []
            dead = target.dead_lettered() if hasattr(target, "dead_lettered") else []
            verdict = chaos.history.check(
                committed, dead, events, chaos.expected_dead, ordered=ordered
            )
    finally:
        try:
            await target.stop()
        except TargetHung as e:  # a stop past its bound: hung, with the stacks
            seen["hung"] = seen.get("hung") or e
        except LeftBehind:  # the test's own hosts not removed: a failure, whatever the verdict
            raise
        except Exception as e:  # the pool's processes were killed: seen, not a test error
            seen["stop_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        finally:
            target.close()
    seen.update(classify(family, target, verdict, seen, kept))
    if verdict is not None and seen["outcome"] != NOT_APPLICABLE:  # n/a: nothing judged
        chaos.judge(verdict, events, enforce=False)
    if seen["detection_ms"] is None:  # a target with events: its death events
        detected = [
            f.recovery.detection for f in chaos.faults if f.recovery and f.recovery.detection
        ]
        seen["detection_ms"] = round(min(detected) * 1000, 1) if detected else None
    if seen["outcome"] == "hung":  # a hang is reported with where everyone was waiting
        assert seen["dumps"] and all("Thread" in d for d in seen["dumps"]), seen["dumps"]
    summary = describe(seen)
    chaos.observed = {
        "target": target_name,
        "fault": family,
        "matrix": matrix,
        "summary": summary,
        **seen,
    }
    for bulky in ("hung", "final"):  # the exception; the committed state itself
        chaos.observed.pop(bulky, None)
    print(f"\n{target_name} / {family}: {summary}")
    if expected is None:  # a user's own target: good, or n/a
        outcome = seen["outcome"] if seen["outcome"] == NOT_APPLICABLE else "good"
        assert seen["outcome"] in GOOD_OR_NA, f"{family}: {summary}"
    else:
        outcome, why = expected
        assert seen["outcome"] in outcome.split("|"), (
            f"{target_name} behaved differently on {family}: expected {outcome} ({why}), saw "
            f"{summary}; update EXPECTED if the pool changed"
        )
    if outcome == NOT_APPLICABLE:  # nothing was tested: never a pass
        pytest.skip(f"{target_name} / {family}: {summary}")
    await proven(chaos)
    if outcome not in GOOD | {"good"}:
        raise Weakness(f"{target_name} / {family}: {summary}")
    return seen


async def proven(chaos: Any) -> None:
    """Every fault of the cell fired and had its effect -- checked here, since a cell that
    shows its expected weakness ends before the plugin's own check would run: an expected
    weakness seen without its fault proves nothing, and must not pass."""
    await chaos.effects_known()
    if unfired := chaos.unfired():
        pytest.fail(unfired_message(unfired), pytrace=False)
    if ineffective := chaos.ineffective():
        pytest.fail("a fault had no effect: " + "; ".join(ineffective), pytrace=False)


def strict_params(
    targets: Any, families: Any, expected: dict[tuple[str, str], tuple[str, str]], where: str
) -> list[Any]:
    """One ``pytest.param`` per (target, family), a strict xfail (raises ``Weakness``) where a
    weakness is expected; ``where``: what the expectation holds for (e.g. "CPython 3.11")."""
    found = []
    for target in targets:
        for family in families:
            outcome, why = expected[(target, family)]
            marks = []
            if not set(outcome.split("|")) <= GOOD_OR_NA:
                reason = f"{target} on {where}: {why}"
                marks.append(pytest.mark.xfail(raises=Weakness, strict=True, reason=reason))
            found.append(pytest.param(target, family, marks=marks, id=f"{target}-{family}"))
    return found


def parametrize_matrix(
    metafunc: pytest.Metafunc,
    *,
    marker: str,
    whose: str,
    targets: Any,
    families: Callable[[str], list[str]],
    expected: dict[tuple[str, str], tuple[str, str]],
    core: set[tuple[str, str]],
    unstable: dict[tuple[str, str], str],
    versions: Callable[[str], str],
) -> None:
    """Parametrize a matrix of chaosgate's own targets (``target_name``, ``family``): its
    ``core`` cells under ``-m MARKER``, every cell under ``-m MARKER_full``; each strict
    (``strict_params``), those in ``unstable`` skipped with their reason; against a user's own
    target (``--chaos-target``), one skip that says why (``whose``: what it runs instead)."""
    from .pytest_plugin import chosen_target

    if "family" not in metafunc.fixturenames:
        return
    if chosen_target(metafunc.config) is not None:  # a run about the user's own target
        why = (
            f"the {marker} matrix runs chaosgate's own {whose}, not --chaos-target's: run it "
            f"without --chaos-target (pytest -m {marker})"
        )
        mark = getattr(pytest.mark, marker)  # (shown under -m MARKER too)
        skipped = pytest.param("-", "-", marks=[mark, pytest.mark.skip(reason=why)], id=marker)
        metafunc.parametrize(("target_name", "family"), [skipped])
        return
    markexpr = metafunc.config.option.markexpr
    # every cell when -m asks for the full matrix: it selects a cell marked full, not one
    # marked only with the matrix's marker (``-m engines``, ``-m "not network_full"``: core)
    full = _selects(markexpr, {marker, f"{marker}_full"}) and not _selects(markexpr, {marker})
    mark, mark_full = getattr(pytest.mark, marker), getattr(pytest.mark, f"{marker}_full")
    found = []
    for target in targets:
        for param in strict_params([target], families(target), expected, versions(target)):
            if full or (target, param.values[1]) in core:
                marks = [*param.marks, mark, *([mark_full] if full else [])]
                if reason := unstable.get((target, param.values[1])):  # shown, with its reason
                    skip = pytest.mark.skip(reason=f"not strict: {reason}")
                    marks = [mark, *([mark_full] if full else []), skip]
                found.append(pytest.param(*param.values, marks=marks, id=param.id))
    metafunc.parametrize(("target_name", "family"), found)


def _selects(markexpr: str | None, names: set[str]) -> bool:
    """Whether ``-m MARKEXPR`` selects a test with the markers ``names`` (pytest's parser)."""
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression

    def matches(name: str, /, **_: str | int | bool | None) -> bool:
        return name in names

    return bool(Expression.compile(markexpr).evaluate(matches))
