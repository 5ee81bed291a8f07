"""Stack capture of a live process: ``py-spy dump``, bounded in time, raw and parsed.

``dump_stacks(pid)`` runs ``py-spy dump`` twice -- once for the text a person reads, once with
``--json`` for the parsed form -- each under a timeout (``--nonblocking`` so the target is never
paused, which also works on a frozen process). Each thread carries its frames (innermost first),
whether py-spy saw it active or idle, and a hint when its innermost Python frame is a lock
acquire or a wait (read from the source line), which is how a deadlock shows.

py-spy needs ptrace rights on the target (root, or ``kernel.yama.ptrace_scope`` 0 for one's own
children, or CAP_SYS_PTRACE in a container) and a CPython it knows. Where it cannot attach, the
dump says why and falls back to what the kernel tells: ``/proc/PID/stack`` (root only),
``/proc/PID/wchan`` and the psutil status of each thread.
"""

from __future__ import annotations

import json
import linecache
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

_WAITS = (".acquire(", ".wait(", ".join(", "_wait_for_tstate_lock", ".get(", "sleep(")


@dataclass
class Frame:
    function: str
    filename: str
    line: int

    def __str__(self) -> str:
        return f"{self.function} ({self.filename}:{self.line})"


@dataclass
class ThreadStack:
    name: str
    thread_id: int  # the OS thread id
    active: bool
    owns_gil: bool
    frames: list[Frame]  # innermost first
    waiting: str | None = None  # e.g. "lock acquire at app.py:12: lock.acquire()"


@dataclass
class StackDump:
    pid: int
    method: str  # "py-spy" or "fallback"
    text: str  # what a person reads
    threads: list[ThreadStack] = field(default_factory=list)
    reason: str | None = None  # why py-spy was not used (fallback only)
    seconds: float = 0.0

    def blocked_frames(self) -> list[tuple[ThreadStack, Frame]]:
        """``(thread, innermost frame)`` of every thread that waits on a lock or a condition."""
        return [(t, t.frames[0]) for t in self.threads if t.waiting and t.frames]

    def running_frames(self) -> list[tuple[ThreadStack, Frame]]:
        """``(thread, innermost frame)`` of every thread on the CPU and waiting on nothing --
        a busy loop, where a hang is no lock's fault."""
        return [(t, t.frames[0]) for t in self.threads if t.active and not t.waiting and t.frames]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "method": self.method,
            "reason": self.reason,
            "seconds": self.seconds,
            "text": self.text,
            "threads": [
                {
                    "name": t.name,
                    "thread_id": t.thread_id,
                    "active": t.active,
                    "owns_gil": t.owns_gil,
                    "waiting": t.waiting,
                    "frames": [str(f) for f in t.frames],
                }
                for t in self.threads
            ],
        }


def py_spy_path() -> str | None:
    """py-spy next to this interpreter (the venv's bin), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def dump_stacks(
    pid: int, *, timeout: float = 10.0, locals: bool = False, py_spy: str | None = None
) -> StackDump:
    """Every thread's Python stack of ``pid`` (or a stated fallback); never takes much longer
    than ``2 * timeout``."""
    t0 = time.monotonic()
    exe = py_spy or py_spy_path()
    if exe is None or not os.path.exists(exe):
        return _fallback(pid, f"py-spy not found ({exe or 'not on PATH'}); install py-spy", t0)
    base = [exe, "dump", "--nonblocking", "--pid", str(pid)] + (["--locals"] if locals else [])
    try:
        text = subprocess.run(base, capture_output=True, text=True, timeout=timeout)
        if text.returncode != 0:
            return _fallback(pid, f"py-spy failed: {_first_line(text.stderr)}", t0)
        parsed = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _fallback(pid, f"py-spy did not answer within {timeout} s", t0)
    except OSError as e:  # e.g. EAGAIN: no process may start here (a pids cgroup)
        return _fallback(pid, f"py-spy could not start: {e}", t0)
    threads = _parse(parsed.stdout) if parsed.returncode == 0 else []
    return StackDump(pid, "py-spy", text.stdout, threads, None, time.monotonic() - t0)


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "no output").strip()


def _parse(raw: str) -> list[ThreadStack]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return []
    threads = []
    for t in data:
        frames = [Frame(f["name"], f["filename"], f["line"]) for f in t.get("frames", [])]
        stack = ThreadStack(
            t.get("thread_name") or str(t.get("thread_id")),
            t.get("os_thread_id") or t.get("thread_id"),
            bool(t.get("active")),
            bool(t.get("owns_gil")),
            frames,
        )
        if frames and not stack.active:
            source = linecache.getline(frames[0].filename, frames[0].line).strip()
            if any(w in source for w in _WAITS):
                name = Path(frames[0].filename).name
                stack.waiting = f"waits at {name}:{frames[0].line}: {source}"
        threads.append(stack)
    return threads


def _fallback(pid: int, reason: str, t0: float) -> StackDump:
    lines = [f"Process {pid}: no Python stacks ({reason})"]
    threads = []
    try:
        proc = psutil.Process(pid)
        lines.append(f"status {proc.status()}, command {' '.join(proc.cmdline())[:200]}")
        for th in proc.threads():
            task = Path(f"/proc/{pid}/task/{th.id}")
            wchan = _read(task / "wchan") or "?"
            state = _read(task / "stat").split(") ", 1)[-1][:1] or "?"
            lines.append(f"Thread {th.id}: state {state}, waiting in kernel at {wchan}")
            kstack = _read(task / "stack")
            lines += [f"    {line}" for line in kstack.splitlines()]
            threads.append(
                ThreadStack(
                    str(th.id),
                    th.id,
                    state == "R",
                    False,
                    [],
                    f"kernel: {wchan}" if wchan not in ("0", "?") else None,
                )
            )
    except psutil.Error as e:
        lines.append(f"cannot read the process: {e}")
    return StackDump(pid, "fallback", "\n".join(lines), threads, reason, time.monotonic() - t0)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""
