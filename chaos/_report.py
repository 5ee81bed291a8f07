"""Run reports: one JSON document per run (schema ``chaosgate-report/3``), rendered to Markdown
and HTML, in ``<dir>/<run id>/`` with ``<dir>/latest`` pointing at the newest run.

The pytest plugin builds one entry per scenario (a test using the ``chaos`` fixture) from its
``Scenario.record()`` and its outcome; ``build`` adds the run's metadata, ``write`` writes
``report.json`` (validated against the schema that ships in the package), ``report.md`` and
``report.html``. ``load`` reads a report back from a file or a run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from ._errors import ChaosError
from ._failure import cut

SCHEMA = "chaosgate-report/3"
KEEP_RUNS = 20  # run directories kept; older ones are removed
MARKED = (
    "fault",
    "died",
    "restarted",
    "hung",
    "recycled",
    "degraded",
    "recovered",
    "killed",
    "gave_up",
    "poisoned",
    "dead_lettered",
    "rewound",
)
FIGURES = ("detection", "restart", "recovery")
MAX_DUMP_CHARS = 100_000
BUCKETS = 60


class ReportError(ChaosError):
    """A report cannot be read, or does not match the schema."""


def schema() -> dict[str, Any]:
    return json.loads(resources.files("chaos").joinpath("report.schema.json").read_text())


def validate(report: Mapping[str, Any]) -> None:
    """Raise ReportError listing every place where ``report`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        raise ReportError(
            f"the report does not match schema {SCHEMA}: "
            + "; ".join(
                f"at /{'/'.join(map(str, e.absolute_path))}: {cut(e.message, 200)}"
                for e in errors[:20]
            )
        )


def scenario_entry(
    nodeid: str,
    outcome: str,
    duration: float,
    record: Mapping[str, Any] | None,
    *,
    failure: str | None = None,
    failure_kind: str | None = None,
    skip_reason: str | None = None,
    replay: str = "",
    post_mortem: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One scenario of a report, from its outcome and its ``Scenario.record()``."""
    record = record or {}
    events = list(record.get("events") or [])
    faults = list(record.get("faults") or [])
    verdict = record.get("verdict")
    line = timeline(events, faults)
    return {
        "nodeid": nodeid,
        "name": nodeid.rsplit("::", 1)[-1],
        "file": nodeid.split("::", 1)[0],
        "outcome": outcome,
        "duration_s": round(duration, 3),
        "failure": failure,
        "failure_kind": failure_kind,
        "skip_reason": skip_reason,
        "replay": replay,
        "slo": dict(record.get("slo") or {}),
        "breaches": list(record.get("breaches") or []),
        "faults": faults,
        "checker": verdict,
        "figures": dict(record.get("figures") or {}),
        "observed": record.get("observed"),
        "examples": list(record.get("examples") or []),
        "degradations": [
            {
                "t": round(e["mono"] - line["t0_mono"], 4) if e.get("mono") else None,
                "mode": e.get("mode") or e.get("component"),
                "workers": e.get("workers"),
                "reason": e.get("reason", ""),
                "climb": e["kind"] == "recovered",
            }
            for e in events
            if e.get("kind") in ("degraded", "recovered")
        ],
        "dead_letters": [
            {"id": e.get("id"), "reason": e.get("reason", ""), "worker": e.get("worker")}
            for e in events
            if e.get("kind") == "dead_lettered"
        ],
        "dumps": _dumps(events, post_mortem)
        + [
            {
                "pid": None,
                "worker": None,
                "why": "the pool stopped answering (results that never came, or a shutdown "
                "that blocked)",
                "blocked": "",
                "path": None,
                "text": text[:MAX_DUMP_CHARS],
            }
            for text in ((record.get("observed") or {}).get("dumps") or [])
        ],
        "timeline": line,
        "steps": list(record.get("steps") or []),
    }


def _dumps(
    events: list[Mapping[str, Any]], post_mortem: dict[str, Any] | None
) -> list[dict[str, Any]]:
    found = []
    for e in events:
        if e.get("kind") != "hung":
            continue
        text = ""
        if e.get("dump"):
            with contextlib.suppress(OSError):
                text = Path(e["dump"]).read_text(errors="replace")[:MAX_DUMP_CHARS]
        found.append(
            {
                "pid": e.get("pid"),
                "worker": e.get("worker"),
                "why": f"hung: no progress for {e.get('silence')} s",
                "blocked": e.get("blocked") or "",
                "path": e.get("dump"),
                "text": text,
            }
        )
    if post_mortem:
        found.append(post_mortem)
    return found


def post_mortem_dump(text: str, why: str) -> dict[str, Any]:
    """A dump the harness gathered itself (a timeout, a call into the target that hung)."""
    return {
        "pid": None,
        "worker": None,
        "why": why[:600],
        "blocked": "",
        "path": None,
        "text": text[:MAX_DUMP_CHARS],
    }


def timeline(events: list[Mapping[str, Any]], faults: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Faults and lifecycle events against time (s from the first), and messages committed per
    interval (from the checkpoints)."""
    marks: list[dict[str, Any]] = [
        {
            "mono": float(f["mono"]),
            "kind": "fault",
            "worker": None,
            "pid": f.get("pid"),
            "detail": f"{f['kind']} of {f['target']}"
            + (f" ({f['detail']})" if f["detail"] else ""),
            **({"until": float(f["until"])} if isinstance(f.get("until"), int | float) else {}),
        }
        for f in faults
        if isinstance(f.get("mono"), int | float) and math.isfinite(f["mono"])
    ]
    for e in events:
        if e.get("kind") in MARKED and e.get("kind") != "fault" and e.get("mono") is not None:
            detail = e.get("signal") or e.get("reason") or e.get("mode") or e.get("id") or ""
            marks.append(
                {
                    "mono": e["mono"],
                    "kind": e["kind"],
                    "worker": e.get("worker"),
                    "pid": e.get("pid"),
                    "detail": str(detail),
                }
            )
    checkpoints = [
        (e["mono"], int(e.get("messages") or 0))
        for e in events
        if e.get("kind") == "checkpointed" and e.get("mono") is not None
    ]
    times = [m["mono"] for m in marks] + [m["until"] for m in marks if "until" in m]
    times += [t for t, _ in checkpoints]
    if not times:
        return {"t0_mono": 0.0, "span_s": 0.0, "events": [], "committed": []}
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-3)
    width = span / BUCKETS
    counts = [0] * BUCKETS
    for t, n in checkpoints:
        counts[min(int((t - t0) / width), BUCKETS - 1)] += n
    return {
        "t0_mono": t0,
        "span_s": round(span, 4),
        "events": [
            {
                **{k: v for k, v in m.items() if k not in ("mono", "until")},
                "t": round(m["mono"] - t0, 4),
                # a fault that lasts (a partition, a freeze): until when, shaded
                **({"until": round(m["until"] - t0, 4)} if "until" in m else {}),
            }
            for m in sorted(marks, key=lambda m: m["mono"])
        ],
        "committed": [
            {"t": round(i * width, 4), "width": round(width, 4), "messages": n}
            for i, n in enumerate(counts)
        ]
        if checkpoints
        else [],
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_metadata(*, seed: int, target: str | None, profile: str, started: float) -> dict[str, Any]:
    import psutil

    return {
        "id": datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
        + f"-{seed}-{os.getpid()}",
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "finished": None,
        "duration_s": None,
        "seed": seed,
        "target": target or "system (default)",
        "profile": profile,
        "command": " ".join(["pytest", *sys.argv[1:]]),
        "exit_status": None,
        "gate": None,
        "versions": {
            "python": platform.python_version(),
            "chaosgate": _version("chaosgate"),
            "pytest": _version("pytest"),
            "hypothesis": _version("hypothesis"),
            "psutil": _version("psutil"),
            "py-spy": _version("py-spy"),
        },
        "machine": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
        },
    }


def build(run: dict[str, Any], scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    """The report: ``run`` metadata (finished now), the scenarios and a summary."""
    run = dict(run)
    finished = time.time()
    run["finished"] = datetime.fromtimestamp(finished, UTC).isoformat()
    started = datetime.fromisoformat(run["started"]).timestamp()
    run["duration_s"] = round(finished - started, 3)
    outcomes = [s["outcome"] for s in scenarios]
    return {
        "schema": SCHEMA,
        "run": run,
        "summary": {
            "scenarios": len(scenarios),
            "passed": outcomes.count("passed"),
            "failed": outcomes.count("failed"),
            "skipped": outcomes.count("skipped"),
            "errors": outcomes.count("error"),
            "xfailed": outcomes.count("xfailed"),
            "xpassed": outcomes.count("xpassed"),
            "faults_fired": sum(f["fired"] > 0 for s in scenarios for f in s["faults"]),
            # expected weaknesses (xfailed) are counted in "xfailed", not as breaches
            "breaches": sum(len(s["breaches"]) for s in scenarios if s["outcome"] != "xfailed"),
        },
        "scenarios": scenarios,
    }


def write(report: dict[str, Any], directory: str | Path) -> Path:
    """Write ``report.json`` (validated), ``report.md`` and ``report.html`` into
    ``directory/<run id>/``; point ``directory/latest`` at it; keep the newest KEEP_RUNS runs."""
    from ._render import html, markdown

    validate(report)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / report["run"]["id"]
    staging = root / f".{run_dir.name}.{os.getpid()}"  # complete, or not there at all
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        (staging / "report.md").write_text(markdown(report), encoding="utf-8")
        (staging / "report.html").write_text(html(report), encoding="utf-8")
        shutil.rmtree(run_dir, ignore_errors=True)
        os.replace(staging, run_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    latest = root / "latest"
    tmp = root / f".latest-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
    runs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and _is_run(p))
    for old in runs[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return run_dir


RUN_ID = re.compile(r"\d{8}T\d{6}Z-\d+-\d+")


def _is_run(path: Path) -> bool:
    """A finished run's directory (never another writer's hidden staging directory)."""
    return bool(RUN_ID.fullmatch(path.name)) and (path / "report.json").exists()


def load(path: str | Path) -> dict[str, Any]:
    """A report from ``report.json`` or a run directory (e.g. ``reports/latest``), validated."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    fix = "give a report.json written by `pytest --chaos-report`, or a run directory such as "
    fix += "reports/latest"
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"no report at {path}: run `pytest scenarios/` first, or {fix}") from None
    except OSError as e:
        raise ReportError(f"cannot read the report {p}: {e.strerror or e}; {fix}") from e
    except ValueError as e:  # not JSON, or not UTF-8
        raise ReportError(f"{p} is not a JSON report ({cut(str(e), 200)}); {fix}") from e
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        found = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise ReportError(
            f"{p} is not a {SCHEMA} report (schema: {found!r}); {fix}, as this chaosgate "
            "writes them"
        )
    try:
        validate(report)
    except ReportError as e:
        raise ReportError(
            f"{p}: {e}; was it edited, or written by another chaosgate version? {fix}"
        ) from e
    return report
