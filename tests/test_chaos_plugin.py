"""The pytest plugin, run in a subprocess as users run it (pytester)."""

import json

import psutil
import pytest

from chaos.pytest_plugin import SETTINGS

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")


def test_a_failure_prints_its_seed_and_a_replay_command(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_fails(chaos_seed):\n    assert chaos_seed == 0\n")
    result = pytester.runpytest_subprocess("--chaos-seed", "42")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "chaosgate: seed 42 (replay with --chaos-seed 42)*",
            "*chaosgate*",
            "seed: 42",
            "replay: * -m pytest test_a_failure_prints_its_seed_and_a_replay_command.py::test_fails"
            " --chaos-seed 42",
        ]
    )


def test_settings_come_from_pyproject_and_bad_ones_say_where(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_seed(chaos_seed):\n    assert chaos_seed == 7\n")
    pytester.makefile(".toml", pyproject="[tool.chaosgate]\nseed = 7\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    pytester.makefile(".toml", pyproject='[tool.chaosgate]\nseed = "soon"\n')
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "bad seed 'soon' (from [tool.chaosgate] seed in pyproject.toml): give a whole number"
        in result.stderr.str()
    )
    pytester.makefile(".toml", pyproject="[tool.chaosgate]\nsede = 1\n")
    result = pytester.runpytest_subprocess()
    result.stderr.fnmatch_lines([f"*unknown setting(s) sede*known: {', '.join(SETTINGS)}*"])


def test_a_timeout_dumps_every_descendant_then_kills_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import subprocess, sys, time, pytest

        CHILD = "import time\\ndef waiting_for_godot():\\n    time.sleep(60)\\nwaiting_for_godot()"

        @pytest.mark.timeout(3)
        def test_hangs():
            subprocess.Popen([sys.executable, "-c", CHILD])
            time.sleep(60)
        """
    )
    result = pytester.runpytest_subprocess("--chaos-seed", "1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*Timeout*",
            "--- pid * (py-spy) ---",
            "*waiting_for_godot*",
            "killed 1 descendant process(es); still there: []",
        ]
    )


async def test_the_target_fixture_runs_the_system_pool(chaos_target, history) -> None:
    target = await chaos_target(workers=2)
    for i in range(50):
        await target.submit(f"k{i % 3}", i, f"m{i}")
        history.submitted(f"m{i}", f"k{i % 3}")
    verdict = history.check(await target.committed())
    assert verdict.ok and verdict.committed == 50


def test_a_planned_fault_that_never_fired_fails_the_scenario(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_plans_a_fault_nobody_reaches(chaos):
            chaos.failpoints("nowhere.reached=1*raise(ValueError)")

        def test_plans_nothing(chaos):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*planned fault(s) never fired, so the scenario proves nothing: failpoint of site "
            "nowhere.reached (1*raise(ValueError)): fired 0 of 1*",
        ]
    )


def test_a_scenario_marked_with_an_slo_must_check_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from chaos import Verdict

        @pytest.mark.chaos_slo(lost=0)
        def test_forgets(chaos):
            pass

        @pytest.mark.chaos_slo(lost=1)
        def test_one_loss_allowed(chaos):
            chaos.judge(Verdict(lost=["m1"]))

        @pytest.mark.chaos_slo(duplicated=0)
        def test_breach(chaos):
            chaos.judge(Verdict(duplicated=["m7"], explanations={"m7": "m7: it was replayed"}))

        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*marked chaos_slo but never checked: call `await chaos.verify()`*",
            "*SLO breached:*",
            "*duplicated=1, allowed 0*",
            "*m7: it was replayed*",
        ]
    )


def test_a_bad_slo_is_a_configuration_error_before_anything_runs(pytester: pytest.Pytester):
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
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown chaos_slo objective(s) losst on " in result.stderr.str()
    assert "test_typo; known: lost (" in result.stderr.str()
    result = pytester.runpytest_subprocess("--chaos-gate")
    assert result.ret == 12  # the gate's own code for bad configuration
    result.stdout.no_fnmatch_line("*passed*")


def test_a_frozen_process_is_thawed_at_teardown(puppet) -> None:
    from chaos import Scenario, wait_until

    p = puppet()
    proc = psutil.Process(p.pid)
    scenario = Scenario("test", seed=1)
    fault = scenario.freeze(p.pid)
    assert fault.fired == 1 and fault.mono is not None
    wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, 10, "SIGSTOP delivered")
    scenario.close()
    wait_until(lambda: proc.status() != psutil.STATUS_STOPPED, 10, "SIGCONT at teardown")
    assert scenario.record()["faults"][0]["detail"] == "SIGSTOP"


def test_the_plugin_and_its_gate_work_without_xdist(pytester: pytest.Pytester) -> None:
    from chaos.pytest_plugin import gate_line

    pytester.makepyfile(
        """
        def test_scenario(chaos):
            pass

        def test_no_xdist_here(request):
            plugins = request.config.pluginmanager
            assert not plugins.hasplugin("xdist") and not plugins.has_plugin("chaosgate-xdist")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:xdist", "--chaos-gate")
    assert result.ret == 0, result.stdout.str()[-2000:]
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_scenario * PASSED *", gate_line("pass", 0, 0)])


async def test_a_pool_that_starts_workers_on_demand_gets_work_to_start_them(tmp_path) -> None:
    """ProcessPoolExecutor has no worker until it has work: ``chaos.workers()`` sends it one
    message (in the history, as all traffic is), rather than taking an idle pool for a dead one."""
    from chaos import Scenario
    from chaos.peers import ProcessPoolTarget

    scenario = Scenario("test", seed=1)
    target = scenario.target = ProcessPoolTarget(tmp_path / "data", workers=2)
    await target.start()
    try:
        assert target.worker_pids() == []
        pids = await scenario.workers(2, timeout=10)
        assert len(pids) == 2
        assert list(scenario.history.acked()) == ["wake-1"]
        assert await target.committed() == {"wake": ["wake-1"]}
    finally:
        await target.stop()
        scenario.close()


def test_a_pools_own_warning_stays_a_warning_under_error_filters(pytester) -> None:
    """loky warns from its executor's thread when it restarts a leaking worker; a project's
    ``filterwarnings = error`` made that an exception there, and loky lost the work in flight."""
    pytester.makeini(
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        import warnings

        def test_loky_restarts_a_leaking_worker():
            warnings.warn_explicit(
                "A worker was restarted while some jobs were given to the executor",
                UserWarning, "process_executor.py", 869, module="loky.process_executor",
            )

        def test_any_other_warning_is_still_an_error():
            warnings.warn("mine", UserWarning)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E*UserWarning: mine"])  # the project's filter, in force


def test_a_hang_leads_the_failure_whatever_the_test_then_tripped_on(
    pytester: pytest.Pytester,
) -> None:
    """A guard that found the target hung (and killed it) may leave the test to fail on what
    the kill did -- an exit code, a missing result: the report names the hang first."""
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        pytestmark = pytest.mark.asyncio

        class Stuck:
            capabilities = frozenset()
            async def start(self): pass
            async def submit(self, key, payload, id): pass
            def worker_pids(self): return []
            async def committed(self): await asyncio.sleep(3600)
            async def stop(self): pass

        async def test_trips_after_a_hang(chaos):
            target = chaos.guard(Stuck())
            try:
                await target.committed()
            except AssertionError:
                pass  # (a test that goes on after the hang...)
            assert 1 == 2, "tripped on what the hang left"
        """
    )
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "--chaos-target-timeout", "1", "--chaos-report", str(reports)
    )
    result.assert_outcomes(failed=1)
    (entry,) = json.loads((reports / "latest" / "report.json").read_text())["scenarios"]
    assert entry["failure_kind"] == "hung"
    assert entry["failure"].startswith("Stuck.committed() did not return within 1 s"), entry
    assert "tripped on what the hang left" in entry["failure"]


def test_the_system_pools_own_scenarios_run_against_its_subclasses() -> None:
    """A subclass of the system pool's target (a planted bug, a user's variant) has every
    failpoint site, mode and ladder of it: its own scenarios must run against it, not skip."""
    from chaos.pytest_plugin import is_system_pool

    assert is_system_pool(None) and is_system_pool("chaos:SystemTarget")
    assert is_system_pool("targets:LossyTarget")  # tests/targets.py: a planted bug
    assert not is_system_pool("chaos.peers:ProcessPoolTarget")
