"""The CI resilience gate: a run's report against thresholds and, optionally, a baseline report.

Settings (``[tool.chaosgate.gate]`` in pyproject.toml): ``lost``, ``duplicated``, ``reordered``
(most allowed in any scenario, default 0), ``detection_p99``, ``restart_p99``, ``recovery_p99``
(seconds, any scenario; default: no limit beyond each scenario's own ``chaos_slo``),
``regression`` (the ratio by which a scenario's recovery p50 or p99 may grow over the baseline's,
default 1.5) and ``regression_floor_ms`` (growth smaller than this is noise, default 25).

Exit codes: 0 the gate passed; 10 a weakness was found (an SLO breached, messages lost or
duplicated, a hang, a recovery regression); 11 a harness or environment error (a scenario that
errored, a planned fault that never fired, nothing ran); 12 bad configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ChaosError

EXIT_OK, EXIT_WEAKNESS, EXIT_HARNESS, EXIT_CONFIG = 0, 10, 11, 12
DEFAULTS: dict[str, Any] = {
    "lost": 0,
    "duplicated": 0,
    "reordered": 0,
    "detection_p99": None,
    "restart_p99": None,
    "recovery_p99": None,
    "regression": 1.5,
    "regression_floor_ms": 25.0,
}
WEAKNESS_KINDS = ("breach", "assertion", "timeout")


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

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scenario": self.scenario, "text": self.text}


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None

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
        }


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
        add(Finding("harness", None, "no scenario ran: every one was skipped or none was found"))
    for sc in scenarios:
        name = sc["nodeid"]
        if sc["outcome"] == "xfailed":
            continue  # a known weakness, declared and seen: the report shows it, the gate passes
        if sc["outcome"] == "xpassed":
            add(Finding("harness", name, f"expected to fail, passed: {sc['skip_reason']}"))
            continue
        if sc["outcome"] == "error":
            add(Finding("harness", name, f"errored: {_first_line(sc['failure'])}"))
        elif sc["outcome"] == "failed":
            kind = "weakness" if sc["failure_kind"] in WEAKNESS_KINDS else "harness"
            what = {
                "timeout": "hung (timed out)",
                "unfired": "a planned fault never fired",
                "xpass": "an expected weakness is gone: update the expectation",
            }.get(sc["failure_kind"] or "", "failed")
            add(Finding(kind, name, f"{what}: {_first_line(sc['failure'])}"))
        checker = sc.get("checker")
        if checker:
            for anomaly in ("lost", "duplicated", "reordered"):
                n = len(checker[anomaly])
                if n > gate[anomaly]:
                    allowed = gate[anomaly]
                    add(Finding("weakness", name, f"{anomaly}={n}, the gate allows {allowed}"))
        for figure in ("detection", "restart", "recovery"):
            limit = gate[f"{figure}_p99"]
            value = sc["figures"].get(f"{figure}_p99_ms")
            if limit is not None and value is not None and value > limit * 1000:
                add(
                    Finding(
                        "weakness",
                        name,
                        f"{figure} p99 {value:.0f} ms, the gate allows {limit * 1000:.0f} ms",
                    )
                )
    if baseline is not None:
        result.findings += regressions(report, baseline, gate)
    return result


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
                    )
                )
    return found


def _first_line(text: str | None) -> str:
    """The first ``E`` line of a pytest failure (the error), else its last line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line[2:].strip() for line in lines if line.startswith("E ")]
    return (errors or lines or ["no detail"])[0 if errors else -1][:300]


def table(report: Mapping[str, Any]) -> list[str]:
    """The summary table, as terminal lines."""
    rows = [("scenario", "verdict", "faults", "lost", "dup", "recovery p50/p99 ms")]
    for sc in report["scenarios"]:
        c, f = sc.get("checker"), sc["figures"]
        rec = (
            f"{f['recovery_p50_ms']:.0f}/{f['recovery_p99_ms']:.0f}"
            if "recovery_p50_ms" in f
            else "-"
        )
        fired = sum(1 for x in sc["faults"] if x["fired"])
        rows.append(
            (
                sc["name"][:60],
                sc["outcome"].upper(),
                f"{fired}/{len(sc['faults'])}",
                str(len(c["lost"])) if c else "-",
                str(len(c["duplicated"])) if c else "-",
                rec,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
