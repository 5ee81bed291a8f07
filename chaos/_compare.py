"""The comparison tables: pools side by side, one row per fault, from a report's comparison
scenarios (``observed``: target, fault, outcome, summary, detection and recovery times) -- one
table per matrix: ``pools`` (``scenarios/test_peers.py``), ``engines``
(``scenarios/test_engines.py``) and ``network`` (``scenarios/test_network.py``), each written
into its own block of the README."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._errors import ChaosError

BEGIN, END = "<!-- comparison:begin -->", "<!-- comparison:end -->"
BLOCKS = {
    "pools": (BEGIN, END),
    "engines": ("<!-- engines:begin -->", "<!-- engines:end -->"),
    "network": ("<!-- network:begin -->", "<!-- network:end -->"),
}
VERDICT = {
    "recovered": "recovered",
    "recycled": "recycled",
    "drained": "drained",
    "lost": "**lost**",
    "broken": "**broken**",
    "hung": "**hung**",
    "grew": "**grew**",
    "duplicated": "**duplicated**",
    "reordered": "**reordered**",
    "unexpected": "**unexpected**",
    "dead_lettered": "**dead-lettered**",
}


class CompareError(ChaosError, ValueError):
    """The report holds no comparison, or the README has no place for one."""


def matrices(report: Mapping[str, Any]) -> list[str]:
    """The matrices the report has cells of, in the order first seen."""
    cells = [sc["observed"] for sc in report["scenarios"] if sc.get("observed")]
    return list(dict.fromkeys(seen.get("matrix", "pools") for seen in cells))


def table(report: Mapping[str, Any], matrix: str = "pools") -> str:
    """Markdown: rows are faults, columns targets (in the order first seen)."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    targets: list[str] = []
    faults: list[str] = []
    for sc in report["scenarios"]:
        seen = sc.get("observed")
        if not seen or seen.get("matrix", "pools") != matrix:
            continue
        cells[(seen["fault"], seen["target"])] = seen
        if seen["target"] not in targets:
            targets.append(seen["target"])
        if seen["fault"] not in faults:
            faults.append(seen["fault"])
    if not cells:
        raise CompareError(
            f"the report has no comparison scenario of the {matrix} matrix: give the report of a "
            "run of scenarios/test_peers.py or scenarios/test_engines.py (e.g. `pytest "
            "scenarios/test_peers.py`, then reports/latest)"
        )
    lines = [
        "| fault | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for fault in faults:
        row = [_cell(cells.get((fault, t))) for t in targets]
        lines.append(f"| {fault.replace('_', ' ')} | " + " | ".join(row) + " |")
    run = report["run"]
    lines.append("")
    lines.append(
        f"Python {run['versions']['python']}, {run['machine']['cpus']} CPUs; run "
        f"`{run['id']}`. Detection: from the fault to the pool's first reaction (a death "
        "event, or a failed future); recovery: to the first message after the fault committed."
    )
    return "\n".join(lines) + "\n"


def _cell(seen: Mapping[str, Any] | None) -> str:
    if seen is None:
        return "-"
    text = VERDICT.get(seen["outcome"], seen["outcome"])
    if seen["outcome"] == "n/a":  # nothing was tested: no figure to show
        return text
    detail = seen["summary"].split("; ", 1)
    if seen["outcome"] == "recovered":
        text = seen["summary"]
    elif len(detail) > 1:
        text += ": " + detail[1]
    if seen.get("detection_ms") is not None:
        text += f" (detected in {seen['detection_ms']:.0f} ms)"
    return text.replace("|", "/")


def update_readme(path: str | Path, report: Mapping[str, Any]) -> None:
    """Replace the README's block of each matrix the report has (between its markers) with a
    fresh table; the other blocks are left as they are."""
    p = Path(path)
    text = p.read_text()
    found = matrices(report) or ["pools"]
    for matrix in found:
        begin, end = BLOCKS.get(matrix, BLOCKS["pools"])
        if begin not in text or end not in text:
            raise CompareError(
                f"{p} has no {begin} ... {end} block to fill; put those two lines where the "
                f"table of the {matrix} matrix belongs"
            )
        fresh = f"{begin}\n{table(report, matrix)}{end}"
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), _as_is(fresh), text, flags=re.S)
    p.write_text(text)


def _as_is(text: str) -> Callable[[re.Match[str]], str]:
    """A replacement for ``re.sub`` that is ``text`` itself (its backslashes not escapes)."""
    return lambda _: text
