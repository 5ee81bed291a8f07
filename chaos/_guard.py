"""Bounded, contained calls into a target: the harness never waits on a pool without a deadline,
and nothing a pool raises can crash the run.

``Guarded(target, timeout, tree)`` stands in for a target. Each call the harness makes into it --
``start``, ``submit``, ``committed``, ``committed_now``, ``drain``, ``stop`` (awaited), and
``worker_pids``, ``dead_lettered``, ``events`` (plain calls) -- returns within ``timeout``
seconds (the ``target_timeout`` setting) or fails the scenario as ``TargetHung``, a weakness.
A call can overrun in two ways:

- it *awaits* what never comes (results of a killed worker): the call runs as a task of its
  own, cancelled at the deadline and left behind ``GRACE`` s later if it ignores the cancel;
- it *blocks the caller's thread* (``Pool.terminate()`` on a lock a killed worker held; a
  synchronous wait inside ``async def``): no timeout of the event loop can fire. A watchdog
  thread sees the call ``GRACE`` s past its deadline and interrupts the blocked main thread with
  ``SIGUSR2`` (as pytest-timeout's signal method does: a blocking syscall returns EINTR), whose
  handler (installed by ``interruptible()``) raises only if the thread is inside that call's
  target code, never in the harness's own. A thread other than the main one cannot be
  interrupted: it is given up (``wedged``; the fault schedules then move to a fresh loop).

A call that returns only after the watchdog killed the target's processes hung all the same. A
return value of the wrong shape (``committed()`` not a mapping of lists, ...) is a broken
contract (``ContractError``).

On a hang the harness gathers its evidence before anything else moves: py-spy dumps of every
process of the target (its blocked frames named) and the harness's own threads (a pool that
runs in the test's process shows there); then the target's process tree is SIGKILLed by pid
(``tree()``: the processes it started, each checked to be the same process). The hang is kept
(``hung``): later calls fail at once, as a hung target answers nothing more -- except ``stop()``,
tried once more within the bound, so that a target that can still stop does.

Anything a target raises is contained: exceptions of chaos itself (``ChaosError``, a cancelled
task, Ctrl-C) pass as they are; any other -- whatever its type, ``BaseException`` subclasses,
recursive causes, a ``__str__`` that raises -- becomes ``TargetError``, an ordinary
``Exception`` whose message is a readable, truncated traceback and whose ``original`` is the
exception itself (not its ``__cause__``: a pathological chain must not reach pytest's reporting).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil

from ._errors import ChaosError, ContractError

DEFAULT_TIMEOUT = 30.0  # seconds any one call into a target may take (target_timeout)
GRACE = 2.0  # seconds past a deadline before the watchdog holds the caller's thread blocked
TEXT_LIMIT = 4000  # characters of a target's traceback kept in a TargetError
AWAITED = frozenset({"start", "submit", "committed", "committed_now", "drain", "stop"})
CALLED = frozenset({"worker_pids", "dead_lettered", "events"})
INTERRUPT = signal.SIGUSR2


class TargetHung(AssertionError):
    """A call into the target did not return within ``target_timeout``: the target is hung (a
    weakness). ``dumps`` holds the stacks gathered at the deadline."""

    def __init__(self, message: str, dumps: str | None = None):
        super().__init__(message)
        self.dumps = dumps


class TargetError(Exception):
    """The target raised: its traceback as text (truncated), the exception in ``original``."""

    original: BaseException | None  # None once it crossed processes (plain text then)

    def __init__(self, call: str, error: BaseException):
        self.original = error
        self.call = call
        self.__suppress_context__ = True  # the original is kept apart, never chained
        what = call if " " in call else f"{call}()"
        super().__init__(f"{what} raised {describe(error)}\n{format_error(error)}")

    def __reduce__(self) -> Any:  # plain text across processes: the original may not pickle
        return (_plain_error, (self.call, str(self)))


def _plain_error(call: str, text: str) -> TargetError:
    error = TargetError.__new__(TargetError)
    Exception.__init__(error, text)
    error.call, error.original = call, None
    return error


def describe(error: object) -> str:
    """``Type: message``, whatever ``__str__`` does."""
    try:
        text = str(error)
    except BaseException:  # a __str__ that raises must not crash the report
        text = "<its __str__ raised>"
    name = getattr(type(error), "__qualname__", "exception")
    return f"{name}: {text[:300]}" if text else name


def format_error(error: BaseException, limit: int = TEXT_LIMIT) -> str:
    """A readable traceback of ``error`` (at most 20 frames and 5 chained causes), truncated."""
    from chaos._tracebacks import format_plain

    try:
        text = format_plain(error, limit=20)  # no ast.parse: safe in any thread (3.11)
    except BaseException:  # e.g. RecursionError while formatting a pathological chain
        text = f"(its traceback could not be formatted) {describe(error)}"
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]


def target_name(target: Any) -> str:
    """The class name of the target itself, through its guard."""
    inner = target.target if isinstance(target, Guarded) else target
    return type(inner).__name__


def passes_through(error: BaseException) -> bool:
    """The harness's own exceptions, cancellation and Ctrl-C are not the target's to contain."""
    return isinstance(
        error, ChaosError | TargetHung | asyncio.CancelledError | KeyboardInterrupt | GeneratorExit
    )


def made_by(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``, whatever it raises contained as ``TargetError``."""
    try:
        return factory(*args, **kwargs)
    except BaseException as e:
        if passes_through(e):
            raise
        raise TargetError("the target factory", e) from None


async def stop_all(targets: list[Guarded]) -> None:
    """Stop every target, the last started first, each within its bound and closed whatever
    the others did; then raise the first error, if any."""
    errors: list[BaseException] = []
    for target in reversed(targets):
        try:
            await target.stop()
        except Exception as e:  # stop the others all the same
            errors.append(e)
        finally:
            target.close()
    if errors:
        raise errors[0]


def _ids_per_key(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, list | tuple) for v in value.values())


def _pids(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset) and all(
        isinstance(p, int) for p in value
    )


def _events(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(e, Mapping) for e in value)


SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {  # call -> (check, what it must return)
    "committed": (_ids_per_key, "a mapping of each key to the list of its committed ids"),
    "worker_pids": (_pids, "a list of the worker processes' pids (ints)"),
    "events": (_events, "a list of event mappings"),
}


class Guarded:
    """A target whose every call is bounded and contained (see the module doc). Attributes and
    calls other than the target protocol's pass through to the target unchanged."""

    def __init__(
        self,
        target: Any,
        timeout: float = DEFAULT_TIMEOUT,
        tree: Callable[[], list[psutil.Process]] | None = None,
        kill: Callable[[], Any] | None = None,
        on_hang: Callable[[TargetHung], None] | None = None,
    ):
        self.target = target
        self.timeout = timeout
        self.tree = tree or (lambda: [])
        self.kill = kill  # e.g. a served target's own kill of its process group
        self.on_hang = on_hang
        self.hung: TargetHung | None = None
        self.wedged = False  # a call blocked a thread that cannot be interrupted (not main)
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if name in AWAITED and callable(value):
            return lambda *a, **k: self._awaited(name, value, a, k)
        if name in CALLED and callable(value):
            return lambda *a, **k: self._called(name, value, a, k)
        return value

    @property
    def capabilities(self) -> frozenset[str]:
        try:
            return frozenset(getattr(self.target, "capabilities", ()))
        except BaseException as e:
            if passes_through(e):
                raise
            raise ContractError(
                f"{target_name(self)}.capabilities cannot be read ({describe(e)}): give a set "
                "of names (e.g. frozenset({'dead_letters'}))"
            ) from None

    def __repr__(self) -> str:
        return f"Guarded({self.target!r}, timeout={self.timeout})"

    # --- the two kinds of call -------------------------------------------------------------

    async def _awaited(self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """The call runs as a task of its own, so that its bound never depends on the target
        honouring cancellation: past the bound it is cancelled, given GRACE s, and left."""
        self._refuse_if_hung(name)
        call = self._begin(name)
        inner = asyncio.ensure_future(_run_target(name, fn, args, kwargs))
        try:
            try:
                done, _ = await asyncio.wait({inner}, timeout=self.timeout)
            except asyncio.CancelledError:  # the caller gave up on it: so does the target
                inner.cancel()
                raise
            if not done:
                call.where = _suspended_at(inner)
                inner.cancel()
                await asyncio.wait({inner}, timeout=GRACE)
                inner.add_done_callback(_retrieve)
                raise self._hang(call, "awaited")
            error = None if inner.cancelled() else inner.exception()
            if isinstance(error, _Interrupted):
                raise self._hang(call, "blocked its thread")
            if isinstance(error, TargetHung):  # a served target's own bound
                raise self._hang(call, f"answered nothing: {error}")
            self._late(call)
            if inner.cancelled():  # the target cancelled it itself (e.g. its own shutdown)
                raise TargetError(name, asyncio.CancelledError(f"{name}() was cancelled"))
            if error is None:
                return self._checked(name, inner.result())
            if isinstance(error, TargetError):  # contained already (a SystemExit)
                raise error
            if passes_through(error):
                raise error
            await self._check_concurrency(name, fn, args, kwargs, error)
            raise TargetError(name, error)
        finally:
            self._end(call)

    def _called(self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        self._refuse_if_hung(name)
        call = self._begin(name)
        try:
            value = fn(*args, **kwargs)
        except _Interrupted:
            raise self._hang(call, "blocked its thread") from None
        except TargetHung as e:
            raise self._hang(call, f"answered nothing: {e}") from None
        except BaseException as e:
            if passes_through(e):
                raise
            raise TargetError(name, e) from None
        finally:
            self._end(call)
        self._late(call)
        return self._checked(name, value)

    def _late(self, call: _Call) -> None:
        """A call that returned only after the watchdog gathered its evidence and killed the
        target's processes (which may have unblocked it) hung all the same."""
        if call.gathered:
            raise self._hang(call, "returned only once its processes were killed")

    def _checked(self, name: str, value: Any) -> Any:
        """What the harness builds a verdict on must have the contract's shape."""
        shape = SHAPES.get("committed" if name == "committed_now" else name)
        if shape is not None and not shape[0](value):
            raise ContractError(
                f"{target_name(self)}.{name}() returned {type(value).__name__} "
                f"{repr(value)[:200]}: the contract asks for {shape[1]}"
            )
        return value

    async def _check_concurrency(
        self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any, error: BaseException
    ) -> None:
        """A read of the committed state that fails while a submit is in flight, and succeeds
        once none is, breaks the contract (it must be safe while submits go on)."""
        if name not in ("committed", "committed_now"):
            return
        with self._lock:
            submits = [c for c in self._calls.values() if c.name == "submit"]
        if not submits:
            return
        deadline = time.monotonic() + self.timeout
        while any(not c.done for c in submits) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(fn(*args, **kwargs), self.timeout)
        except BaseException:  # it fails alone too: the pool is broken, not the adapter
            return
        raise ContractError(
            f"{target_name(self)}.{name}() raised while a submit() was in flight, and worked "
            "once none was -- the target contract asks it to be safe while submits go on "
            f"(guard the adapter's shared state, or read a snapshot): {TargetError(name, error)}"
        )

    def _refuse_if_hung(self, name: str) -> None:
        if self.hung is not None and (name != "stop" or self.wedged):
            raise TargetHung(f"{name}() not tried: {self.hung}", self.hung.dumps)

    def blocking(self, thread: int | None) -> TargetHung | None:
        """The hang of a call that blocks ``thread`` past its bound (evidence gathered, the
        tree killed, the thread not interruptible), if there is one: that thread is lost."""
        with self._lock:
            late = [c for c in self._calls.values() if c.thread == thread and c.gathered]
        return self.hung if late and self.wedged else None

    # --- the watchdog ------------------------------------------------------------------------

    def _begin(self, name: str) -> _Call:
        call = _Call(next(self._ids), name, threading.get_ident(), time.monotonic() + self.timeout)
        with self._lock:
            self._calls[call.id] = call
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="chaos-target-watchdog", daemon=True
                )
                self._watchdog.start()
        return call

    def _end(self, call: _Call) -> None:
        with self._lock:
            self._calls.pop(call.id, None)
            call.done = True

    def _watch(self) -> None:
        """Every 0.2 s: a call GRACE s past its deadline has blocked its thread."""
        while not self._closed.wait(0.2):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._calls.values() if now > c.deadline + GRACE]
                late = [c for c in late if not c.flagged]
                for call in late:
                    call.flagged = True
            for call in late:
                try:
                    self._gather(call)  # evidence first, while everything is as the hang left it
                except Exception as e:  # the watchdog must outlive a failed dump
                    call.summary = f"(gathering evidence failed: {describe(e)})"
                if call.done:
                    continue
                main = call.thread == threading.main_thread().ident
                if not (main and _interrupt(call)):  # its thread is lost to the target
                    self.wedged = True
                    self._hang(call, "blocked its thread")

    def close(self) -> None:
        self._closed.set()

    # --- a hang: evidence, then the tree killed ----------------------------------------------

    def _hang(self, call: _Call, how: str) -> TargetHung:
        if call.thread == threading.get_ident():
            call.done = True  # back in the guard: the watchdog must not interrupt it now
        self._gather(call)
        text = (
            f"{target_name(self.target)}.{call.name}() did not return within "
            f"{self.timeout:g} s (target_timeout; it {how}): the target is hung. " + call.summary
        )
        hung = TargetHung(text, call.dumps)
        if self.hung is None:
            self.hung = hung
            if self.on_hang is not None:
                self.on_hang(hung)
        return hung

    def _gather(self, call: _Call) -> None:
        """Dumps of the target's processes and of the harness's threads, then the tree killed;
        once per call."""
        with self._lock:
            if call.gathered:
                return
            call.gathered = True
        procs = self.tree()
        text, found = stacks_of(procs)
        own, where = harness_stacks(call.thread)
        where = call.where or where
        if self.kill is not None:
            with contextlib.suppress(Exception):
                self.kill()
        killed = kill_all(procs)
        call.summary = f"The call waited at {where}{found}; {killed} target process(es) killed"
        call.dumps = f"{text}\n{own}"


class _Interrupted(BaseException):
    """Raised in the main thread by the watchdog's signal: a call there blocked its thread."""


class _Call:
    def __init__(self, id: int, name: str, thread: int, deadline: float):
        self.id, self.name, self.thread, self.deadline = id, name, thread, deadline
        self.done = self.flagged = self.gathered = False
        self.summary, self.dumps = "", ""
        self.where: str | None = None  # an awaited call: where its task was suspended


_pending: dict[int, _Call] = {}  # calls the watchdog interrupts in the main thread


def _interrupt(call: _Call) -> bool:
    """Interrupt the main thread's blocked call, if our handler is there to turn the signal into
    an exception (the default action of SIGUSR2 would end the whole run)."""
    if signal.getsignal(INTERRUPT) is not _on_interrupt:
        return False
    _pending[call.id] = call
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_kill(call.thread, INTERRUPT)
    return True


def _on_interrupt(signum: int, frame: Any) -> None:
    """Raise in the main thread only inside a guarded call's target code (its frames are on the
    stack), and only for a call that has not returned: never in the harness's own code."""
    calls = [c for c in list(_pending.values()) if not c.done]
    _pending.clear()
    if calls and _in_target(frame):
        raise _Interrupted()


_TARGET_CODES: set[Any] = set()  # code objects of the frames that run a target's code


def _in_target(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code in _TARGET_CODES:
            return True
        frame = frame.f_back
    return False


async def _run_target(name: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    try:
        return await fn(*args, **kwargs)
    except SystemExit as e:  # asyncio would re-raise it out of the event loop itself
        raise TargetError(name, e) from None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A task left behind at its bound: its outcome is of no interest (no warning for it)."""
    if not task.cancelled():
        task.exception()


def _suspended_at(task: asyncio.Task[Any]) -> str | None:
    """The innermost frame of ``task`` that is not asyncio's own, as "name (file:line)"."""
    obj: object = task.get_coro()
    frame = None
    for _ in range(200):  # down the chain of awaits to the innermost coroutine
        if obj is None:
            break
        inner = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if inner is not None and "/asyncio/" not in inner.f_code.co_filename:
            frame = inner
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
    if frame is None:
        return None
    return (
        f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})"
    )


@contextlib.contextmanager
def interruptible() -> Any:
    """Install the watchdog's signal handler (main thread only) for the ``with`` block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(INTERRUPT, _on_interrupt)
    try:
        yield
    finally:
        _pending.clear()
        signal.signal(INTERRUPT, previous)


def stacks_of(procs: Iterable[psutil.Process]) -> tuple[str, str]:
    """The py-spy dumps of ``procs`` (bounded, one after another), and where they stand in a
    few words: "; blocked in the target: pid 12 MainThread: wait (x.py:3)", "; running in the
    target: ...", a stopped process named as such (its stack cannot move)."""
    from ._stacks import dump_stacks

    parts, blocked, running = [], [], []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_STOPPED:  # SIGSTOP: no stack moves in it
                blocked.append(f"pid {proc.pid}: stopped (SIGSTOP)")
        dump = dump_stacks(proc.pid, timeout=5.0)
        parts.append(f"--- target process {proc.pid} ({dump.method}) ---\n{dump.text}")
        blocked += [
            f"pid {proc.pid} {t.name or t.thread_id}: {f}" for t, f in dump.blocked_frames()
        ]
        running += [
            f"pid {proc.pid} {t.name or t.thread_id}: {f}" for t, f in dump.running_frames()
        ]
    found = (f"; blocked in the target: {'; '.join(blocked[:4])}" if blocked else "") + (
        f"; running in the target: {'; '.join(running[:4])}" if running else ""
    )
    return "\n".join(parts), found


def harness_stacks(blocked: int | None = None) -> tuple[str, str]:
    """Every thread of this (the harness's) process, innermost frame last; and where thread
    ``blocked`` waits (its innermost frame). Formatted without ``ast`` (``chaos._tracebacks``):
    this runs in the watchdog's thread."""
    from chaos._tracebacks import format_stack_plain

    names = {t.ident: t.name for t in threading.enumerate()}
    parts, where = [], "an unknown place"
    for ident, frame in sys._current_frames().items():
        stack = traceback.StackSummary.from_list(traceback.extract_stack(frame)[-12:])
        parts.append(
            f"--- harness thread {names.get(ident, ident)} ---\n" + format_stack_plain(stack)
        )
        if ident == blocked and stack:
            last = stack[-1]
            where = f"{last.name} ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
    return "\n".join(parts), where


def kill_all(procs: list[psutil.Process]) -> int:
    """SIGKILL each process that is still the one meant (psutil checks its start time); wait
    until each is gone (a zombie counts: its parent reaps it)."""
    killed = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():
                proc.kill()
                killed += 1
    from ._processes import wait_gone

    wait_gone({p.pid for p in procs}, 5.0)  # not psutil.wait_procs: a parent's exit status is
    return killed  # its own to collect (waitpid here would steal it)


_TARGET_CODES.update({_run_target.__code__, Guarded._called.__code__})
