"""Failpoints: named sites in code where a test can make a fault happen, fail-rs/gofail style.

A site is a call, ``failpoint("worker.before_commit")``; it does nothing until configured. The
configuration is a string in the grammar of fail-rs::

    name=[P%][N*]action[(arg)][->[P%][N*]action[(arg)]...] [; name=...]

Terms run in sequence: a term with ``N*`` fires N times and then hands over to the next one; a
term without a count stays. ``P%`` makes a term fire on that share of hits only, decided by a
hash of (seed, scope, site, hit number, term): the same seed gives the same decisions for the
same sequence of hits.
Actions: ``off``; ``return(v)`` (the site gets ``v``, a Python literal or a string);
``raise(ExceptionName[, message])`` (for OSError an errno name as the message, e.g.
``raise(OSError, ENOMEM)``, gives that errno); ``sleep(ms)``; ``busy(ms)`` (spin, holding the
GIL; no argument: forever); ``hang`` (block on a lock forever, so a stack dump shows the
waiting frame); ``kill(SIGNAL)`` (this process); ``leak(MB)``; ``threads(n)`` (start n
threads that never end); ``pipe`` (break the site's channel: the site passes
``pipe=callable``; else BrokenPipeError).

Configured from the environment variable ``CHAOSGATE_FAILPOINTS`` when this module is imported,
and at run time with ``set_failpoints()``. ``CHAOSGATE_FAILPOINT_SEED`` seeds probabilities.
Processes that should share a configuration get it passed explicitly (``environment()``), since
a forkserver or spawn parent may have been started before the variable was set.

Counters are run-wide: the first process that configures failpoints picks a log
(``CHAOSGATE_FAILPOINT_LOG``, or a temporary file) and hands it to the workers it starts. A hit
appends one byte to ``<log>.hits.<site>`` -- the offset after it is the hit's run-wide number,
with no lock -- and a firing appends a line to the log *before* the action runs, so a
``kill(SIGKILL)`` is counted too; ``counts()`` sums it all up. So ``1*kill(SIGKILL)`` kills one
process of the run, not every replacement in turn, and ``P%`` decisions follow the seed and the
run-wide hit number. A site with both ``N*`` and ``P%`` keeps its fired counts under an flock.
A configured site costs a few microseconds per hit; an unconfigured one nothing.

Cost when disabled: sites check the module-level dict ``ACTIVE`` (empty = falsy) before calling,
so a disabled site costs one global lookup and a truth test (see bench/failpoints.py).
"""

from __future__ import annotations

import ast
import atexit
import builtins
import contextlib
import errno
import fcntl
import hashlib
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ._errors import FailpointError

ENV = "CHAOSGATE_FAILPOINTS"
ENV_SEED = "CHAOSGATE_FAILPOINT_SEED"
ENV_LOG = "CHAOSGATE_FAILPOINT_LOG"
ENV_SCOPE = "CHAOSGATE_FAILPOINT_SCOPE"  # e.g. "worker-2": varies decisions between processes

ACTIONS = ("off", "return", "raise", "sleep", "busy", "hang", "kill", "leak", "threads", "pipe")
_TERM = re.compile(
    r"^(?:(?P<pct>\d+(?:\.\d+)?)%)?(?:(?P<count>\d+)\*)?(?P<action>[a-z]+)(?:\((?P<arg>.*)\))?$"
)


@dataclass
class Term:
    action: str
    arg: str | None = None
    probability: float | None = None
    count: int | None = None
    fired: int = 0

    def __str__(self) -> str:
        pct = f"{self.probability * 100:g}%" if self.probability is not None else ""
        count = f"{self.count}*" if self.count is not None else ""
        arg = f"({self.arg})" if self.arg is not None else ""
        return f"{pct}{count}{self.action}{arg}"


class Failpoint:
    """One configured site: its terms, and how often it was hit and fired in this process."""

    def __init__(self, name: str, terms: list[Term], spec: str):
        self.name = name
        self.terms = terms
        self.spec = spec
        self.hits = 0  # in this process
        self.fires = 0  # in this process
        self._lock = threading.Lock()
        self.chancy = any(t.probability is not None for t in terms)
        self.counted = any(t.count is not None for t in terms)

    def decide(self, seed: str, hit: int, fired: list[int] | None = None) -> Term | None:
        """The term that fires on hit number ``hit`` (run-wide), or None -- as fail-rs does:
        the first term that still has count left and passes its probability fires; a term
        that misses its probability hands the hit to the next one.

        Without probabilities a term's count is a span of hits, so ``hit`` alone decides.
        With both, the run-wide ``fired`` counts per term decide (the caller holds a lock).
        """
        with self._lock:
            self.hits += 1
            cum = 0
            for i, term in enumerate(self.terms):
                if fired is not None:
                    if term.count is not None and fired[i] >= term.count:
                        continue
                elif not self.chancy and term.count is not None:
                    if hit > cum + term.count:
                        cum += term.count
                        continue
                p = term.probability
                if p is not None and _chance(seed, self.name, hit, i) >= p:
                    continue
                if fired is not None:
                    fired[i] += 1
                term.fired += 1
                if term.action == "off":
                    return None
                self.fires += 1
                return term
            return None


#: Configured failpoints by site name. Sites test ``if ACTIVE:`` before calling ``failpoint``.
ACTIVE: dict[str, Failpoint] = {}
_LOG: str | None = None  # the counter file made by this process, when none was given
_LEAKED: list[bytearray] = []
_HOGS: list[threading.Thread] = []


def _chance(seed: str, name: str, hit: int, term: int) -> float:
    digest = hashlib.blake2b(f"{seed}|{name}|{hit}|{term}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def parse(spec: str) -> dict[str, list[Term]]:
    """Parse ``name=terms; name=terms``; raise FailpointError naming the bad part and the fix."""
    found: dict[str, list[Term]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, eq, rhs = part.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise FailpointError(
                f"bad failpoint {part!r}: expected name=action, e.g. "
                "'worker.before_commit=1*kill(SIGKILL)'"
            )
        found[name] = [_parse_term(name, t.strip()) for t in rhs.split("->")]
    return found


def _parse_term(name: str, text: str) -> Term:
    m = _TERM.match(text)
    if not m or m["action"] not in ACTIONS:
        raise FailpointError(
            f"bad term {text!r} for failpoint {name!r}: expected [P%][N*]action[(arg)] with an "
            f"action among {', '.join(ACTIONS)}"
        )
    term = Term(m["action"], m["arg"])
    if m["pct"] is not None:
        pct = float(m["pct"])
        if not 0 <= pct <= 100:
            raise FailpointError(f"bad probability {pct}% in {text!r}: use 0% to 100%")
        term.probability = pct / 100
    if m["count"] is not None:
        term.count = int(m["count"])
    _check_arg(name, term)
    return term


def _check_arg(name: str, term: Term) -> None:
    needs_int = {"sleep": "ms", "leak": "MB", "threads": "n"}
    where = f"failpoint {name!r}, term {term}"
    if term.action in needs_int:
        if term.arg is None or not term.arg.strip().isdigit():
            unit = needs_int[term.action]
            raise FailpointError(f"{where}: {term.action} needs a whole number of {unit}")
    elif term.action == "busy":
        if term.arg is not None and not term.arg.strip().isdigit():
            raise FailpointError(f"{where}: busy takes a whole number of ms, or nothing (forever)")
    elif term.action == "kill":
        _signal(term.arg or "SIGKILL", where)
    elif term.action == "raise":
        _exception(term.arg, where)
    elif term.action in ("off", "hang", "pipe") and term.arg:
        raise FailpointError(f"{where}: {term.action} takes no argument")


def _signal(text: str, where: str) -> signal.Signals:
    text = text.strip().upper()
    try:
        return (
            signal.Signals(int(text))
            if text.isdigit()
            else signal.Signals[text if text.startswith("SIG") else "SIG" + text]
        )
    except (KeyError, ValueError):
        raise FailpointError(f"{where}: unknown signal {text!r}; use e.g. SIGKILL or 9") from None


def _exception(arg: str | None, where: str) -> tuple[type[BaseException], str]:
    name, _, message = (arg or "").partition(",")
    name = name.strip()
    exc = getattr(builtins, name, None)
    if not (isinstance(exc, type) and issubclass(exc, BaseException)):
        raise FailpointError(
            f"{where}: {name!r} is not a built-in exception; use e.g. raise(OSError, disk full)"
        )
    return exc, message.strip()


def log_path() -> str | None:
    """The file of run-wide counters this process (and the children it configures) share."""
    return os.environ.get(ENV_LOG) or _LOG


def _ensure_log() -> str:
    global _LOG
    path = log_path()
    if path is None:
        fd, path = tempfile.mkstemp(prefix="chaosgate-failpoints-", suffix=".log")
        os.close(fd)
        _LOG = path
        atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    import glob

    for p in [path, *glob.glob(glob.escape(path) + ".*")]:
        with contextlib.suppress(OSError):
            os.remove(p)


def set_failpoints(spec: str, *, replace: bool = False, reset_counts: bool = True) -> None:
    """Configure failpoints in this process (``replace``: drop the others first).

    Counting is run-wide: this process and every worker it configures (``environment()``) share
    one counter file (``CHAOSGATE_FAILPOINT_LOG``, or a temporary one made here), so ``1*kill``
    fires once in all of them. ``reset_counts`` starts the named sites' counts afresh.
    """
    parsed = parse(spec)
    if replace:
        ACTIVE.clear()
    if parsed:
        log = _ensure_log()
        if reset_counts:
            _reset(log, parsed)
    for name, terms in parsed.items():
        if len(terms) == 1 and terms[0].action == "off" and terms[0].count is None:
            ACTIVE.pop(name, None)
        else:
            one = ";".join(p for p in spec.split(";") if p.partition("=")[0].strip() == name)
            ACTIVE[name] = Failpoint(name, terms, one.strip())


def clear() -> None:
    ACTIVE.clear()


def current_spec() -> str:
    return ";".join(fp.spec for fp in ACTIVE.values())


def environment() -> dict[str, str]:
    """The CHAOSGATE_* variables a child process needs to share this process's failpoints."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CHAOSGATE_")}
    env[ENV] = current_spec()
    log = log_path()
    if log:
        env[ENV_LOG] = log
    return env


def apply_environment(env: dict[str, str]) -> None:
    """In a new process: take over failpoint settings passed from the parent."""
    for key in (ENV, ENV_SEED, ENV_LOG, ENV_SCOPE):
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    set_failpoints(env.get(ENV, ""), replace=True, reset_counts=False)


def failpoint(name: str, pipe: Callable[[], None] | None = None, **context: Any) -> Any:
    """A site. Returns None unless a ``return(v)`` term fires (then ``v``); may raise, hang..."""
    fp = ACTIVE.get(name)
    if fp is None:
        return None
    seed = f"{os.environ.get(ENV_SEED, '0')}|{os.environ.get(ENV_SCOPE, '')}"
    log = log_path()
    if log is None:  # (only when counting was switched off by hand)
        term = fp.decide(seed, fp.hits + 1)
    else:
        hit = _count_hit(log, name)
        if fp.chancy and fp.counted:
            with _locked(log):
                fired = _read_fired(log, name, len(fp.terms))
                term = fp.decide(seed, hit, fired)
                _write_fired(log, name, fired)
        else:
            term = fp.decide(seed, hit)
        if term is not None:
            mono = time.clock_gettime(time.CLOCK_MONOTONIC)
            _append(log, f"{os.getpid()} {name} fire {mono:.6f} {term}\n")
    if term is None:
        return None
    return _act(name, term, pipe)


_HIT_FDS: dict[str, int] = {}  # site -> fd of its run-wide hit counter (this process)
_HIT_LOCK = threading.Lock()


def _count_hit(log: str, name: str) -> int:
    """Count a hit run-wide; return its number. One byte appended to a file per site: the
    kernel serialises O_APPEND writes, so the offset after ours is our hit number, with no
    lock between processes -- each has an open file of its own (a forked child reopens it).
    Threads of one process share that offset, so they take turns (thread mode hit numbers
    were once shared: two workers both fired a ``1*hang``)."""
    with _HIT_LOCK:
        fd = _HIT_FDS.get(name)
        if fd is None:
            path = f"{log}.hits.{name}"
            fd = _HIT_FDS[name] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _append(log, f"{os.getpid()} {name} hit\n")  # once per process: who hit it
        os.write(fd, b".")
        return os.lseek(fd, 0, os.SEEK_CUR)


def _forget_hit_files() -> None:
    """In a forked child: the parent's counter files share its offsets; open our own."""
    global _HIT_LOCK
    _HIT_LOCK = threading.Lock()
    for fd in _HIT_FDS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HIT_FDS.clear()


os.register_at_fork(after_in_child=_forget_hit_files)


@contextlib.contextmanager
def _locked(log: str) -> Iterator[None]:
    fd = os.open(log + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_fired(log: str, name: str, terms: int) -> list[int]:
    try:
        with open(f"{log}.fired.{name}", encoding="ascii") as f:
            fired = [int(x) for x in f.read().split()]
    except (FileNotFoundError, ValueError):
        fired = []
    return (fired + [0] * terms)[:terms]


def _write_fired(log: str, name: str, fired: list[int]) -> None:
    """Replace the counts atomically (a kill mid-write leaves the old ones, never none)."""
    tmp = f"{log}.fired.{name}.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(" ".join(map(str, fired)))
    os.replace(tmp, f"{log}.fired.{name}")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _reset(log: str, names: Iterable[str]) -> None:
    """Start the run-wide counts of ``names`` afresh."""
    for name in names:
        with _HIT_LOCK:  # a thread counting a hit must not write to an fd closed (and reused)
            fd = _HIT_FDS.pop(name, None)
            if fd is not None:
                os.close(fd)
        for suffix in ("hits", "fired"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{log}.{suffix}.{name}")
        _append(log, f"{os.getpid()} {name} reset\n")


def _act(name: str, term: Term, pipe: Callable[[], None] | None) -> Any:
    where = f"failpoint {name!r}"
    action, arg = term.action, term.arg
    if action == "return":
        if arg is None:
            return True
        try:
            return ast.literal_eval(arg)
        except (ValueError, SyntaxError):
            return arg
    if action == "raise":
        exc, message = _exception(arg, where)
        code = getattr(errno, message, None) if issubclass(exc, OSError) else None
        if isinstance(code, int):  # raise(OSError, ENOMEM): a real errno, as the kernel gives
            raise exc(code, os.strerror(code))
        raise exc(message or f"raised by {where}")
    if action == "sleep":
        time.sleep(int(arg or 0) / 1000)
    elif action == "busy":
        deadline = time.monotonic() + int(arg) / 1000 if arg else float("inf")
        while time.monotonic() < deadline:
            pass
    elif action == "hang":
        _hang_forever()
    elif action == "kill":
        os.kill(os.getpid(), _signal(arg or "SIGKILL", where))
    elif action == "leak":
        _LEAKED.append(bytearray(int(arg or 0) * 2**20))  # bytearray() touches every page
    elif action == "threads":
        for _ in range(int(arg or 0)):
            t = threading.Thread(target=_hang_forever, daemon=True, name=f"{name}-hog")
            t.start()
            _HOGS.append(t)
    elif action == "pipe":
        if pipe is None:
            raise BrokenPipeError(f"{where} broke the channel (the site passed no pipe to break)")
        pipe()
    return None


def _hang_forever() -> None:
    """Block on a lock nobody will release: a stack dump shows this frame, waiting."""
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # deadlock: waits here forever


def counts(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, int]]:
    """``{site: {"hits": n, "fires": n, "processes": n}}`` over every process of the run
    (read from ``path``, by default this process's run-wide log), since the last reset."""
    found = {}
    hits, fires, path = _read_log(path)
    for name, pids in hits.items():
        try:
            n = os.path.getsize(f"{path}.hits.{name}")
        except OSError:
            n = 0
        found[name] = {"hits": n, "fires": len(fires.get(name, [])), "processes": len(pids)}
    return found


def fires(
    path: str | os.PathLike[str] | None = None,
) -> dict[str, list[tuple[float | None, int | None]]]:
    """``{site: [(CLOCK_MONOTONIC, pid), ...]}``: when and where each firing happened, in the
    run's order (CLOCK_MONOTONIC is one clock for every process of the machine); None where a
    line does not say (torn, or written by an older version)."""
    return _read_log(path)[1]


def _read_log(
    path: str | os.PathLike[str] | None,
) -> tuple[dict[str, set[str]], dict[str, list[tuple[float | None, int | None]]], str]:
    path = str(path or log_path() or "")
    if not path:
        return {}, {}, path
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}, {}, path
    fired: dict[str, list[tuple[float | None, int | None]]] = {}
    pids: dict[str, set[str]] = {}
    for line in lines:
        parts = line.split(" ", 4)
        if len(parts) < 3:
            continue  # torn by a kill mid-write
        pid, name, what = parts[:3]
        if what == "reset":
            fired.pop(name, None)
            pids.pop(name, None)
        elif what == "hit":
            pids.setdefault(name, set()).add(pid)
        elif what == "fire":
            try:
                mono: float | None = float(parts[3])
            except (IndexError, ValueError):
                mono = None
            if mono is not None and not math.isfinite(mono):
                mono = None
            fired.setdefault(name, []).append((mono, int(pid) if pid.isdigit() else None))
    return pids, fired, path


if os.environ.get(ENV):
    set_failpoints(os.environ[ENV], reset_counts=False)  # a child joins its parent's counts
