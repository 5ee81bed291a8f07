"""Reports and the gate, from real runs of real scenarios: every report validates against the
schema; the gate's exit codes; a baseline regression; re-rendering; a failure read as its
message; and report.html opened in headless Chromium as a person would, with nothing loaded
from the network, no figure wrapped and no id repeated."""

import copy
import html as markup
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from chaos._failure import message
from chaos._gate import EXIT_CONFIG, EXIT_HARNESS, EXIT_OK, EXIT_WEAKNESS
from chaos._render import MESSAGE_LINES, html, markdown
from chaos._report import ReportError, build, load, run_metadata, scenario_entry, validate, write

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


KILLED = "test_workers_killed_at_once[all]"
PEER = "test_a_fault_against_each_pool[ProcessPoolExecutor-kill_busy]"


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The same kills against a target that loses messages, and one peer pool's scenario (its
    expected weakness), under the gate."""
    tmp = tmp_path_factory.mktemp("bad")
    run = pytest_run(
        tmp,
        f"scenarios/test_sigkill_variants.py::{KILLED}",
        f"scenarios/test_peers.py::{PEER}",
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
    kills = [f for f in killed["faults"] if f["kind"] == "kill"]  # (and the held task's mark)
    assert [f["fired"] for f in kills] == [1, 1, 1, 1]
    assert all(f["recovery"]["recovery_ms"] > 0 for f in kills)
    assert killed["figures"]["recovery_p99_ms"] >= killed["figures"]["recovery_p50_ms"] > 0
    kinds = {e["kind"] for e in killed["timeline"]["events"]}
    assert {"fault", "died", "restarted"} <= kinds
    assert sum(c["messages"] for c in killed["timeline"]["committed"]) >= 800
    hung = by_name["test_a_hung_handler[deadlock]"]
    (dump,) = hung["dumps"]
    assert "_deadlock" in dump["blocked"] and "_deadlock" in dump["text"]  # chaos.workload
    assert (
        "| `test_workers_killed_at_once[all]` | PASS | 5/5 | 0 | 0 |"
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
    scenario = next(s for s in report["scenarios"] if s["name"] == KILLED)
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


@pytest.fixture(scope="module")
def page(good: Path, bad, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report.html with what shows the glitches a page can have: the passing run's charts
    and stack dumps, a failed scenario (its failure text a dump of judge()'s source), and a
    peer pool's entry (observed figures, no messages committed)."""
    passing, failing = load(good / "latest"), load(bad[0] / "latest")
    report = build(failing["run"], passing["scenarios"] + failing["scenarios"])
    report["run"]["gate"] = failing["run"]["gate"]
    return write(report, tmp_path_factory.mktemp("page")) / "report.html"


# Run in the page (a copy that allows this one inline script): every <details> opened, then
# the figures that take more than one line, the ids that repeat, the chart references that
# lead nowhere and the charts with nothing drawn, written into the page for --dump-dom.
CHECK = """<script>
for (const d of document.querySelectorAll("details")) d.open = true;
const lines = (el) => {
  const range = document.createRange();
  range.selectNodeContents(el);
  const rects = [...range.getClientRects()].filter((r) => r.width > 0);
  return new Set(rects.map((r) => Math.round(r.top))).size;
};
const figures = [...document.querySelectorAll("td.n, .fig")];
const ids = [...document.querySelectorAll("[id]")].map((e) => e.id);
const ref = (e) => e.getAttribute("clip-path") || e.getAttribute("xlink:href") || "";
const uses = [...document.querySelectorAll("svg [clip-path], svg use")];
const refs = uses.map((e) => /#([^)"]+)/.exec(ref(e) || e.getAttribute("href"))[1]);
const charts = [...document.querySelectorAll(".timeline svg")];
const wide = (e) => e.getBoundingClientRect().width > 0;
const drawn = (chart) => [...chart.querySelectorAll("use")].some(wide);
const found = {
  figures: figures.length,
  wrapped: figures.filter((e) => lines(e) > 1).map((e) => e.textContent),
  repeated: [...new Set(ids.filter((id, i) => ids.indexOf(id) !== i))],
  dangling: refs.filter((id) => !document.getElementById(id)),
  charts: charts.length,
  blank: charts.filter((chart) => !drawn(chart)).length,
};
const out = document.createElement("pre");
out.id = "chaosgate-check";
out.textContent = JSON.stringify(found);
document.body.append(out);
</script>"""


def measure_in_chromium(page: Path, where: Path, width: int) -> dict:
    """What CHECK finds in ``page``, laid out ``width`` pixels wide."""
    text = page.read_text()
    checked = text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    checked = checked.replace("</body>", CHECK + "</body>")
    assert "script-src 'unsafe-inline'" in checked and CHECK in checked
    checked_page = where / f"checked-{width}.html"
    checked_page.write_text(checked)
    dom = subprocess.run(
        [CHROMIUM, *OFFLINE, f"--window-size={width},1000", "--dump-dom", checked_page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="chaosgate-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    return json.loads(markup.unescape(found.group(1)))


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no chromium here (make test installs Debian's chromium)",
)
def test_report_html_as_a_person_sees_it(page: Path, tmp_path: Path) -> None:
    assert CHROMIUM, "Debian's chromium is missing: make test installs it"
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
    assert dom.count("<svg") >= 5  # a timeline per scenario that has events
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


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no chromium here (make test installs Debian's chromium)",
)
@pytest.mark.parametrize("width", [800, 1280])
def test_in_the_rendered_page_no_figure_wraps_and_no_id_repeats(
    page: Path, tmp_path: Path, width: int
) -> None:
    assert CHROMIUM, "Debian's chromium is missing: make test installs it"
    found = measure_in_chromium(page, tmp_path, width)
    assert found["figures"] > 100 and found["charts"] >= 5, found
    assert found["wrapped"] == [], found["wrapped"][:20]
    assert found["repeated"] == [], found["repeated"][:20]
    assert found["dangling"] == [] and found["blank"] == 0, found  # the charts still draw


def test_a_failure_reads_as_its_message_in_both_reports(bad) -> None:
    """The failure block shows the breach, not pytest's dump of judge()'s source; Markdown
    quotes whole lines of the message only (never the tail of a line cut short)."""
    report = load(bad[0] / "latest")
    failed = next(s for s in report["scenarios"] if s["name"] == KILLED)
    assert "def judge(" in failed["failure"]  # what pytest gives
    page = (bad[0] / "latest" / "report.html").read_text()
    shown = markup.unescape(re.search(r'<pre class="message">(.*?)</pre>', page, re.S)[1])
    assert shown.startswith("AssertionError: SLO breached:\n  lost=") and "def judge" not in shown
    assert shown.splitlines() == message(failed["failure"])[:MESSAGE_LINES]
    assert '<details class="output">' in page  # pytest's whole text, folded away
    plain = {**failed, "breaches": [], "failure_kind": "assertion"}  # the message is all there is
    md = markdown(build(report["run"], [plain]))
    (quoted,) = re.findall(r"\n```\n(.*?)\n```\n", md, re.S)
    lines = message(failed["failure"])
    assert quoted.splitlines()[0] == "AssertionError: SLO breached:" and "def judge" not in md
    assert all(line in lines or line.startswith("… ") for line in quoted.splitlines()), quoted


def test_findings_carry_the_breach_and_the_table_keeps_brackets(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_in_a_group(chaos):
            raise ExceptionGroup(
                "Hypothesis found 2 distinct failures.",
                [AssertionError("SLO breached:\\n  lost=3, allowed 0"), ValueError("later")],
            )

        def test_under_a_header(chaos):
            raise RuntimeError("SLO breached:\\n  lost=4, allowed 0")

        def test_over_a_table(chaos):
            raise AssertionError("+------+\\n| lost=5 in pool b |\\n+------+")

        @pytest.mark.parametrize("pool", ["ProcessPoolExecutor-memory_growth-and-a-long-id"])
        def test_a_fault_against_each_pool_of_several(chaos, pool):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--chaos-gate")
    assert result.ret == EXIT_WEAKNESS
    texts = {
        m[1]: m[2]
        for m in (re.match(r"  \w+ \[\w+\]: (\S+): (.*)", line) for line in result.outlines)
        if m
    }
    assert texts == {
        "test_in_a_group": "failed: AssertionError: SLO breached: lost=3, allowed 0",
        "test_under_a_header": "failed: RuntimeError: SLO breached: lost=4, allowed 0",
        "test_over_a_table": "failed: AssertionError: lost=5 in pool b",
    }
    (row,) = [line for line in result.outlines if line.startswith("test_a_fault_against_each")]
    name = row.split("  ")[0]
    assert len(name) <= 60 and "…" in name and name.endswith("-long-id]"), row
    assert name.startswith("test_a_fault_against_each_pool_of_several[Process"), row


def test_objectives_read_as_meant_and_a_chart_shows_only_what_it_has() -> None:
    """mode is an equality, the others bounds; a peer's entry (no message committed) gets no
    empty "committed" panel; two charts in one page share no id."""
    fault = {"kind": "kill", "target": "pid 7", "pid": 7, "planned": 1, "fired": 1}
    fault |= {"mono": 10.0, "detail": "SIGKILL", "recovery": None}
    slo = {"lost": 0, "recovery": 5.0, "mode": "inline"}
    peer = {"faults": [fault], "events": [], "slo": slo}
    peer["observed"] = {
        "target": "loky",
        "fault": "kill_busy",
        "outcome": "lost",
        "summary": "lost",
    }
    events = [{"kind": "died", "mono": 10.01, "pid": 7, "worker": 0, "signal": "SIGKILL"}]
    events += [{"kind": "checkpointed", "mono": 10.0 + i / 10, "messages": 50} for i in range(5)]
    killed = {"faults": [fault], "events": events, "slo": slo}
    report = build(
        run_metadata(seed=1, target=None, profile="ci", started=0.0),
        [
            scenario_entry(f"t.py::test_{n}", "passed", 1.0, r)
            for n, r in [("p", peer), ("k", killed)]
        ],
    )
    md = markdown(report)
    assert "lost≤0 recovery≤5.0 s mode=inline |" in md and "mode≤" not in md
    page = html(report)
    assert '<td class="n">=inline</td>' in page and '<td class="n">≤5.0 s</td>' in page
    first, second = page.split('<section class="scenario')[1:]
    assert first.count("<svg") == 1 and 'id="s1-axes_1"' in first
    assert 'id="s1-axes_2"' not in first and "<!-- committed -->" not in first
    assert 'id="s2-axes_2"' in second and "<!-- committed -->" in second
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)) > 100
    refs = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', page))
    assert refs and refs <= set(ids)


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
    result.stdout.fnmatch_lines(["gate: PASS*"])
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


def test_a_fault_that_lasts_is_a_shaded_span_on_the_timeline() -> None:
    """A partition (or a freeze) has a start and a heal: the timeline keeps both, and the
    chart shades the span between them."""
    from chaos._render import timeline_svg
    from chaos._report import timeline

    faults = [
        {"kind": "partition", "target": "w1 | scheduler", "detail": "nftables DROP",
         "mono": 100.0, "until": 110.0, "pid": None},
        {"kind": "kill", "target": "pid 7", "detail": "SIGKILL", "mono": 112.0, "pid": 7},
    ]  # fmt: skip
    line = timeline([], faults)
    span, point = line["events"]
    assert (span["t"], span["until"]) == (0.0, 10.0) and "until" not in point
    assert line["span_s"] == 12.0
    svg = str(timeline_svg({"timeline": line, "nodeid": "t::span"}, "x-"))
    assert "fault span" in svg  # the legend names the shaded span
