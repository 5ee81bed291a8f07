"""The comparison table, from report entries as the peers scenario records them."""

from pathlib import Path

import pytest

from chaos._compare import BEGIN, END, table, update_readme
from chaos._report import build, run_metadata, scenario_entry, validate


def entry(target: str, fault: str, outcome: str, summary: str, detection=None) -> dict:
    observed = {
        "target": target,
        "fault": fault,
        "outcome": outcome,
        "summary": summary,
        "detection_ms": detection,
        "recovery_ms": None,
    }
    record = {"observed": observed, "faults": [], "events": [], "slo": {}}
    return scenario_entry(f"t.py::test[{target}-{fault}]", "passed", 1.0, record)


def test_rows_are_faults_and_columns_pools() -> None:
    report = build(
        run_metadata(seed=1, target=None, profile="ci", started=0.0),
        [
            entry("system", "kill_busy", "recovered", "recovered in 40 ms", 3.2),
            entry("pool", "kill_busy", "lost", "lost; 22 lost; 22x Error|Pipe", 2.0),
            entry("system", "bad_result", "recovered", "recovered in 7 ms"),
        ],
    )
    validate(report)
    lines = table(report).splitlines()
    assert lines[0] == "| fault | system | pool |"
    assert lines[2] == (
        "| kill busy | recovered in 40 ms (detected in 3 ms) | "
        "**lost**: 22 lost; 22x Error/Pipe (detected in 2 ms) |"
    )
    assert lines[3] == "| bad result | recovered in 7 ms | - |"


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path: Path) -> None:
    report = build(
        run_metadata(seed=1, target=None, profile="ci", started=0.0),
        [entry("system", "kill_idle", "recovered", "recovered in 30 ms")],
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{BEGIN}\nold table\n{END}\nafter\n")
    update_readme(readme, report)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert "| kill idle | recovered in 30 ms |" in text
    readme.write_text("no block here\n")
    with pytest.raises(ValueError, match="has no <!-- comparison:begin -->"):
        update_readme(readme, report)


def test_each_matrix_fills_its_own_block(tmp_path: Path) -> None:
    engine = entry("celery", "kill_busy", "lost", "lost; 1 lost")
    engine["observed"]["matrix"] = "engines"
    report = build(
        run_metadata(seed=1, target=None, profile="ci", started=0.0),
        [entry("system", "kill_idle", "recovered", "recovered in 30 ms"), engine],
    )
    validate(report)
    readme = tmp_path / "README.md"
    blocks = (
        f"{BEGIN}\nold pools\n{END}\nmiddle\n<!-- engines:begin -->\nold\n<!-- engines:end -->\n"
    )
    readme.write_text(blocks)
    update_readme(readme, report)
    pools, engines = readme.read_text().split("middle")
    assert "| kill idle | recovered in 30 ms |" in pools and "celery" not in pools
    assert "| kill busy | **lost**: 1 lost |" in engines and "system" not in engines
    readme.write_text(f"{BEGIN}\n{END}\n")  # no block for the engines' table: said, not dropped
    with pytest.raises(ValueError, match="engines:begin"):
        update_readme(readme, report)
