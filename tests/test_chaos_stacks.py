"""Stack capture: py-spy dumps of deadlocked and frozen processes, and the stated fallback."""

import json
import subprocess

from chaos import dump_stacks, frozen


def test_dump_names_the_deadlocked_frame(puppet) -> None:
    p = puppet()
    assert p.ask("deadlock") == "ok"
    dump = dump_stacks(p.pid, timeout=10)
    assert dump.method == "py-spy" and dump.reason is None
    assert "Thread" in dump.text and '"deadlocked"' in dump.text
    ((thread, frame),) = [(t, f) for t, f in dump.blocked_frames() if t.name == "deadlocked"]
    assert frame.function.endswith("deadlocked") and frame.filename.endswith("puppet.py")
    assert "lock.acquire()" in thread.waiting
    assert dump.seconds < 10


def test_dump_of_a_frozen_process_does_not_wait_for_it(puppet) -> None:
    p = puppet()
    with frozen(p.pid):
        dump = dump_stacks(p.pid, timeout=10)
    assert dump.method == "py-spy"
    assert any(t.name == "MainThread" for t in dump.threads)


def test_without_py_spy_the_fallback_says_why_and_shows_the_kernel_view(puppet) -> None:
    p = puppet()
    dump = dump_stacks(p.pid, py_spy="/nonexistent/py-spy")
    assert dump.method == "fallback" and "py-spy not found" in dump.reason
    assert f"Process {p.pid}" in dump.text and "waiting in kernel at" in dump.text
    assert dump.threads


def test_a_process_py_spy_cannot_read_gets_the_fallback() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])  # not a Python process
    try:
        dump = dump_stacks(sleeper.pid, timeout=10)
        assert dump.method == "fallback" and dump.reason.startswith("py-spy failed")
        assert "status sleeping" in dump.text
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dump_as_dict_is_plain_data_and_locals_are_optional(puppet) -> None:
    p = puppet()
    assert p.ask("deadlock") == "ok"
    plain = dump_stacks(p.pid)
    json.dumps(plain.as_dict())
    with_locals = dump_stacks(p.pid, locals=True)
    assert "Locals:" in with_locals.text and "Locals:" not in plain.text
