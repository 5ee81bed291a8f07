"""chaosgate as a user gets it: the wheel, installed into a fresh venv outside this repository,
runs the scenarios against a user project's own pool with that project's settings."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 900  # a cold pip cache downloads matplotlib, numpy, hypothesis...


def _adapter() -> str:
    section = (ROOT / "README.md").read_text().split("## Your pool as a target", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(*args: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("CHAOSGATE_HARNESS_PID", None)
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_the_wheel_runs_the_scenarios_in_a_user_project(tmp_path: Path) -> None:
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist",
        ROOT, cwd=tmp_path, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("chaosgate-*.whl")
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, timeout=120)
    assert made.returncode == 0, made.stderr
    pip = _run(
        venv / "bin/python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path,
        timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]

    # A user's project: its pool, its settings -- strict asyncio, its own test file pattern.
    project = tmp_path / "project"
    (project / "mypool").mkdir(parents=True)
    (project / "mypool/__init__.py").write_text("")
    (project / "mypool/pool.py").write_text(_adapter())
    (project / "chaos").mkdir()  # a package of the project's own, named as chaosgate's is
    (project / "chaos/__init__.py").write_text("raise ImportError('the project shadowed chaos')")
    (project / "pyproject.toml").write_text(
        textwrap.dedent("""\
            [tool.chaosgate]
            target = "mypool.pool:MyTarget"
            seed = 7
            target_timeout = 5

            [tool.pytest.ini_options]
            asyncio_mode = "strict"
            python_files = ["check_*.py"]
            pythonpath = ["."]
        """)
    )
    shadowed = _run(venv / "bin/chaosgate", cwd=project, timeout=60)
    assert shadowed.returncode == 12, shadowed.stdout + shadowed.stderr
    assert "chaos is a module of this project named as chaosgate's" in shadowed.stderr
    (project / "chaos/__init__.py").unlink()
    (project / "chaos").rmdir()
    (project / "chaos.py").write_text("raise ImportError('the project shadowed chaos')")
    (project / "pyproject.toml").write_text(
        (project / "pyproject.toml").read_text().replace('pythonpath = ["."]', "")
    )  # the project's directory still on sys.path, after chaosgate's: not shadowing now
    where = _run(
        venv / "bin/python", "-P", "-c", "import chaos.scenarios; print(chaos.scenarios.__file__)",
        cwd=project, timeout=60,
    )  # fmt: skip
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout, where
    # Two cells the adapter survives and one it hangs on, and a scenario of its own file.
    run = _run(
        venv / "bin/chaosgate", "-p", "no:cacheprovider", "-k",
        "yours-kill_busy or yours-rlimit_as or yours-deadlock or test_workers_killed_at_once",
        cwd=project, timeout=600,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 10, out[-4000:]  # a weakness: the deadlock hung it
    assert re.search(r"\b1 failed, 4 passed, \d+ deselected\b", out), out[-4000:]
    assert "PytestAssertRewriteWarning" not in out, out[-4000:]
    assert "target mypool.pool:MyTarget" in out and "seed 7" in out, out[:2000]
    assert "yours / deadlock: hung" in out or "yours-deadlock]" in out, out[-4000:]
    assert re.search(r"gate: WEAKNESS \(exit 10\)", out), out[-4000:]
    assert list((project / "reports").glob("*/report.json")), "no report in the project"
