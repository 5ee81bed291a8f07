"""Put a process into a cgroup of its own with a limit, for a while: the kernel enforces it.

Works with cgroup v2 (a controller listed in ``cgroup.controllers`` of the unified hierarchy) and
v1 (a hierarchy mounted with that controller). The new cgroup is made *inside* the target's
current one, so limits the target already lives under (a container's, say) still apply, and it
is named ``chaosgate-<pid>-<n>``. On the way out the process goes back where it was and the
cgroup is removed -- also when the block fails, and also when the target has died.

``available(controller)`` answers ``(True, where)`` or ``(False, why)``: a read-only /sys/fs/cgroup
(an unprivileged container), no such controller, or no write access are the usual reasons.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._errors import InjectorUnavailable

ROOT = Path("/sys/fs/cgroup")
log = logging.getLogger("chaos")
_names = itertools.count()


@dataclass(frozen=True)
class Hierarchy:
    version: int
    mount: Path


def _mounts() -> list[tuple[str, Path, str]]:
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                found.append((parts[2], Path(parts[1]), parts[3]))
    return found


def hierarchy(controller: str) -> Hierarchy | None:
    """Where ``controller`` can be used: a v2 hierarchy that lists it, else a v1 mount of it."""
    for kind, mount, _options in _mounts():
        if kind == "cgroup2":
            with contextlib.suppress(OSError):
                if controller in (mount / "cgroup.controllers").read_text().split():
                    return Hierarchy(2, mount)
    for kind, mount, options in _mounts():
        if kind == "cgroup" and controller in options.split(","):
            return Hierarchy(1, mount)
    return None


def available(controller: str) -> tuple[bool, str]:
    h = hierarchy(controller)
    if h is None:
        return False, (
            f"no cgroup hierarchy on this machine offers the {controller!r} controller "
            "(/proc/self/mounts lists none); run on a host or a privileged container"
        )
    if not os.access(h.mount, os.W_OK):
        return False, (
            f"{h.mount} (cgroup v{h.version}, {controller}) is not writable by this user; run as "
            "root or give the user a delegated cgroup"
        )
    return True, f"cgroup v{h.version} at {h.mount}"


def current(pid: int, h: Hierarchy, controller: str) -> Path:
    """The cgroup directory ``pid`` belongs to in hierarchy ``h``."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (h.version == 2 and names == "") or (h.version == 1 and controller in names.split(",")):
            return h.mount / path.lstrip("/")
    raise InjectorUnavailable(f"pid {pid} is in no {controller} cgroup (see /proc/{pid}/cgroup)")


@contextlib.contextmanager
def limited(
    pid: int, controller: str, settings: dict[str, str], also: tuple[int, ...] = ()
) -> Iterator[Path]:
    """Move ``pid`` (and the pids in ``also``, e.g. its descendants) into a new child cgroup
    with ``settings`` (file -> value) for the block; put them all back afterwards."""
    ok, why = available(controller)
    if not ok:
        raise InjectorUnavailable(why)
    h = hierarchy(controller)
    assert h is not None
    home = current(pid, h, controller)
    group = home / f"chaosgate-{os.getpid()}-{next(_names)}"
    try:
        group.mkdir()
    except OSError as e:
        raise InjectorUnavailable(f"cannot create cgroup {group}: {e.strerror}") from e
    try:
        if h.version == 2:
            _enable(home, controller)
    except OSError as e:
        _remove(group)
        raise InjectorUnavailable(
            f"cannot enable the {controller} controller below {home}: {e.strerror}. On cgroup "
            "v2 a cgroup with processes in it cannot delegate controllers (the 'no internal "
            "processes' rule): run the target in a leaf cgroup of its own, or from a delegated "
            "subtree (e.g. systemd-run --user --scope -p Delegate=yes)"
        ) from e
    try:
        for name, value in settings.items():
            (group / name).write_text(value)
        for member in (pid, *also):
            with contextlib.suppress(ProcessLookupError):
                (group / "cgroup.procs").write_text(str(member))
        yield group
    finally:
        _move_back(pid, home, group)
        try:
            _remove(group)
        except OSError as e:  # never hide the block's own error behind this one
            log.warning("cgroup %s could not be removed (%s); remove it by hand", group, e)


def _enable(parent: Path, controller: str) -> None:
    control = parent / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")


def _move_back(pid: int, home: Path, group: Path) -> None:  # every member, and their children
    with contextlib.suppress(OSError):
        for p in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (home / "cgroup.procs").write_text(p)


def _remove(group: Path, timeout: float = 5.0) -> None:
    """rmdir the cgroup, retrying while the kernel finishes releasing exited tasks."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
