"""``python -m system run | verify | dump``: results, anomalies found, and errors with their fix."""

import json
import pickle
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import cli


@pytest.mark.parametrize("mode", ["process", "thread", "inline"])
def test_run_verify_dump(tmp_path: Path, mode: str) -> None:
    d = str(tmp_path / "d")
    run = cli(
        "run",
        "--data-dir",
        d,
        "--messages",
        "3000",
        "--keys",
        "7",
        "--workers",
        "2",
        "--mode",
        mode,
    )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(
        rf"messages=3000 committed_now=3000 seconds=[\d.]+ rate=\d+/s restarts=0 mode={mode} "
        r"workers=2\n",
        run.stdout,
    )
    verify = cli("verify", "--data-dir", d)
    assert verify.returncode == 0
    assert verify.stdout.startswith("lost=0 duplicated=0 reordered=0 ")
    dump = cli("dump", "--data-dir", d)
    assert json.loads(dump.stdout) == {f"k{k}": list(range(k, 3000, 7)) for k in range(7)}
    assert list(json.loads(dump.stdout)) == [f"k{k}" for k in range(7)]  # natural order
    again = cli("run", "--data-dir", d, "--messages", "3000", "--keys", "7", "--mode", mode)
    assert again.returncode == 0 and "committed_now=0 " in again.stdout  # nothing twice


def test_verify_names_lost_duplicated_and_reordered_ids(tmp_path: Path) -> None:
    d = tmp_path / "d"
    assert cli("run", "--data-dir", str(d), "--messages", "100", "--keys", "4").returncode == 0
    db = sqlite3.connect(d / "checkpoints.db")
    # k1 holds 1, 5, 9, ..., 97: lose 9, duplicate 13, swap 17 and 21.
    state = [1, 5, 21, 17, 13, 13, *range(25, 100, 4)]
    db.execute("UPDATE states SET state = ? WHERE key = 'k1'", (pickle.dumps(state),))
    db.commit()
    db.close()
    verify = cli("verify", "--data-dir", str(d))
    assert verify.returncode == 1
    lines = verify.stdout.splitlines()
    assert lines[0].startswith("lost=1 duplicated=1 reordered=2 unexpected=0 dead_lettered=0")
    assert "lost: m9" in lines
    assert "duplicated: m13" in lines
    assert any(
        line.startswith("reordered: ")
        and {"m17", "m21"} & set(line.split())
        and len(line.split()) == 3
        for line in lines
    )


def one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_errors_are_one_line_with_cause_and_fix_and_change_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    one_line_error(cli("verify", "--data-dir", str(missing)), "does not exist", "run --data-dir")
    one_line_error(cli("dump", "--data-dir", str(tmp_path)), "not a chaosgate data dir")
    assert not missing.exists()
    one_line_error(cli("run", "--data-dir", str(tmp_path / "a" / "b")), "parent", "create")
    afile = tmp_path / "file"
    afile.write_text("keep me")
    one_line_error(cli("run", "--data-dir", str(afile)), "is not a directory")
    assert afile.read_text() == "keep me"
    one_line_error(cli("run", "--data-dir", str(tmp_path), "--workers", "0"), "--workers", ">= 1")
    one_line_error(cli("run", "--data-dir", str(tmp_path), "--mode", "fibre"), "invalid choice")
    one_line_error(cli("frobnicate"), "invalid choice")
    d = tmp_path / "d"
    assert cli("run", "--data-dir", str(d), "--messages", "10", "--partitions", "8").returncode == 0
    before = {p.name: p.stat().st_size for p in d.iterdir()}
    one_line_error(
        cli("run", "--data-dir", str(d), "--partitions", "16"),
        "partitions=8, not 16",
        "--partitions 8",
    )
    assert cli("verify", "--data-dir", str(d)).returncode == 0
    assert {p.name: p.stat().st_size for p in d.iterdir()}.keys() == before.keys()
