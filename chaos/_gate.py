"""The CI resilience gate: a run's report against thresholds and, optionally, a baseline report.

Settings (``[tool.chaosgate.gate]`` in pyproject.toml): ``lost``, ``duplicated``, ``reordered``,
``unexpected``, ``dead_lettered`` (most allowed in any scenario, default 0; dead letters count
beyond those a scenario names as expected), ``skipped`` (most scenarios that may be skipped;
default: any number, always listed with their reasons), ``detection_p99``, ``restart_p99``,
``recovery_p99`` (seconds, any scenario; default: no limit beyond each scenario's own
``chaos_slo``), ``regression`` (the ratio by which a scenario's recovery p50 or p99 may grow over
the baseline's, default 1.5) and ``regression_floor_ms`` (growth smaller than this is noise,
default 25).

Exit codes: 0 the gate passed; 10 a weakness was found (an SLO breached, messages lost,
duplicated, reordered or dead-lettered, a hang, processes leaked, a recovery regression); 11 a
harness or environment error (a scenario that errored, a planned fault that never fired or had
no effect, nothing ran, more skips than allowed); 12 bad configuration. Each finding has a
``category`` (``lost``, ``duplicated``, ``reordered``, ``unexpected``, ``dead_lettered``,
``recovery``, ``detection``, ``restart``, ``mode``, ``hung``, ``leak``, ``target_error`` (the
target raised where it must not), ``assertion``, ``regression``; ``error``, ``contract`` (the
adapter broke the target contract), ``unfired``, ``no_effect``, ``skipped``, ``xpass``,
``empty``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ChaosError
from ._failure import one_line

EXIT_OK, EXIT_WEAKNESS, EXIT_HARNESS, EXIT_CONFIG = 0, 10, 11, 12
DEFAULTS: dict[str, Any] = {
    "lost": 0,
    "duplicated": 0,
    "reordered": 0,
    "unexpected": 0,
    "dead_lettered": 0,
    "skipped": None,
    "detection_p99": None,
    "restart_p99": None,
    "recovery_p99": None,
    "regression": 1.5,
    "regression_floor_ms": 25.0,
}
WEAKNESS_KINDS = ("breach", "assertion", "timeout", "leak", "hung", "target_error", "not_replaced")
ANOMALIES = ("lost", "duplicated", "reordered", "unexpected", "dead_lettered")


class GateConfigError(ChaosError):
    """A gate setting is bad; the message says where it came from and the fix."""


def settings(values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Gate settings with defaults filled in, each checked."""
    if values is not None and not isinstance(values, Mapping):
        raise GateConfigError(f"the gate settings in {where} must be a table, not {values!r}")
    values = dict(values or {})
    unknown = set(values) - set(DEFAULTS)
    if unknown:
        raise GateConfigError(
            f"unknown gate setting(s) {', '.join(sorted(unknown))} in {where}; known: "
            + ", ".join(DEFAULTS)
        )
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise GateConfigError(
                f"bad gate setting {key} = {value!r} in {where}: give a number >= 0"
            )
        if key == "regression" and value < 1:
            raise GateConfigError(
                f"bad gate setting regression = {value!r} in {where}: a ratio >= 1 (1.5 allows "
                "recovery to grow by half over the baseline)"
            )
    return {**DEFAULTS, **values}


@dataclass
class Finding:
    kind: str  # "weakness" or "harness"
    scenario: str | None
    text: str
    category: str = "error"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "category": self.category,
            "scenario": self.scenario,
            "text": self.text,
        }


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (scenario, reason)

    @property
    def verdict(self) -> str:
        kinds = {f.kind for f in self.findings}
        return "weakness" if "weakness" in kinds else "harness" if kinds else "pass"

    @property
    def exit_code(self) -> int:
        return {"pass": EXIT_OK, "weakness": EXIT_WEAKNESS, "harness": EXIT_HARNESS}[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "settings": self.settings,
            "baseline": self.baseline,
            "findings": [f.as_dict() for f in self.findings],
            "skipped": [{"scenario": n, "reason": r} for n, r in self.skipped],
        }

    def categories(self) -> list[str]:
        """The categories found, each once, weaknesses first."""
        ordered = sorted(self.findings, key=lambda f: f.kind != "weakness")
        return list(dict.fromkeys(f.category for f in ordered))


def evaluate(
    report: Mapping[str, Any],
    gate: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str | None = None,
) -> GateResult:
    """Every finding of the gate over ``report`` (see the module doc)."""
    result = GateResult(settings=dict(gate), baseline=baseline_name)
    add = result.findings.append
    scenarios = report["scenarios"]
    if not [s for s in scenarios if s["outcome"] != "skipped"]:
        text = "no scenario ran: every one was skipped or none was found"
        add(Finding("harness", None, text, "empty"))
    result.skipped = [
        (s["nodeid"], s.get("skip_reason") or "no reason given")
        for s in scenarios
        if s["outcome"] == "skipped"
    ]
    if gate["skipped"] is not None and len(result.skipped) > gate["skipped"]:
        add(
            Finding(
                "harness",
                None,
                f"{len(result.skipped)} scenario(s) skipped, the gate allows {gate['skipped']}: "
                + "; ".join(f"{n.rsplit('::', 1)[-1]} ({r})" for n, r in result.skipped)[:600],
                "skipped",
            )
        )
    for sc in scenarios:
        name = sc["nodeid"]
        if sc["outcome"] == "xfailed":
            continue  # a known weakness, declared and seen: the report shows it, the gate passes
        if sc["outcome"] == "xpassed":
            text = f"expected to fail, passed: {sc['skip_reason']}"
            add(Finding("harness", name, text, "xpass"))
            continue
        if sc["outcome"] == "error":
            add(Finding("harness", name, f"errored: {one_line(sc['failure'])}", "error"))
        elif sc["outcome"] == "failed":
            add_failure(add, sc)
        checker = sc.get("checker")
        if checker:
            for anomaly in ANOMALIES:
                n = len(checker.get(anomaly) or [])
                if n > gate[anomaly]:
                    text = f"{anomaly}={n}, the gate allows {gate[anomaly]}"
                    add(Finding("weakness", name, text, anomaly))
        for figure in ("detection", "restart", "recovery"):
            limit = gate[f"{figure}_p99"]
            value = sc["figures"].get(f"{figure}_p99_ms")
            if limit is not None and value is not None and value > limit * 1000:
                text = f"{figure} p99 {value:.0f} ms, the gate allows {limit * 1000:.0f} ms"
                add(Finding("weakness", name, text, figure))
    if baseline is not None:
        result.findings += regressions(report, baseline, gate)
    return result


_FAILURES = {  # failure kind -> (finding kind, category, what it means)
    "breach": ("weakness", "breach", "failed"),
    "assertion": ("weakness", "assertion", "failed"),
    "timeout": ("weakness", "hung", "hung (timed out)"),
    "hung": ("weakness", "hung", "hung"),
    "leak": ("weakness", "leak", "processes leaked"),
    "target_error": ("weakness", "target_error", "the target raised"),
    "not_replaced": ("weakness", "recovery", "killed workers not replaced"),
    "contract": ("harness", "contract", "the target's adapter broke the contract"),
    "unfired": ("harness", "unfired", "a planned fault never fired"),
    "no_effect": ("harness", "no_effect", "a fault had no effect"),
    "xpass": ("harness", "xpass", "an expected weakness is gone: update the expectation"),
}


def add_failure(add: Any, sc: Mapping[str, Any]) -> None:
    """The findings of a failed scenario: one per breach (each with its category), else one
    for the failure."""
    name, kind = sc["nodeid"], sc["failure_kind"] or "error"
    if kind == "breach" and sc.get("breaches"):
        from ._scenario import category

        for breach in sc["breaches"]:
            add(Finding("weakness", name, f"SLO breached: {breach}", category(breach)))
        return
    finding, cat, what = _FAILURES.get(kind, ("harness", "error", "failed"))
    add(Finding(finding, name, f"{what}: {one_line(sc['failure'])}", cat))


def regressions(
    report: Mapping[str, Any], baseline: Mapping[str, Any], gate: Mapping[str, Any]
) -> list[Finding]:
    """Scenarios whose recovery p50 or p99 grew by more than ``regression`` over the baseline."""
    before = {s["nodeid"]: s["figures"] for s in baseline["scenarios"]}
    found = []
    for sc in report["scenarios"]:
        old = before.get(sc["nodeid"])
        if not old:
            continue
        for figure in ("recovery_p50_ms", "recovery_p99_ms"):
            a, b = old.get(figure), sc["figures"].get(figure)
            if a is None or b is None:
                continue
            if b > a * gate["regression"] and b - a > gate["regression_floor_ms"]:
                found.append(
                    Finding(
                        "weakness",
                        sc["nodeid"],
                        f"{figure[:-3].replace('_', ' ')} regressed {b / max(a, 1e-9):.1f}x: "
                        f"{a:.0f} ms -> {b:.0f} ms (the gate allows {gate['regression']}x)",
                        "regression",
                    )
                )
    return found


NAME_WIDTH = 60  # the scenario column of the terminal table, at most


def shorten(name: str, width: int) -> str:
    """``name`` in ``width`` characters, cut in the middle so both ends stay readable; a
    parametrised name keeps its brackets and both ends of its ids: "test_x[Proce…Executor]"."""
    base, bracket, params = name.partition("[")
    if len(name) <= width or not (bracket and params.endswith("]")):
        return _middle(name, width)
    ids, room = params[:-1], width - 2
    keep = len(base) if len(base) + min(len(ids), 12) <= room else max(room - len(ids), room // 2)
    return f"{_middle(base, keep)}[{_middle(ids, room - keep)}]"


def _middle(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    head = width // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def table(report: Mapping[str, Any]) -> list[str]:
    """The summary table, as terminal lines."""
    rows = [
        (
            "scenario",
            "verdict",
            "faults",
            "effective",
            "lost",
            "dup",
            "reord",
            "dead",
            "recovery ms",
        )
    ]
    for sc in report["scenarios"]:
        c, f = sc.get("checker"), sc["figures"]
        rec = (
            f"{f['recovery_p50_ms']:.0f}/{f['recovery_p99_ms']:.0f}"
            if "recovery_p50_ms" in f
            else "-"
        )
        fired = sum(1 for x in sc["faults"] if x["fired"])
        effective = sum(1 for x in sc["faults"] if x.get("effect") and not x.get("no_effect"))
        rows.append(
            (
                shorten(sc["name"], NAME_WIDTH),
                sc["outcome"].upper(),
                f"{fired}/{len(sc['faults'])}",
                str(effective),
                *(str(len(c.get(a) or [])) if c else "-" for a in ANOMALIES if a != "unexpected"),
                rec,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
