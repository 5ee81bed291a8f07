"""``python -m chaos``: re-render a run's report, or apply the gate to it; serve a target.

    python -m chaos report [PATH] [--format md|html|json] [--output FILE]
    python -m chaos gate [PATH] [--baseline OLD] [--config pyproject.toml]
    python -m chaos compare [PATH] [--readme README.md]
    python -m chaos serve SPEC DATA_DIR [--options JSON] [--stop-timeout S]

PATH is a report.json or a run directory (default: reports/latest). ``gate`` prints the summary
table and its findings and exits 0 (pass), 10 (a weakness found), 11 (a harness or environment
error) or 12 (bad configuration: a bad setting, or a report that cannot be read). ``serve`` runs the
target ``SPEC`` ("package.module:factory") on DATA_DIR for a ``chaos.ServedTarget``, which
drives it over stdin and stdout (not for use by hand); a bad spec or options exit 2 with one
line saying the cause and the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from ._compare import table as comparison
from ._compare import update_readme
from ._gate import EXIT_CONFIG, GateConfigError, evaluate, settings, table
from ._render import html, markdown
from ._report import ReportError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="re-render a run's report")
    rep.add_argument("path", nargs="?", default="reports/latest")
    rep.add_argument("--format", choices=("md", "html", "json"), default="md")
    rep.add_argument("--output", "-o", help="write here instead of standard output")
    gate = sub.add_parser("gate", help="apply the gate to a run's report")
    gate.add_argument("path", nargs="?", default="reports/latest")
    gate.add_argument("--baseline", help="an earlier report.json: fail on recovery regressions")
    gate.add_argument(
        "--config",
        default="pyproject.toml",
        help="where [tool.chaosgate.gate] is read from (default: ./pyproject.toml)",
    )
    cmp = sub.add_parser("compare", help="the pools-side-by-side table of a report")
    cmp.add_argument("path", nargs="?", default="reports/latest")
    cmp.add_argument("--readme", help="write it into this file's comparison block instead")
    srv = sub.add_parser("serve", help="run a target for a ServedTarget (stdin/stdout protocol)")
    srv.add_argument("spec", help="package.module:factory (e.g. chaos:SystemTarget)")
    srv.add_argument("data_dir")
    srv.add_argument("--options", default="{}", help="the factory's keyword arguments, as JSON")
    srv.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="seconds the target's stop() may take before its processes are killed",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        from ._served import serve_main

        return serve_main(args.spec, args.data_dir, args.options, args.stop_timeout)
    try:
        report = load(args.path)
        if args.command == "report":
            return _render(report, args.format, args.output)
        if args.command == "compare":
            return _compare(report, args.readme)
        where = f"[tool.chaosgate.gate] of {args.config}"
        gate_settings = settings(_gate_table(Path(args.config)), where)
        baseline = load(args.baseline) if args.baseline else None
    except (ReportError, GateConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    result = evaluate(report, gate_settings, baseline, args.baseline)
    for line in table(report):
        print(line)
    print(f"\ngate: {result.verdict.upper()} (exit {result.exit_code})")
    for f in result.findings:
        print(f"  {f.kind}: {f.scenario or 'the run'}: {f.text}")
    return result.exit_code


def _compare(report: dict, readme: str | None) -> int:
    try:
        if readme:
            update_readme(readme, report)
        else:
            sys.stdout.write(comparison(report))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _render(report: dict, fmt: str, output: str | None) -> int:
    text = {"md": markdown, "html": html, "json": lambda r: json.dumps(r, indent=1) + "\n"}[fmt](
        report
    )
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _gate_table(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            section = tomllib.load(f).get("tool", {}).get("chaosgate", {})
    except tomllib.TOMLDecodeError as e:
        raise GateConfigError(f"{path} is not valid TOML: {e}") from e
    gate = section.get("gate", {})
    if not isinstance(gate, dict):
        raise GateConfigError(f"[tool.chaosgate] gate in {path} must be a table of settings")
    return gate


if __name__ == "__main__":
    sys.exit(main())
