"""The bad-payload catalog: each fails where it says, and a pool gives it the right outcome."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, find, given, settings

from chaos import PAYLOAD_CATALOG, payloads
from chaos._payloads import BY_NAME, DEAD_LETTERED, OK, REFUSED
from system import PayloadError, Pool
from system._intake import IntakeLog


@pytest.mark.parametrize("fault", PAYLOAD_CATALOG, ids=lambda f: f.name)
def test_each_payload_fails_where_the_catalog_says(fault) -> None:
    value = fault.make()
    if fault.refused:
        with pytest.raises(Exception):  # noqa: B017 - pickle raises several types here
            pickle.dumps(value)
        return
    blob = pickle.dumps(value)
    if fault.fails_everywhere:
        with pytest.raises(ValueError, match="CrashAtUnpickle"):
            pickle.loads(blob)
        return
    pickle.loads(blob)  # fine in this process...
    other = subprocess.run(  # ...and in a fresh one, unless its class exists only here
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=blob,
        capture_output=True,
        timeout=60,
    )
    if fault.fails_in_worker_process:
        assert other.returncode != 0 and b"ModuleNotFoundError" in other.stderr
    else:
        assert other.returncode == 0, other.stderr


@pytest.mark.parametrize("mode", ["process", "inline"])
async def test_a_pool_refuses_or_dead_letters_exactly_the_bad_ones(tmp_path: Path, mode) -> None:
    async with Pool(lambda_free_handler, tmp_path, workers=2, mode=mode, partitions=4) as pool:
        expected_dead = []
        for i, fault in enumerate(PAYLOAD_CATALOG):
            await pool.submit(f"k{i}", i, f"good-{i}")
            outcome = fault.outcome(mode)
            if outcome == REFUSED:
                with pytest.raises(PayloadError, match="nothing was written"):
                    await pool.submit(f"k{i}", fault.make(), f"bad-{fault.name}")
            else:
                await pool.submit(f"k{i}", fault.make(), f"bad-{fault.name}")
                if outcome == DEAD_LETTERED:
                    expected_dead.append(f"bad-{fault.name}")
        await pool.drain(timeout=60)
        assert sorted(d["id"] for d in pool.dead_letters()) == sorted(expected_dead)
        for i, fault in enumerate(PAYLOAD_CATALOG):
            state = await pool.query(f"k{i}")
            assert state[0] == i  # the good message before it is unaffected
            assert len(state) == (2 if fault.outcome(mode) == OK else 1)
    log = IntakeLog(tmp_path, None)
    refused = sum(f.outcome(mode) == REFUSED for f in PAYLOAD_CATALOG)
    assert log.count() == 2 * len(PAYLOAD_CATALOG) - refused  # refused ones left no row
    log.close()


def lambda_free_handler(state, message):
    """Keeps the payload's type name only (payloads like locks need not be stored)."""
    state = [] if state is None else state
    state.append(message.payload if isinstance(message.payload, int) else "payload")
    return state


def test_process_mode_expectations_differ_only_for_a_class_missing_in_the_worker() -> None:
    differs = {f.name for f in PAYLOAD_CATALOG if f.outcome("process") != f.outcome("thread")}
    assert differs == {"missing_in_worker"}
    assert BY_NAME["huge"].outcome() == OK


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(payloads())
def test_the_strategy_labels_every_payload_truthfully(labelled) -> None:
    fault, value = labelled
    if fault is None or not fault.refused:
        pickle.dumps(value)
    else:
        with pytest.raises(Exception):  # noqa: B017
            pickle.dumps(value)


def test_the_strategy_mixes_good_and_bad_payloads() -> None:
    assert find(payloads(), lambda labelled: labelled[0] is None)[0] is None
    for name in ("lambda", "crash_at_unpickle", "huge"):
        assert find(payloads(), lambda labelled, n=name: labelled[0] is BY_NAME[n])
