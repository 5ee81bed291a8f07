"""Checkpoints are atomic (also under SIGKILL mid-write) and fenced against stale owners."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from system import Fenced
from system._checkpoint import CheckpointStore

# Commits state list(range(n + 1)) (~1 MB, so a commit takes a while) with offset n, forever.
WRITER = r"""
import pickle, sys
from pathlib import Path
from system._checkpoint import CheckpointStore
store = CheckpointStore(Path(sys.argv[1]))
n = store.claim([0])[0]
pad = b"x" * 1_000_000
print("claimed", flush=True)
while True:
    n += 1
    state = pickle.dumps((list(range(n + 1)), pad))
    store.commit({0: n}, [("k", 0, state)], [(f"m{n}", 0, n, pickle.dumps(n))], [])
"""


def test_sigkill_mid_commit_leaves_the_previous_checkpoint_usable(tmp_path: Path) -> None:
    rng = random.Random(7)
    last = -1
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "claimed\n"
        time.sleep(rng.uniform(0.05, 0.3))  # a random point in the write loop, not a sync point
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        proc.stdout.close()
        store = CheckpointStore(tmp_path)
        committed = store.committed()[0]
        found, (state, _) = store.load_state("k")
        assert found and state == list(range(committed + 1))  # state and offset agree
        assert store.result(f"m{committed}") == (True, committed)
        assert store.result(f"m{committed + 1}") == (False, None)
        assert committed > last  # progress was made, and kept
        last = committed
        store.close()


def test_a_stale_owner_is_fenced_and_writes_nothing(tmp_path: Path) -> None:
    old, new = CheckpointStore(tmp_path), CheckpointStore(tmp_path)
    old.claim([0, 1])
    old.commit({0: 5}, [("a", 0, pickle.dumps("old"))], [], [])
    assert new.claim([1]) == {1: -1}
    with pytest.raises(Fenced, match="partition 1 was claimed by a newer worker"):
        old.commit({0: 6, 1: 3}, [("a", 0, pickle.dumps("stale"))], [], [])
    assert new.load_state("a") == (True, "old")
    assert new.committed() == {0: 5, 1: -1}
    old.commit({0: 7}, [], [], [])  # partition 0 is still old's
    assert new.committed()[0] == 7
    old.close()
    new.close()
