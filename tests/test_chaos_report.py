"""Reports and the gate, from real runs of real scenarios: every report validates against the
schema; the gate's exit codes; a baseline regression; re-rendering; and report.html opened in
headless Chromium as a person would, with nothing loaded from the network."""

import copy
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from chaos._gate import EXIT_CONFIG, EXIT_HARNESS, EXIT_OK, EXIT_WEAKNESS
from chaos._report import ReportError, load, validate

ROOT = Path(__file__).resolve().parent.parent
GOOD = ["scenarios/test_hangs.py::test_a_hung_handler", "scenarios/test_sigkill_variants.py"]


def pytest_run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--chaos-seed", "3", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
        capture_output=True,
        text=True,
        timeout=600,
    )


def chaos_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chaos", *args], cwd=ROOT, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A passing run of real scenarios (hangs with stack dumps, kills with recovery figures)
    under the gate: its report directory."""
    tmp = tmp_path_factory.mktemp("good")
    junit = tmp / "junit.xml"
    run = pytest_run(tmp, *GOOD, "--chaos-gate", "--chaos-report", str(tmp), f"--junitxml={junit}")
    assert run.returncode == EXIT_OK, run.stdout[-4000:]
    assert "gate: PASS (exit 0)" in run.stdout
    return tmp


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The same kills against a target that loses messages, under the gate."""
    tmp = tmp_path_factory.mktemp("bad")
    run = pytest_run(
        tmp,
        "scenarios/test_sigkill_variants.py::test_workers_killed_at_once",
        "--chaos-target",
        "targets:LossyTarget",
        "--chaos-gate",
        "--chaos-report",
        str(tmp),
    )
    return tmp, run


def test_a_passing_run_leaves_a_valid_report_with_its_figures(good: Path) -> None:
    report = load(good / "latest")  # validates against the schema
    validate(json.loads((good / "latest" / "report.json").read_text()))
    assert report["summary"]["passed"] == 6 and report["summary"]["failed"] == 0
    assert report["run"]["gate"]["verdict"] == "pass" and report["run"]["exit_status"] == 0
    by_name = {s["name"]: s for s in report["scenarios"]}
    killed = by_name["test_workers_killed_at_once[all]"]
    assert [f["fired"] for f in killed["faults"]] == [1, 1, 1, 1]
    assert all(f["recovery"]["recovery_ms"] > 0 for f in killed["faults"])
    assert killed["figures"]["recovery_p99_ms"] >= killed["figures"]["recovery_p50_ms"] > 0
    kinds = {e["kind"] for e in killed["timeline"]["events"]}
    assert {"fault", "died", "restarted"} <= kinds
    assert sum(c["messages"] for c in killed["timeline"]["committed"]) >= 800
    hung = by_name["test_a_hung_handler[deadlock]"]
    (dump,) = hung["dumps"]
    assert "_hang_forever" in dump["blocked"] and "_hang_forever" in dump["text"]
    assert (
        "| `test_workers_killed_at_once[all]` | PASS | 4/4 | 0 | 0 |"
        in (good / "latest" / "report.md").read_text()
    )
    props = {
        p.get("name"): p.get("value")
        for case in ET.parse(good / "junit.xml").iter("testcase")
        if case.get("name") == "test_workers_killed_at_once[all]"
        for p in case.iter("property")
    }
    assert float(props["recovery_p99_ms"]) > 0 and props["lost"] == "0", props


def test_a_weakness_fails_the_gate_with_exit_10_and_is_explained(bad) -> None:
    tmp, run = bad
    assert run.returncode == EXIT_WEAKNESS, run.stdout[-4000:]
    assert "gate: WEAKNESS (exit 10)" in run.stdout
    report = load(tmp / "latest")
    assert report["run"]["exit_status"] == EXIT_WEAKNESS
    scenario = report["scenarios"][0]
    assert scenario["outcome"] == "failed" and scenario["failure_kind"] == "breach"
    lost = scenario["checker"]["lost"]
    assert lost and set(lost) <= set(scenario["checker"]["explanations"])  # each one explained
    assert "--chaos-target targets:LossyTarget" in scenario["replay"]
    md = (tmp / "latest" / "report.md").read_text()
    assert "## Failures" in md and "SLO breached: lost=" in md and scenario["replay"] in md
    assert any(f["kind"] == "weakness" for f in report["run"]["gate"]["findings"])


def test_a_harness_error_exits_11_and_bad_configuration_12(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "def test_unfired(chaos):\n    chaos.failpoints('nowhere=1*raise(ValueError)')\n"
    )
    result = pytester.runpytest_subprocess("--chaos-gate")
    assert result.ret == EXIT_HARNESS
    result.stdout.fnmatch_lines(["gate: HARNESS (exit 11)", "*a planned fault never fired*"])
    report = load(pytester.path / "reports" / "latest")
    assert report["scenarios"][0]["failure_kind"] == "unfired"
    pytester.makefile(".toml", pyproject='[tool.chaosgate.gate]\nrecovery_p99 = "fast"\n')
    result = pytester.runpytest_subprocess("--chaos-gate")
    assert result.ret == EXIT_CONFIG
    assert (
        "bad gate setting recovery_p99 = 'fast' in [tool.chaosgate.gate] in pyproject.toml: "
        "give a number >= 0" in result.stderr.str()
    )


def test_the_gate_cli_catches_a_recovery_regression_against_a_baseline(
    good: Path, tmp_path: Path
) -> None:
    report = load(good / "latest")
    same = chaos_cli("gate", str(good / "latest"), "--baseline", str(good / "latest/report.json"))
    assert same.returncode == EXIT_OK, same.stdout + same.stderr
    faster = copy.deepcopy(report)  # a baseline where every recovery took a tenth as long
    for scenario in faster["scenarios"]:
        for key in ("recovery_p50_ms", "recovery_p99_ms"):
            if key in scenario["figures"]:
                scenario["figures"][key] /= 10
    (tmp_path / "old.json").write_text(json.dumps(faster))
    run = chaos_cli("gate", str(good / "latest"), "--baseline", str(tmp_path / "old.json"))
    assert run.returncode == EXIT_WEAKNESS, run.stdout + run.stderr
    assert "recovery p99 regressed 10.0x" in run.stdout and "gate: WEAKNESS (exit 10)" in run.stdout
    missing = chaos_cli("gate", str(tmp_path / "nowhere"))
    assert missing.returncode == EXIT_CONFIG and "no report at" in missing.stderr


def test_reports_re_render_and_a_broken_one_is_refused(good: Path, tmp_path: Path) -> None:
    for fmt, name in [("md", "report.md"), ("html", "report.html")]:
        again = chaos_cli("report", str(good / "latest"), "--format", fmt)
        assert again.returncode == 0, again.stderr
        assert again.stdout == (good / "latest" / name).read_text()
    as_json = json.loads(chaos_cli("report", str(good / "latest"), "--format", "json").stdout)
    assert as_json == load(good / "latest")
    broken = load(good / "latest")
    del broken["scenarios"][0]["checker"]
    with pytest.raises(ReportError, match="'checker' is a required property"):
        validate(broken)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own background traffic is kept on this machine: no name resolves, any request
# goes to a closed loopback port.
OFFLINE = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
]


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no chromium here (make test installs Debian's chromium)",
)
def test_report_html_as_a_person_sees_it(good: Path, tmp_path: Path) -> None:
    assert CHROMIUM, "Debian's chromium is missing: make test installs it"
    page = (good / "latest" / "report.html").resolve()
    html = page.read_text()
    assert "default-src 'none'" in html  # the page may load nothing, and says so
    for tag in ("<script", "<link", "<iframe", 'src="http', "url(http"):
        assert tag not in html
    url = page.as_uri() + "#s1-dump1"  # a dump inside a folded <details>: opens on navigation
    netlog = tmp_path / "net.json"
    shot = tmp_path / "report.png"
    options = [f"--log-net-log={netlog}", "--window-size=1280,1600", f"--screenshot={shot}"]
    run = subprocess.run(
        [CHROMIUM, *OFFLINE, *options, url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert shot.exists() and shot.stat().st_size > 20_000, run.stderr[-2000:]
    dom = subprocess.run(
        [CHROMIUM, *OFFLINE, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<svg") >= 4  # a timeline per scenario that has events
    assert "Stack dump of pid" in dom and '<mark class="blocked">' in dom
    assert '<details class="dump" open=""' in dom  # the dump unfolded
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "the screenshot is blank"
    # Only the browser itself tried the network (and could not leave this machine); the page
    # made no request at all.
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    starts = [
        e.get("params", {})
        for e in log["events"]
        if names[e["type"]] == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
    ]
    assert log["events"], "an empty net log: is it the right file?"
    from_page = [
        p["url"]
        for p in starts
        if p.get("initiator") != "not an origin" and not p["url"].startswith(("file:", "data:"))
    ]
    assert from_page == []


def test_the_html_escapes_what_tests_and_pools_say(tmp_path: Path) -> None:
    from chaos._render import html, markdown
    from chaos._report import build, run_metadata, scenario_entry

    hostile = '<img src=x onerror="alert(1)">'
    entry = scenario_entry(
        f"t.py::test[{hostile}]",
        "failed",
        1.0,
        {"faults": [], "events": [], "slo": {}, "steps": [hostile]},
        failure=f"E   AssertionError: {hostile}\n  File <module>",
        failure_kind="assertion",
        replay="pytest x",
    )
    page = html(build(run_metadata(seed=1, target=None, profile="ci", started=0.0), [entry]))
    assert hostile not in page and "&lt;img src=x" in page and "&lt;module&gt;" in page
    assert "AssertionError" in markdown(
        build(run_metadata(seed=1, target=None, profile="ci", started=0.0), [entry])
    )


def test_the_gate_keeps_a_plain_failure_and_survives_an_unwritable_report(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_plain():
            assert False

        def test_scenario(chaos):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--chaos-gate")
    assert result.ret == 1  # the gate passed its scenarios, but a plain test failed
    result.stdout.fnmatch_lines(["gate: PASS (exit 0)"])
    (pytester.path / "blocked").write_text("a file where the report directory would go")
    result = pytester.runpytest_subprocess("--chaos-gate", "--chaos-report", "blocked/x")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["report: NOT WRITTEN: *"])


def test_a_site_configured_twice_is_not_an_unfired_fault(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from chaos import failpoint

        def test_reconfigured(chaos):
            chaos.failpoints("a.site=1*return(1)")
            chaos.failpoints("a.site=1*return(2)")
            assert failpoint("a.site") == 2
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
