"""Failpoints: named sites in code where a test can make a fault happen, fail-rs/gofail style.

A site is a call, ``failpoint("worker.before_commit")``; it does nothing until configured. The
configuration is a string in the grammar of fail-rs::

    name=[P%][N*]action[(arg)][->[P%][N*]action[(arg)]...] [; name=...]

Terms run in sequence: a term with ``N*`` fires N times and then hands over to the next one; a
term without a count stays. ``P%`` makes a term fire on that share of hits only, decided by a
hash of (seed, scope, site, hit number) -- so a run replays from its seed whatever the timing.
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

Counters are run-wide: every hit of a configured site and every firing is appended to one log
(``CHAOSGATE_FAILPOINT_LOG``, or a temporary file made by the first process that configures
failpoints and handed to the workers it starts) -- one short line, O_APPEND, before the action
runs, so a ``kill(SIGKILL)`` is counted too; ``counts()`` sums them up. ``N*`` and hit numbers
live next to it in ``<log>.counts``, updated under an flock, so ``1*kill(SIGKILL)`` kills one
process of the run, not every replacement in turn (a configured site costs some tens of
microseconds per hit; an unconfigured one nothing).

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
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
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
        self.hits = 0
        self.fires = 0
        self._lock = threading.Lock()

    def decide(self, seed: str, shared: dict[str, Any] | None = None) -> Term | None:
        """The term that fires on this hit, or None.

        ``shared`` is the run-wide record of this site (hits, fired per term) when processes
        share counters: then ``1*kill`` fires once in the whole run, not once per process.
        """
        with self._lock:
            self.hits += 1
            fired = [t.fired for t in self.terms]
            hit = self.hits
            if shared is not None:
                shared["hits"] = hit = shared.get("hits", 0) + 1
                fired = shared.setdefault("fired", [0] * len(self.terms))
            for i, term in enumerate(self.terms):
                if term.count is not None and fired[i] >= term.count:
                    continue
                p = term.probability
                if p is not None and _chance(seed, self.name, hit) >= p:
                    return None
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


def _chance(seed: str, name: str, hit: int) -> float:
    digest = hashlib.blake2b(f"{seed}|{name}|{hit}".encode(), digest_size=8).digest()
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
    for p in (path, path + ".counts"):
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
            with _shared_counts(log) as shared:
                for name in parsed:
                    shared.pop(name, None)
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
    if log:
        with _shared_counts(log) as shared:
            term = fp.decide(seed, shared.setdefault(name, {}))
        _record(log, name, term)
    else:
        term = fp.decide(seed)
    if term is None:
        return None
    return _act(name, term, pipe)


@contextlib.contextmanager
def _shared_counts(log: str) -> Iterator[dict[str, Any]]:
    """The run-wide counters next to the log, read and written under an exclusive flock."""
    fd = os.open(log + ".counts", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        state = json.loads(raw) if raw.strip() else {}
        yield state
        data = json.dumps(state).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)  # releases the lock


def _record(path: str, name: str, term: Term | None) -> None:
    line = f"{os.getpid()} {name} {'fire ' + str(term) if term else 'hit'}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


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
    """``{site: {"hits": n, "fires": n, "processes": n}}`` summed over every process's lines
    (of ``path``, by default this process's run-wide log)."""
    path = path or log_path()
    if path is None:
        return {}
    hits: Counter[str] = Counter()
    fires: Counter[str] = Counter()
    pids: dict[str, set[str]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) < 3:
            continue  # torn by a kill mid-write
        pid, name, what = parts
        hits[name] += 1
        pids.setdefault(name, set()).add(pid)
        if what.startswith("fire"):
            fires[name] += 1
    return {n: {"hits": hits[n], "fires": fires[n], "processes": len(pids[n])} for n in hits}


if os.environ.get(ENV):
    set_failpoints(os.environ[ENV])
