"""Reports rendered for people: Markdown (a table a reviewer reads in a pull request) and one
self-contained HTML file (no network: styles inline, timelines as inline SVG drawn by
matplotlib, stack dumps folded in ``<details>``), both from Jinja templates.

A failure is shown by its message (``_failure.message``: the assertion or breach lines), not by
pytest's whole text, which the HTML keeps folded. Each chart's SVG ids are prefixed with its
scenario's, so that no id repeats in the page: matplotlib names its glyphs, clip paths and ticks
the same way in every chart.
"""

from __future__ import annotations

import io
import re
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup, escape

from ._failure import cut, message

# How each kind of timeline event is drawn: lane, marker, colour.
LANES = {
    "fault": (5, "X", "#d62728"),
    "died": (4, "v", "#8c564b"),
    "hung": (4, "s", "#e377c2"),
    "killed": (4, "x", "#7f7f7f"),
    "recycled": (4, "o", "#bcbd22"),
    "restarted": (3, "^", "#2ca02c"),
    "rewound": (3, "<", "#17becf"),
    "degraded": (2, "D", "#ff7f0e"),
    "recovered": (2, "d", "#1f77b4"),
    "gave_up": (2, "P", "#000000"),
    "poisoned": (1, "*", "#9467bd"),
    "dead_lettered": (1, "p", "#9467bd"),
}
LANE_NAMES = {5: "faults", 4: "deaths, hangs", 3: "restarts", 2: "fallback", 1: "poison"}
TIMED = ("detection", "restart", "recovery")  # objectives in seconds; the others count, or name
MESSAGE_LINES, MESSAGE_WIDTH = 12, 240  # a failure's message, as shown
SVG_ID = re.compile(r'(?<=\s)id="([^"]+)"')
SVG_REF = re.compile(r'(url\(#|href="#)([^)"]+)')  # url(#x), href="#x", xlink:href="#x"


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("chaos", "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["ms"] = _ms
    env.filters["highlight"] = highlight
    env.filters["message"] = failure_message
    env.globals["limit"] = limit
    env.globals["timeline_svg"] = timeline_svg
    env.globals["verdict_of"] = verdict_of
    return env


def _ms(value: Any) -> str:
    if value is None or isinstance(value, Undefined):
        return "-"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def limit(objective: str, value: Any) -> str:
    """An SLO objective's bound: "≤0" (lost), "≤5.0 s" (recovery), "=inline" (mode)."""
    if isinstance(value, str):
        return f"={value}"
    return f"≤{value} s" if objective in TIMED else f"≤{value}"


def failure_message(text: str | None) -> dict[str, Any]:
    """The first MESSAGE_LINES lines of a failure's message, each cut at MESSAGE_WIDTH, and how
    many lines more there are."""
    lines = message(text)
    return {
        "lines": [cut(line, MESSAGE_WIDTH) for line in lines[:MESSAGE_LINES]],
        "more": max(len(lines) - MESSAGE_LINES, 0),
    }


def verdict_of(scenario: dict[str, Any]) -> str:
    """PASS, FAIL, SKIP or ERROR, as a reader wants it."""
    return {
        "passed": "PASS",
        "failed": "FAIL",
        "skipped": "SKIP",
        "error": "ERROR",
        "xfailed": "XFAIL",
        "xpassed": "XPASS",
    }[scenario["outcome"]]


def highlight(text: str, blocked: str) -> Markup:
    """The dump, escaped, with the lines of the blocked frame marked."""
    needle = blocked.split(" waits at ")[0].split(" (")[0].strip() if blocked else ""
    lines = []
    for line in text.splitlines():
        safe = escape(line)
        if needle and needle in line:
            lines.append(Markup('<mark class="blocked">') + safe + Markup("</mark>"))
        else:
            lines.append(safe)
    return Markup("\n").join(lines)


def markdown(report: dict[str, Any]) -> str:
    return _environment().get_template("report.md.j2").render(r=report)


def html(report: dict[str, Any]) -> str:
    return _environment().get_template("report.html.j2").render(r=report)


def timeline_svg(scenario: dict[str, Any], prefix: str) -> Markup:
    """The scenario's timeline as inline SVG, its ids prefixed with ``prefix``: events in lanes
    against time, with messages committed per interval as bars beneath; a panel with nothing
    to show is left out."""
    events, committed = scenario["timeline"]["events"], scenario["timeline"]["committed"]
    if not events and not committed:
        return Markup("")
    import matplotlib
    from matplotlib.figure import Figure

    ratios = [r for r, shown in ((3, events), (1.4, committed)) if shown]
    fig = Figure(figsize=(9.5, 0.5 + 0.5 * sum(ratios)), layout="constrained")
    axes = fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios, squeeze=False)[:, 0]
    if events:
        _draw_lanes(axes[0], events)
    if committed:
        _draw_committed(axes[-1], committed)
    axes[-1].set_xlabel("seconds since the first event", fontsize=8)
    buf = io.StringIO()
    # hashsalt: the same ids in every render of a report (prefix: unique within the page)
    with matplotlib.rc_context({"svg.hashsalt": scenario["nodeid"]}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return Markup(own_ids(svg[svg.index("<svg") :], prefix))


def own_ids(svg: str, prefix: str) -> str:
    """``svg`` with every id, and every reference to one, prefixed."""
    svg = SVG_ID.sub(lambda m: f'id="{prefix}{m[1]}"', svg)
    return SVG_REF.sub(lambda m: f"{m[1]}{prefix}{m[2]}", svg)


def _draw_lanes(ax: Any, events: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for e in events:
        lane, marker, colour = LANES.get(e["kind"], (1, ".", "#333333"))
        label = e["kind"] if e["kind"] not in seen else None
        seen.add(e["kind"])
        ax.scatter([e["t"]], [lane], marker=marker, color=colour, s=42, label=label, zorder=3)
        if e.get("until") is not None:  # a fault that lasts: its span shaded, healed at the end
            spanned = "fault span" if "fault span" not in seen else None
            seen.add("fault span")
            ax.axvspan(e["t"], e["until"], color=colour, alpha=0.12, label=spanned, zorder=1)
    ax.set_yticks(list(LANE_NAMES), list(LANE_NAMES.values()), fontsize=8)
    ax.set_ylim(0.4, 5.6)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(
        fontsize=7,
        ncols=min(len(seen), 6),
        loc="upper center",
        bbox_to_anchor=(0.5, 1.32),
        frameon=False,
    )


def _draw_committed(ax: Any, committed: list[dict[str, Any]]) -> None:
    ax.bar(
        [c["t"] for c in committed],
        [c["messages"] for c in committed],
        width=[c["width"] for c in committed],
        align="edge",
        color="#4c72b0",
    )
    ax.set_ylabel("committed", fontsize=8)
    ax.tick_params(labelsize=7)
