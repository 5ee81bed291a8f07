"""``python -m chaos``: every error is one line naming its cause and its fix, with a non-zero exit
code and no traceback, whatever the subcommand and whatever was wrong (a missing or unreadable
file, a file that is not JSON or not a report, bad TOML or a bad setting, bad arguments)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos._gate import EXIT_CONFIG
from chaos._report import build, run_metadata, scenario_entry, write

ROOT = Path(__file__).resolve().parent.parent
USAGE = 2  # argparse's exit code, kept for bad arguments


def chaos_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chaos", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A readable report (run directory ``run``), and files that are wrong in every way."""
    entry = scenario_entry("t.py::test_x", "passed", 1.0, {"faults": [], "events": [], "slo": {}})
    report = build(run_metadata(seed=1, target=None, profile="ci", started=0.0), [entry])
    (tmp_path / "run").symlink_to(write(report, tmp_path / "reports"))
    (tmp_path / "not.json").write_text("not json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "other.json").write_text('{"schema": "someone-else/1"}')
    broken = json.loads(json.dumps(report))
    del broken["scenarios"][0]["checker"]
    broken["scenarios"][0]["outcome"] = "meh"
    (tmp_path / "edited.json").write_text(json.dumps(broken))
    (tmp_path / "adir").mkdir()
    (tmp_path / "bad.toml").write_text("x = \n")
    (tmp_path / "scalar.toml").write_text("[tool]\nchaosgate = 3\n")
    (tmp_path / "setting.toml").write_text('[tool.chaosgate.gate]\nrecovery_p99 = "fast"\n')
    (tmp_path / "unknown.toml").write_text("[tool.chaosgate.gate]\nlots = 1\n")
    (tmp_path / "plain.md").write_text("a README without the comparison markers\n")
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe\x00")
    return tmp_path


# (arguments, exit code, what the line must say: the cause, then the fix)
ERRORS = {
    "compare --readme missing": (
        ["compare", "run", "--readme", "missing.md"],
        EXIT_CONFIG,
        ["cannot read missing.md: no such file", "give the README to update with --readme PATH"],
    ),
    "compare --readme a directory": (
        ["compare", "run", "--readme", "adir"],
        EXIT_CONFIG,
        ["adir: is a directory", "--readme PATH"],
    ),
    "compare --readme not text": (
        ["compare", "run", "--readme", "binary.md"],
        EXIT_CONFIG,
        ["cannot read binary.md: not UTF-8 text", "--readme PATH"],
    ),
    "compare --readme without markers": (
        ["compare", "run", "--readme", "plain.md"],
        EXIT_CONFIG,
        ["plain.md has no <!-- comparison:begin -->", "put those two lines where the table"],
    ),
    "compare without peers": (
        ["compare", "run"],
        EXIT_CONFIG,
        ["has no comparison scenario", "scenarios/test_peers.py"],
    ),
    "report missing": (
        ["report", "nowhere"],
        EXIT_CONFIG,
        ["no report at nowhere", "run `pytest scenarios/` first"],
    ),
    "report not JSON": (
        ["report", "not.json"],
        EXIT_CONFIG,
        ["not.json is not a JSON report (Expecting value", "give a report.json"],
    ),
    "gate on a report not UTF-8": (
        ["gate", "binary.json"],
        EXIT_CONFIG,
        ["binary.json is not a JSON report", "give a report.json"],
    ),
    "report of another schema": (
        ["report", "other.json"],
        EXIT_CONFIG,
        ["is not a chaosgate-report/3 report (schema: 'someone-else/1')", "give a report.json"],
    ),
    "report edited": (
        ["report", "edited.json"],
        EXIT_CONFIG,
        ["'checker' is a required property", "'meh' is not one of", "give a report.json"],
    ),
    "report --output nowhere": (
        ["report", "run", "--output", "no/such/dir/r.md"],
        EXIT_CONFIG,
        ["cannot write no/such/dir/r.md: no such file", "in an existing, writable directory"],
    ),
    "report --format unknown": (
        ["report", "run", "--format", "xml"],
        USAGE,
        ["invalid choice: 'xml'", "see `python -m chaos report --help`"],
    ),
    "gate --config missing": (
        ["gate", "run", "--config", "nowhere.toml"],
        EXIT_CONFIG,
        ["cannot read nowhere.toml: no such file", "--config PATH"],
    ),
    "gate --config a directory": (
        ["gate", "run", "--config", "adir"],
        EXIT_CONFIG,
        ["cannot read adir: is a directory", "--config PATH"],
    ),
    "gate --config bad TOML": (
        ["gate", "run", "--config", "bad.toml"],
        EXIT_CONFIG,
        ["bad.toml is not valid TOML: Invalid value", "fix it"],
    ),
    "gate --config not a table": (
        ["gate", "run", "--config", "scalar.toml"],
        EXIT_CONFIG,
        ["chaosgate in scalar.toml must be a table", "[tool.chaosgate.gate]"],
    ),
    "gate --config bad setting": (
        ["gate", "run", "--config", "setting.toml"],
        EXIT_CONFIG,
        ["bad gate setting recovery_p99 = 'fast'", "give a number >= 0"],
    ),
    "gate --config unknown setting": (
        ["gate", "run", "--config", "unknown.toml"],
        EXIT_CONFIG,
        ["unknown gate setting(s) lots", "known: lost"],
    ),
    "gate --baseline missing": (
        ["gate", "run", "--baseline", "old.json"],
        EXIT_CONFIG,
        ["--baseline: no report at old.json", "give a report.json"],
    ),
    "gate --baseline not JSON": (
        ["gate", "run", "--baseline", "not.json"],
        EXIT_CONFIG,
        ["--baseline: not.json is not a JSON report", "give a report.json"],
    ),
    "no subcommand": ([], USAGE, ["required: command", "see `python -m chaos --help`"]),
    "unknown subcommand": (["frobnicate"], USAGE, ["invalid choice: 'frobnicate'", "--help"]),
    "unknown option": (["report", "run", "--bogus"], USAGE, ["unrecognized arguments: --bogus"]),
    "serve without arguments": (["serve"], USAGE, ["required: spec, data_dir", "serve --help"]),
    "serve --stop-timeout not a number": (
        ["serve", "chaos:SystemTarget", "d", "--stop-timeout", "soon"],
        USAGE,
        ["invalid float value: 'soon'", "serve --help"],
    ),
    "serve a bad spec": (
        ["serve", "no_such_module_xyz:make", "d"],
        USAGE,
        ["cannot import 'no_such_module_xyz'", "is the package installed"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_error_is_one_line_with_its_cause_and_fix(files: Path, case: str) -> None:
    args, code, needles = ERRORS[case]
    run = chaos_cli(*args, cwd=files)
    assert run.returncode == code, (run.stdout, run.stderr)
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(("chaosgate: error: ", "error: ")), run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def test_chaosgate_refuses_a_project_module_that_would_shadow_chaos(tmp_path: Path) -> None:
    """pytest puts its ``pythonpath`` entries first on sys.path, before chaosgate's package:
    the project's own ``chaos`` there is found, in whichever configuration file pytest reads."""
    from chaos._run import shadowing

    ours = Path(__import__("chaos").__file__).parent
    (tmp_path / "src").mkdir()
    (tmp_path / "src/chaos.py").write_text("")
    (tmp_path / "chaos").mkdir()
    assert shadowing(tmp_path, ours) == []  # no pytest configuration: nothing put first
    (tmp_path / "setup.cfg").write_text("[tool:pytest]\npythonpath = src\n")
    assert shadowing(tmp_path, ours) == [tmp_path / "src/chaos.py"]
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    assert shadowing(tmp_path, ours) == [tmp_path / "chaos"]  # pyproject before setup.cfg
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    assert shadowing(tmp_path, ours) == []  # pytest.ini first of all, and it has none
    (tmp_path / "pytest.ini").write_text("[pytest]\npythonpath = . src\n")
    assert shadowing(tmp_path, ours) == [tmp_path / "chaos", tmp_path / "src/chaos.py"]
    (tmp_path / "sub").mkdir()  # run from below it: pytest walks up to the same file
    assert shadowing(tmp_path / "sub", ours) == [tmp_path / "chaos", tmp_path / "src/chaos.py"]
    assert shadowing(ours.parent, ours) == []  # chaosgate's own checkout is no shadow
