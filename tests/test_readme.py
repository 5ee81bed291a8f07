"""The README's API example runs as shown, and a second run applies nothing twice."""

import asyncio
import concurrent.futures
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

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


def _pytest_against(adapter: str, where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (where / "my_target.py").write_text(adapter)
    env = {**os.environ, "PYTHONPATH": str(where)}
    options = ["--chaos-target", "my_target:MyTarget", "--chaos-seed", "1", "-rs"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args, *options, "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _adapter() -> str:
    section = (ROOT / "README.md").read_text().split("## Your pool as a target", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_adapter_example_points_the_scenarios_at_another_pool(tmp_path: Path) -> None:
    code = _adapter()
    assert len([line for line in code.splitlines() if line.strip()]) <= 45
    tests = ["scenarios/test_sigkill_variants.py", "scenarios/test_broken_pipes.py"]
    run = _pytest_against(code, tmp_path, *tests)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"\b3 passed, 5 skipped\b", run.stdout), run.stdout[-3000:]
    assert "the system pool's own failpoint sites at either end of its pipes" in run.stdout
    assert "lacks" not in run.stdout  # no scenario is skipped for a capability the pool lacks
    assert "has no socket of its own to break" in run.stdout
    # The same pool without the resubmit: the scenarios catch the loss, id by id. Its work
    # takes 10 ms a message (400 messages: 1 s on 4 workers), so that the kill finds work in
    # flight however fast the machine (at full speed a loaded one may finish all of it before
    # the kill, and lose only work submitted after it); how long before the kill a lost id was
    # submitted depends on the load: any figure.
    careless = code.replace("pool, future = self._submit(key, id, payload)", "break")
    careless = careless.replace("    return apply(", "    sleep(0.01)\n    return apply(")
    careless = careless.replace("import asyncio\n", "import asyncio\nfrom time import sleep\n")
    assert careless.count("sleep(0.01)") == 1 and "from time import sleep" in careless
    run = _pytest_against(careless, tmp_path, tests[0])
    assert run.returncode == 1, run.stdout[-3000:]
    assert re.search(r"lost=\d+, allowed 0", run.stdout), run.stdout[-3000:]
    assert re.search(r"got kill \(SIGKILL\) \+\d+\.\d{3} s after it was submitted", run.stdout), (
        run.stdout[-3000:]
    )


# What the README's adapter does with each fault family: its resubmit makes it survive the
# kills, a broken channel, a transient MemoryError and the OOM killer; with no task timeout it
# hangs on a stopped, deadlocked or spinning worker; a poisoned payload or result fails all
# its tries and is given up (lost); nothing recycles a growing worker; its collector dies of
# the EAGAIN of a fork it cannot make (hung); and its stop drops what SIGTERM left undone.
ADAPTER_MATRIX = {
    "kill_busy": "recovered",
    "kill_all": "recovered",
    "kill_idle": "recovered",
    "freeze": "hung",
    "deadlock": "hung",
    "busy_loop": "hung",
    "pipe_outside": "n/a",
    "pipe_inside": "recovered",
    "bad_argument": "lost",
    "payload_catalog": "lost",
    "bad_result": "lost",
    "memory_growth": "grew",
    "rlimit_as": "recovered",
    "oom_kill": "recovered",
    "exhaustion": "hung",
    "sigterm": "lost",
}


@pytest.mark.slow
def test_every_fault_family_runs_against_the_adapter_example(tmp_path: Path) -> None:
    """The matrix's column for a user's target: every family runs (none skipped for a missing
    capability; only the socket break, which has no socket to act on), each verdict as the
    adapter deserves."""
    run = _pytest_against(
        _adapter(),
        tmp_path,
        "scenarios/test_peers.py",
        "-k",
        "yours",
        "-s",
        "--chaos-target-timeout",
        "5",
    )
    seen = dict(re.findall(r"^yours / (\w+): (n/a|\w+)", run.stdout, re.M))
    assert seen == ADAPTER_MATRIX, run.stdout[-3000:]
    good = sum(1 for v in ADAPTER_MATRIX.values() if v == "recovered")
    bad = len(ADAPTER_MATRIX) - good - 1
    assert re.search(rf"\b{bad} failed, {good} passed, 1 skipped\b", run.stdout), run.stdout[-3000:]


async def test_the_adapter_example_resubmits_work_stranded_in_a_broken_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython's ProcessPoolExecutor marks itself broken without the lock that ``submit`` holds:
    a submit racing a worker's death can put its work into the pool after the pool failed all
    it held, and that future stays pending for good (seen here as a scenario waiting out its
    60 s bound). The adapter gives up on a pending future of a broken pool and resubmits it."""
    (tmp_path / "my_target.py").write_text(_adapter())
    spec = importlib.util.spec_from_file_location("my_target", tmp_path / "my_target.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "my_target", module)  # its workers find work() there
    spec.loader.exec_module(module)
    target = module.MyTarget(tmp_path / "data", workers=1)
    await target.start()
    try:
        broken = SimpleNamespace(_broken="A child process terminated abruptly")
        stranded: concurrent.futures.Future[str] = concurrent.futures.Future()  # never done
        await target.queue.put(("k", "m1", None, broken, stranded))
        await target.submit("k", None, "m2")
        assert await asyncio.wait_for(target.committed(), 30) == {"k": ["m1", "m2"]}
        assert not stranded.done()
    finally:
        await target.stop()


@pytest.mark.parametrize(
    ("scenario_file", "block", "families"),
    [
        ("test_peers.py", "comparison", "FAMILIES"),
        ("test_engines.py", "engines", "ALL"),
        ("test_network.py", "network", "FAMILIES"),
    ],
)
def test_the_comparison_table_agrees_with_the_strict_expectations(
    scenario_file: str, block: str, families: str
) -> None:
    spec = importlib.util.spec_from_file_location(
        scenario_file[:-3], ROOT / "scenarios" / scenario_file
    )
    scenario = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scenario)
    readme = (ROOT / "README.md").read_text()
    table = readme.split(f"<!-- {block}:begin -->", 1)[1].split(f"<!-- {block}:end -->")[0]
    rows = [line.strip("|").split(" | ") for line in table.strip().splitlines() if "|" in line]
    header, body = [c.strip() for c in rows[0]], rows[2:]
    assert header[1:] == list(scenario.TARGETS)
    assert [r[0].strip() for r in body] == [
        f.replace("_", " ") for f in getattr(scenario, families)
    ]
    for row in body:
        fault = row[0].strip().replace(" ", "_")
        for target, cell in zip(header[1:], row[1:], strict=True):
            if cell.strip() == "-":  # not run: not a family of that column, or not strict
                runs = getattr(scenario, "families", lambda t: getattr(scenario, families))
                unstable = getattr(scenario, "UNSTABLE", {})
                assert fault not in runs(target) or (target, fault) in unstable, (target, fault)
                continue
            outcome = re.match(r"\**(n/a|\w+)", cell.strip()).group(1)
            assert outcome in scenario.EXPECTED[(target, fault)][0].split("|"), (target, cell)
