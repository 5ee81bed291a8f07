"""The intake log: offsets, idempotent ids, reopening, and refusing an incompatible data dir."""

import sqlite3
from pathlib import Path

import pytest

from system import DataDirError
from system._intake import IntakeLog, check_data_dir


def rows(start: int, ids: list[str]) -> list[tuple[int, str, str, int, bytes]]:
    return [(start + i, mid, f"k{i}", i % 4, b"p") for i, mid in enumerate(ids)]


def named(batch: list[tuple[int, str, str, int, bytes]]) -> list[tuple[str, int]]:
    """Every id of ``batch`` as one the caller chose: ``(id, offset)``."""
    return [(r[1], r[0]) for r in batch]


def test_append_scan_and_reopen_continue_offsets(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 8)
    assert log.next_offset == 0 and log.partitions == 8
    log.append(rows(0, ["a", "b", "c"]), named(rows(0, ["a", "b", "c"])))
    log.close()
    log = IntakeLog(tmp_path, None)  # the partition count comes from the data dir
    assert log.partitions == 8
    assert log.next_offset == 3
    assert [r[1] for r in log.scan()] == ["a", "b", "c"]
    assert log.existing(["b", "zz", "c"]) == {"b": 1, "c": 2}
    log.close()


def test_a_duplicate_id_is_refused_by_the_log(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 8)
    log.append(rows(0, ["a"]), named(rows(0, ["a"])))
    with pytest.raises(Exception, match="UNIQUE"):
        log.append(rows(1, ["x", "a"]), named(rows(1, ["x", "a"])))
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


def format_1(where: Path, old: list[tuple[int, str, str, int, bytes]]) -> None:
    """A data dir's intake.db as the last release wrote it: a row per message, 4 partitions."""
    db = sqlite3.connect(where / "intake.db")
    db.executescript(
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
        "CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, key TEXT NOT NULL,"
        " partition INTEGER NOT NULL, payload BLOB NOT NULL);"
        "INSERT INTO meta VALUES ('partitions', '4'), ('format', '1');"
    )
    db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", old)
    db.commit()
    db.close()


def test_a_format_1_log_is_converted_at_open(tmp_path: Path) -> None:
    """A data dir of the last release (a row per message) opens as it was: every message, its
    offset and its id kept, in one transaction."""
    old = rows(0, [f"m{i}" for i in range(25_000)])[::2]  # gaps: a format-1 compaction's
    format_1(tmp_path, old)
    log = IntakeLog(tmp_path, None)
    assert log.partitions == 4 and log.next_offset == 24_999
    assert list(log.scan()) == old and log.count() == 12_500
    assert log.existing(["m0", "m24998", "m1"]) == {"m0": 0, "m24998": 24_998}
    assert [r[0] for r in log.read_after({0: 24_996, 1: 24_997, 2: 24_998, 3: 24_999}, 4)] == []
    log.close()
    db = sqlite3.connect(tmp_path / "intake.db")
    tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "log" not in tables
    assert db.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()[0] == "2"
    # An older chaosgate opening it fails at once, never reading an empty log (offsets from 0
    # again would be taken for messages already committed): format 1's own first statements.
    db.execute("CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL)")
    with pytest.raises(sqlite3.OperationalError, match="no such column: seq"):
        db.execute("SELECT max(seq) FROM log")
    # And had one written a log table there since, this one refuses the data dir.
    db.execute("DROP VIEW log")
    db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL)")
    db.commit()
    db.close()
    with pytest.raises(DataDirError, match="has a format-1 log table: an older chaosgate"):
        IntakeLog(tmp_path, None)


def test_a_refused_open_converts_nothing(tmp_path: Path) -> None:
    """A format-1 data dir opened with the wrong partition count is refused as it was."""
    format_1(tmp_path, [])
    with pytest.raises(DataDirError, match="partitions=4, not 8"):
        IntakeLog(tmp_path, 8)
    db = sqlite3.connect(tmp_path / "intake.db")
    assert db.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()[0] == "1"
    db.close()


def test_a_newer_format_is_refused_with_the_fix(tmp_path: Path) -> None:
    IntakeLog(tmp_path, 4).close()
    db = sqlite3.connect(tmp_path / "intake.db")
    db.execute("UPDATE meta SET v = '9' WHERE k = 'format'")
    db.commit()
    db.close()
    with pytest.raises(DataDirError, match="intake format 9, newer than this chaosgate reads"):
        IntakeLog(tmp_path, None)


def test_no_offset_is_given_twice_once_everything_was_compacted(tmp_path: Path) -> None:
    """With dedup_window=0 a compaction may delete every batch; a reopened log must go on past
    them (a reused offset would be taken for one already committed, and skipped)."""
    log = IntakeLog(tmp_path, 4)
    log.append(rows(0, [f"m{i}" for i in range(10)]))
    assert log.compact({p: 9 for p in range(4)}, below=10) == 10 and log.count() == 0
    log.close()
    log = IntakeLog(tmp_path, None)
    assert log.next_offset == 10
    log.close()


def test_a_group_commit_is_split_by_count_and_bytes_and_keeps_its_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from system import _intake

    monkeypatch.setattr(_intake, "BATCH_ROWS", 4)
    monkeypatch.setattr(_intake, "BATCH_BYTES", 10)
    log = IntakeLog(tmp_path, 4)
    batch = [(i, f"m{i}", "k", i % 4, b"x" * (6 if i in (5, 6) else 1)) for i in range(11)]
    log.append(batch, [(f"m{i}", i) for i in (0, 4, 5, 6, 10)])  # some ids the caller chose
    spans = list(log._db.execute("SELECT first, last FROM batches ORDER BY first"))
    assert spans == [(0, 3), (4, 5), (6, 7), (8, 10)]  # 4 at most; 6 + 6 bytes > 10: split
    assert list(log.scan()) == batch and log.next_offset == 0  # (the writer sets next_offset)
    assert log.existing([f"m{i}" for i in range(11)]) == {"m0": 0, "m4": 4, "m5": 5, "m6": 6,
                                                          "m10": 10}  # fmt: skip
    # Batch (4, 5) is committed whole (partitions 0 and 1), the others are not.
    assert log.compact({0: 4, 1: 5, 2: 2, 3: 3}, below=11) == 4 + 2  # (0, 3) and (4, 5)
    assert log.existing(["m0", "m4", "m5", "m6", "m10"]) == {"m6": 6, "m10": 10}
    log.close()


def test_an_empty_append_writes_nothing(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, 4)
    log.append([])
    assert log.count() == 0 and log.next_offset == 0
    log.close()


def test_a_batches_table_of_other_columns_is_refused(tmp_path: Path) -> None:
    """A development build of format 2 (no n, no ts) opened, appends would all fail: refused
    at open instead, saying so."""
    db = sqlite3.connect(tmp_path / "intake.db")
    db.executescript(
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
        "CREATE TABLE batches (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, parts BLOB NOT"
        " NULL, named BLOB, rows BLOB NOT NULL);"
        "INSERT INTO meta VALUES ('partitions', '4'), ('format', '2');"
    )
    db.close()
    with pytest.raises(DataDirError, match="development build of this format"):
        IntakeLog(tmp_path, None)


def test_a_lagging_partition_holds_its_own_messages_not_every_batch(tmp_path: Path) -> None:
    """Partition 3 commits nothing: the batches it shares with 0-2 are thinned to its own
    messages (their ids kept, the others' gone), replays read exactly those, and the batches
    go once it commits; a batch mostly of laggards is left whole (not worth a rewrite)."""
    log = IntakeLog(tmp_path, 4)
    for b in range(5):  # 5 batches of 8: partitions 0..3, two messages each
        batch = rows(b * 8, [f"m{b * 8 + i}" for i in range(8)])
        log.append(batch, named(batch) if b == 0 else ())
    lagging = {0: 39, 1: 39, 2: 39, 3: -1}
    assert log.compact(lagging, below=40) == 5 * 6
    assert log.count() == 10
    assert [r[0] for r in log.read_after(lagging, 4)] == [o for o in range(40) if o % 4 == 3]
    assert log.existing([f"m{i}" for i in range(8)]) == {"m3": 3, "m7": 7}
    assert log.compacted_through() == {0: 36, 1: 37, 2: 38}
    assert log.compact(lagging, below=40) == 0  # nothing more to drop: no rewrite
    assert log.compact({p: 39 for p in range(4)}, below=40) == 10 and log.count() == 0
    log.close()
    log = IntakeLog(tmp_path, 4)
    batch = rows(40, [f"n{i}" for i in range(8)])
    log.append(batch)
    assert log.compact({0: 47, 1: -1, 2: -1, 3: -1}, below=48) == 0  # 1 of 4 done: kept whole
    assert log.count() == 8
    log.close()


def test_a_batch_not_worth_thinning_is_not_unpickled_again_until_its_laggards_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partitions 0 and 1 done, 2 and 3 holding 6 of its 8 messages: looked at once, then left
    alone -- a compaction runs while submits wait -- until 2 or 3 commits more."""
    from system import _intake

    log = IntakeLog(tmp_path, 4)
    log.append([(i, f"m{i}", "k", i if i < 2 else 2 + i % 2, b"p") for i in range(8)])
    loads = []
    real = _intake.pickle.loads
    monkeypatch.setattr(_intake.pickle, "loads", lambda b: loads.append(real(b)) or loads[-1])
    stuck = {0: 7, 1: 7, 2: -1, 3: -1}
    assert [log.compact(stuck, below=8) for _ in range(3)] == [0, 0, 0]
    assert len([x for x in loads if type(x) is list]) == 1  # its rows: once
    assert log.compact({**stuck, 2: 6}, below=8) == 2 + 3  # 2 moved on: a look, and thinned
    log.close()


def test_resubmitted_generated_ids_are_found_in_their_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from system import _intake

    log = IntakeLog(tmp_path, 4)
    gen = [f"{log.id_prefix}-{o}" for o in range(5000)]
    for lo in range(0, 5000, 2000):
        log.append(rows(lo, gen[lo : lo + 2000]))
    log.next_offset = 5000
    asked = [*gen[::7], f"{log.id_prefix}-5000", f"{log.id_prefix}-07", "other-7"]
    rows_read = []
    real = _intake.pickle.loads
    monkeypatch.setattr(_intake.pickle, "loads", lambda b: rows_read.append(1) or real(b))
    assert log.existing(asked) == {mid: int(mid.rsplit("-", 1)[1]) for mid in gen[::7]}
    assert len(rows_read) == 3  # each batch once, not each id (715 of them)
    log.close()
