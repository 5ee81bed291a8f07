"""The pytest plugin, run in a subprocess as users run it (pytester)."""

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
