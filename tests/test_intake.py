"""The intake log: offsets, idempotent ids, reopening, and refusing an incompatible data dir."""

from pathlib import Path

import pytest

from system import DataDirError
from system._intake import IntakeLog, check_data_dir


def rows(start: int, ids: list[str]) -> list[tuple[int, str, str, int, bytes]]:
    return [(start + i, mid, f"k{i}", i % 4, b"p") for i, mid in enumerate(ids)]


def test_append_scan_and_reopen_continue_offsets(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 8)
    assert log.next_offset == 0 and log.partitions == 8
    log.append(rows(0, ["a", "b", "c"]))
    log.close()
    log = IntakeLog(tmp_path, None)  # the partition count comes from the data dir
    assert log.partitions == 8
    assert log.next_offset == 3
    assert [r[1] for r in log.scan()] == ["a", "b", "c"]
    assert log.existing(["b", "zz", "c"]) == {"b": 1, "c": 2}
    log.close()


def test_a_duplicate_id_is_refused_by_the_log(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 8)
    log.append(rows(0, ["a"]))
    with pytest.raises(Exception, match="UNIQUE"):
        log.append(rows(1, ["x", "a"]))
    assert log.count() == 1  # the whole batch was rolled back
    log.close()


def test_read_after_skips_what_each_partition_committed(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 8)
    log.append(rows(0, [f"m{i}" for i in range(12)]))  # partitions 0,1,2,3,0,1,...
    left = list(log.read_after({0: 4, 1: 9, 2: -1}, 4))
    assert [r[0] for r in left] == [2, 3, 6, 7, 8, 10, 11]
    log.close()


def test_read_after_replays_never_claimed_partitions_from_the_start(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 4)
    log.append(rows(0, [f"m{i}" for i in range(8)]))
    # Only partition 0 was ever claimed and committed (say the pool died before the others ran).
    assert [r[0] for r in log.read_after({0: 4}, 4)] == [1, 2, 3, 5, 6, 7]
    log.close()


def test_a_different_partition_count_is_refused_with_the_fix(tmp_path: Path) -> None:
    IntakeLog(tmp_path, 8).close()
    with pytest.raises(DataDirError, match=r"partitions=8, not 16; pass partitions=8"):
        IntakeLog(tmp_path, 16)


def test_data_dir_errors_name_cause_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="does not exist; run `python -m system run"):
        check_data_dir(tmp_path / "nope", create=False)
    with pytest.raises(DataDirError, match=r"parent .* does not exist"):
        check_data_dir(tmp_path / "a" / "b", create=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError, match="is not a directory"):
        check_data_dir(tmp_path / "file", create=True)
    with pytest.raises(DataDirError, match="not a chaosgate data dir"):
        check_data_dir(tmp_path, create=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "intake.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataDirError, match="not a usable intake log"):
        IntakeLog(tmp_path / "junk", None)
