"""The partition hash is stable across processes and runs (never the salted built-in hash)."""

import subprocess
import sys
import zlib

from system import partition_of


def test_known_values_do_not_change() -> None:
    # CRC-32 of the UTF-8 bytes. Changing this would move every key of every existing data dir.
    assert partition_of("hello", 64) == zlib.crc32(b"hello") % 64 == 6
    assert [partition_of(f"k{i}", 64) for i in range(4)] == [
        zlib.crc32(f"k{i}".encode()) % 64 for i in range(4)
    ]


def test_same_in_other_processes_with_other_hash_seeds() -> None:
    keys = [f"user-{i}" for i in range(200)] + ["", "ключ", "\U0001f600"]
    here = [partition_of(k, 64) for k in keys]
    code = f"from system import partition_of; print([partition_of(k, 64) for k in {keys!r}])"
    for seed in ("1", "2", "random"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            check=True,
        ).stdout
        assert eval(out) == here


def test_spreads_keys_over_partitions() -> None:
    counts = [0] * 64
    for i in range(64_000):
        counts[partition_of(f"k{i}", 64)] += 1
    assert min(counts) > 600 and max(counts) < 1400
