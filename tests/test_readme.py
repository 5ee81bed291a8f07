"""The README's API example runs as shown, and a second run applies nothing twice."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_api_example_runs_and_is_idempotent(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The API in 15 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    script = tmp_path / "example.py"
    script.write_text(code)
    outputs = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)
    assert outputs == ["1683 (True, 'user-0 is at 1683')\n"] * 2


def _pytest_against(adapter: str, where: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    (where / "my_target.py").write_text(adapter)
    env = {**os.environ, "PYTHONPATH": str(where)}
    options = ["--chaos-target", "my_target:MyTarget", "--chaos-seed", "1", "-rs"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *tests, *options, "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_adapter_example_points_the_scenarios_at_another_pool(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your pool as a target", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) < 40
    tests = ["scenarios/test_sigkill_variants.py", "scenarios/test_broken_pipes.py"]
    run = _pytest_against(code, tmp_path, *tests)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"\b2 passed, 5 skipped\b", run.stdout), run.stdout[-3000:]
    assert "lacks failpoints, events (it offers none)" in run.stdout
    assert "has no socket of its own to break" in run.stdout
    # The same pool without the resubmit: the scenarios catch the loss, id by id.
    careless = code.replace("future = self._submit(key, id)", "break")
    assert careless != code
    run = _pytest_against(careless, tmp_path, tests[0])
    assert run.returncode == 1, run.stdout[-3000:]
    assert re.search(r"lost=\d+, allowed 0", run.stdout), run.stdout[-3000:]
    assert re.search(r"got kill \(SIGKILL\) \+0\.\d+ s after it was submitted", run.stdout)


def test_the_comparison_table_agrees_with_the_strict_expectations() -> None:
    spec = importlib.util.spec_from_file_location(
        "peers_scenario", ROOT / "scenarios/test_peers.py"
    )
    scenario = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scenario)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- comparison:begin -->", 1)[1].split("<!-- comparison:end -->")[0]
    rows = [line.strip("|").split(" | ") for line in block.strip().splitlines() if "|" in line]
    header, body = [c.strip() for c in rows[0]], rows[2:]
    assert header[1:] == list(scenario.TARGETS)
    assert [r[0].strip() for r in body] == [f.replace("_", " ") for f in scenario.FAULTS]
    for row in body:
        fault = row[0].strip().replace(" ", "_")
        for target, cell in zip(header[1:], row[1:], strict=True):
            outcome = re.match(r"\**(\w+)", cell.strip()).group(1)
            assert outcome == scenario.EXPECTED[(target, fault)][0], (target, fault, cell)
