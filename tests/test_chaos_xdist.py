"""The plugin under pytest-xdist, run in a subprocess as users run it (pytester): ``-n 2`` gives
the verdict, report and exit code a serial run gives; and the gate line in the terminal shows
the code the process really exits with."""

import xml.etree.ElementTree as ET

import pytest

from chaos._gate import ANOMALIES, EXIT_CONFIG, EXIT_HARNESS, EXIT_OK, EXIT_WEAKNESS
from chaos._report import load
from chaos.pytest_plugin import EXIT_REASONS, REPORT_NOT_WRITTEN, gate_line

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
junit_family = xunit1
"""

# A real kill of the default system pool that it recovers from, a breach (a weakness), an
# expected weakness, a skip, a plain test, and a scenario that passes but errs in its teardown
# (the teardown's update travels too): the gate finds a weakness and lists the skip.
SCENARIOS = """
import pytest
from chaos import Verdict


@pytest.fixture
def breaks_at_teardown():
    yield
    raise RuntimeError("the teardown broke")


@pytest.mark.chaos_slo(lost=0, duplicated=0, recovery=30)
async def test_recovers_from_a_kill(chaos_target, chaos, history):
    await chaos_target(workers=2)
    await chaos.traffic(60, prefix="a", keys=4, work=0.005)  # in flight at the kill, mostly
    chaos.kill((await chaos.workers(2))[0], harmless=True)
    await chaos.traffic(60, prefix="b", keys=4)
    await chaos.verify()
    assert len(history.acked()) == 120


@pytest.mark.chaos_slo(lost=0)
def test_loses_a_message(chaos):
    chaos.judge(Verdict(lost=["m1"], explanations={"m1": "m1: acknowledged, never committed"}))


@pytest.mark.xfail(reason="a known weakness: a replay duplicates", strict=True)
@pytest.mark.chaos_slo(duplicated=0)
def test_known_weakness(chaos):
    chaos.judge(Verdict(duplicated=["m7"]))


def test_needs_what_is_missing(chaos):
    pytest.skip("no cgroup v2 here")


def test_plain():
    pass


def test_errs_in_its_teardown(chaos, breaks_at_teardown):
    pass
"""


def make_scenarios(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_scenarios=SCENARIOS)


def verdicts(report: dict) -> dict:
    """What a serial and a parallel run of the same scenarios must agree on."""
    gate = report["run"]["gate"]
    return {
        "exit_status": report["run"]["exit_status"],
        "summary": report["summary"],
        "scenarios": [
            (
                s["nodeid"],
                s["outcome"],
                s["failure_kind"],
                s["skip_reason"],
                {a: len(s["checker"].get(a) or []) for a in ANOMALIES} if s["checker"] else None,
                [(f["kind"], f["fired"]) for f in s["faults"]],
            )
            for s in report["scenarios"]
        ],
        "gate": gate
        and (
            gate["verdict"],
            gate["exit_code"],
            sorted((f["kind"], f["category"], f["scenario"]) for f in gate["findings"]),
            gate["skipped"],
        ),
    }


def junit_properties(path) -> dict[str, dict[str, str]]:
    return {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(path).iter("testcase")
    }


def the_gate_line(result: pytest.RunResult) -> str:
    (line,) = [line for line in result.outlines if line.startswith("gate: ")]
    return line


def test_two_workers_give_the_verdict_report_and_exit_code_of_a_serial_run(
    pytester: pytest.Pytester,
) -> None:
    make_scenarios(pytester)
    serial = pytester.runpytest_subprocess(
        "--chaos-gate", "--chaos-seed", "7", "--chaos-report", "serial", "--junitxml=serial.xml"
    )
    # No --chaos-seed: the controller chooses one, and every worker must use it.
    parallel = pytester.runpytest_subprocess(
        "-n", "2", "--chaos-gate", "--chaos-report", "parallel", "--junitxml=parallel.xml"
    )
    for result in (serial, parallel):
        assert result.ret == EXIT_WEAKNESS, result.stdout.str()[-3000:]
        result.assert_outcomes(passed=3, failed=1, xfailed=1, skipped=1, errors=1)
        assert the_gate_line(result) == gate_line("weakness", EXIT_WEAKNESS, EXIT_WEAKNESS)
        result.stdout.fnmatch_lines(
            [
                "scenario * verdict *",
                "test_recovers_from_a_kill * PASSED * 1/1 *",
                "test_loses_a_message * FAILED *",
                "test_known_weakness * XFAILED *",
                "test_needs_what_is_missing * SKIPPED *",
                "test_errs_in_its_teardown * ERROR *",
                "gate: WEAKNESS (exit 10)",
                "  weakness ?lost?: test_loses_a_message: SLO breached: lost=1, allowed 0",
                "  harness ?error?: test_errs_in_its_teardown: errored: *the teardown broke*",
                "skipped: 1 scenario(s), not judged:",
                "  test_needs_what_is_missing: no cgroup v2 here",
                "report: *report.html (also report.json, report.md)",
            ]
        )
    expected = verdicts(load(pytester.path / "serial" / "latest"))
    assert expected["gate"][:2] == ("weakness", EXIT_WEAKNESS)
    outcomes = [s[1] for s in expected["scenarios"]]
    assert outcomes == ["passed", "failed", "xfailed", "skipped", "error"]
    report = load(pytester.path / "parallel" / "latest")
    assert verdicts(report) == expected
    # One seed for the run: the controller's, in every worker's replay commands and JUnit.
    seed = report["run"]["seed"]
    assert f"chaosgate: seed {seed} " in parallel.stdout.str()
    assert all(s["replay"].endswith(f"--chaos-seed {seed}") for s in report["scenarios"])
    properties = junit_properties(pytester.path / "parallel.xml")
    assert properties["test_recovers_from_a_kill"]["seed"] == str(seed)
    assert properties["test_recovers_from_a_kill"]["faults"] == "1"
    assert properties["test_loses_a_message"]["lost"] == "1"

    def counted(properties: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        """The properties but the seed and the timings (which a kill that caught no work in
        flight may not have)."""
        return {
            case: {k: v for k, v in p.items() if k != "seed" and not k.endswith("_ms")}
            for case, p in properties.items()
        }

    assert counted(properties) == counted(junit_properties(pytester.path / "serial.xml"))
    assert len(list((pytester.path / "parallel").iterdir())) == 2  # one writer: run, latest


def test_without_the_gate_two_workers_still_write_the_report(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest
        from chaos import Verdict

        def test_passes(chaos):
            pass

        @pytest.mark.chaos_slo(lost=0)
        def test_loses_a_message(chaos):
            chaos.judge(Verdict(lost=["m1"]))
        """
    )
    result = pytester.runpytest_subprocess("-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    assert not [line for line in result.outlines if line.startswith("gate: ")]
    result.stdout.fnmatch_lines(
        [
            "test_passes * PASSED *",
            "test_loses_a_message * FAILED *",
            "report: *report.html (also report.json, report.md)",
        ]
    )
    report = load(pytester.path / "reports" / "latest")
    assert report["run"]["gate"] is None and report["run"]["exit_status"] == 1
    assert report["summary"]["scenarios"] == 2 and report["summary"]["breaches"] == 1
    assert len(list((pytester.path / "reports").iterdir())) == 2  # the run and latest


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_the_gate_line_shows_the_code_the_run_exits_with(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_scenario="def test_scenario(chaos):\n    pass\n")
    pytester.makefile(".txt", in_the_way="a file where the report's directory would go")
    unwritable = pytester.runpytest_subprocess(
        *workers, "--chaos-gate", "--chaos-report", "in_the_way.txt/reports"
    )
    assert unwritable.ret == EXIT_HARNESS
    assert the_gate_line(unwritable) == gate_line("pass", EXIT_OK, EXIT_HARNESS, REPORT_NOT_WRITTEN)
    unwritable.stdout.fnmatch_lines(["report: NOT WRITTEN: *in_the_way.txt*"])

    pytester.makepyfile(test_plain="def test_plain():\n    assert False\n")
    plain_failed = pytester.runpytest_subprocess(*workers, "--chaos-gate")
    assert plain_failed.ret == pytest.ExitCode.TESTS_FAILED
    assert the_gate_line(plain_failed) == gate_line("pass", EXIT_OK, 1, EXIT_REASONS[1])
    assert load(pytester.path / "reports" / "latest")["run"]["exit_status"] == 1


def test_a_worker_that_dies_in_a_scenario_errs_it(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import os

        def test_dies(chaos):
            os._exit(3)

        def test_after(chaos):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--chaos-gate", "--chaos-seed", "5")
    assert result.ret == EXIT_HARNESS, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(
        [
            "gate: HARNESS (exit 11)",
            "  harness ?error?: test_dies: errored: *worker 'gw*' crashed while running*",
        ]
    )
    report = load(pytester.path / "reports" / "latest")
    outcomes = {s["name"]: (s["outcome"], s["failure_kind"]) for s in report["scenarios"]}
    assert outcomes == {"test_dies": ("error", "error"), "test_after": ("passed", None)}
    assert report["scenarios"][0]["replay"].endswith("test_dies --chaos-seed 5")


def test_a_bad_slo_found_by_the_workers_ends_the_run_as_in_a_serial_one(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        def test_innocent():
            pass

        @pytest.mark.chaos_slo(recovery=1.0, losst=0)
        def test_typo(chaos):
            pass
        """
    )
    gated = pytester.runpytest_subprocess("-n", "2", "--chaos-gate")
    assert gated.ret == EXIT_CONFIG
    assert gated.stderr.str().count("ERROR: unknown chaos_slo objective(s) losst on ") == 1
    gated.stdout.no_fnmatch_line("*passed*")
    plain = pytester.runpytest_subprocess("-n", "2")
    assert plain.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown chaos_slo objective(s) losst on " in plain.stderr.str()
