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

Every error is one line on standard error, ``chaosgate: error: <cause>; <fix>``, never a
traceback: exit 2 for bad arguments, 12 for a report, README or configuration that cannot be
used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import NoReturn

from ._compare import CompareError, matrices, update_readme
from ._compare import table as comparison
from ._errors import ChaosError
from ._gate import EXIT_CONFIG, GateConfigError, evaluate, settings, table
from ._render import html, markdown
from ._report import ReportError, load

EXIT_USAGE = 2  # bad arguments, as argparse has it


class UsageError(ChaosError):
    """A file named on the command line cannot be used; the message says which, and the fix."""


class _Parser(argparse.ArgumentParser):
    """Bad arguments in one line, the cause and where the usage is, instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see `{self.prog} --help`", EXIT_USAGE)


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one line on standard error and exit with ``code``."""
    one = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"chaosgate: error: {one}", file=sys.stderr)
    sys.exit(code)


def file_error(
    action: str, path: str | Path, error: OSError | UnicodeError, fix: str
) -> UsageError:
    """The error for a file that cannot be used: "cannot read X: no such file or directory; ..."."""
    why = "not UTF-8 text" if isinstance(error, UnicodeError) else error.strerror or str(error)
    return UsageError(f"cannot {action} {path}: {why[:1].lower()}{why[1:]}; {fix}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m chaos", description=__doc__.splitlines()[0])
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
        help="where [tool.chaosgate.gate] is read from (default: ./pyproject.toml, if any)",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from ._served import serve_main

        return serve_main(args.spec, args.data_dir, args.options, args.stop_timeout)
    try:
        report = load(args.path)
        if args.command == "report":
            return _render(report, args.format, args.output)
        if args.command == "compare":
            return _compare(report, args.readme)
        config = Path(args.config or "pyproject.toml")
        gate_settings = settings(
            _gate_table(config, required=bool(args.config)), f"[tool.chaosgate.gate] of {config}"
        )
        baseline = _baseline(args.baseline)
    except (ReportError, GateConfigError, CompareError, UsageError) as e:
        fail(str(e), EXIT_CONFIG)
    result = evaluate(report, gate_settings, baseline, args.baseline)
    for line in table(report):
        print(line)
    print(f"\ngate: {result.verdict.upper()} (exit {result.exit_code})")
    for f in result.findings:
        print(f"  {f.kind}: {f.scenario or 'the run'}: {f.text}")
    return result.exit_code


def _baseline(path: str | None) -> dict | None:
    try:
        return load(path) if path else None
    except ReportError as e:
        raise ReportError(f"--baseline: {e}") from e


def _compare(report: dict, readme: str | None) -> int:
    if not readme:
        sys.stdout.write("\n".join(comparison(report, m) for m in matrices(report) or ["pools"]))
        return 0
    try:
        update_readme(readme, report)
    except (OSError, UnicodeError) as e:
        fix = "give the README to update with --readme PATH (an existing, writable file)"
        written = Path(readme).exists() and not isinstance(e, UnicodeError)
        raise file_error("update" if written else "read", readme, e, fix) from e
    return 0


def _render(report: dict, fmt: str, output: str | None) -> int:
    text = {"md": markdown, "html": html, "json": lambda r: json.dumps(r, indent=1) + "\n"}[fmt](
        report
    )
    if not output:
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        fix = "give --output a file in an existing, writable directory"
        raise file_error("write", output, e, fix) from e
    return 0


def _gate_table(path: Path, required: bool) -> dict:
    """``[tool.chaosgate.gate]`` of ``path``; nothing if ``path`` is the default and absent."""
    if not path.exists() and not required:
        return {}
    fix = "give the pyproject.toml that holds [tool.chaosgate.gate] with --config PATH"
    try:
        with open(path, "rb") as f:
            found = tomllib.load(f)
    except (OSError, UnicodeError) as e:
        raise file_error("read", path, e, fix) from e
    except tomllib.TOMLDecodeError as e:
        raise GateConfigError(f"{path} is not valid TOML: {e}; fix it, or {fix}") from e
    for key in ("tool", "chaosgate", "gate"):
        found = found.get(key, {})
        if not isinstance(found, dict):
            raise GateConfigError(
                f"{key} in {path} must be a table (e.g. [tool.chaosgate.gate]), not {found!r}"
            )
    return found


if __name__ == "__main__":
    sys.exit(main())
