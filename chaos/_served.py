"""A target served from a child process: ``ServedTarget`` runs any target in a pool of its own.

``ServedTarget(spec, data_dir, **options)`` starts ``python -m chaos serve SPEC DATA_DIR
--options JSON`` (chaosgate's own ``chaos`` imported first, whatever the PYTHONPATH) in a new
session (its own process group: the server, and every process its target starts, can be
killed whole), builds the target there (``factory(data_dir, **options)``;
spec ``"package.module:factory"``, by default the system pool, ``"chaos:SystemTarget"``) and
drives it through the same protocol as ``chaos.Target``. So the harness judges what it saw
itself: a ``submit`` returns when *this* process received the server's acknowledgement, and a
server that dies leaves what it never acknowledged unacknowledged.

The protocol: length-prefixed pickle frames over the child's stdin (requests ``(rid, command,
args)``) and stdout (replies ``("ack", rid)``, ``("refused", rid, "ExcType: msg")``, ``("ok",
rid, value)``, ``("error", rid, "ExcType: msg")``; first ``("ready", info)``). Requests are
pipelined: each submit runs as its own task in the server and is answered the moment it
completes. Here, a writer thread sends and a reader thread dispatches replies to the callers'
futures by request id; so the blocking calls of the protocol (``worker_pids()``, ``events()``,
``dead_lettered()``) are real round trips even from the event loop.

What a target records about itself for the harness (the peer adapters' results that never
came, failed futures, the time of the first failure, a blocked stop and its stack dumps:
``RECORDS``) crosses too: ``records()`` fetches it, and the stop's reply brings it as the stop
left it, so a served pool reads as it would in this process.

Every wait is bounded (``timeout``, 60 s: start, committed; ``ack_timeout``, 30 s: a submit's
acknowledgement and the blocking calls; ``stop_timeout``, by default ``timeout``: the target's
``stop()``) and fails with a ``TargetHung`` naming the command and the server's pid. When the
server's end of the pipe closes (it exited), every pending call fails at once with
``TargetGone``, which names the exit status (``killed by SIGKILL(-9)``) and quotes the tail of
the server's stderr (``<data dir>.served.stderr``, next to the data dir).

Faults: ``kill_whole(sig)`` signals the server's process group and waits until the server and
every process of the group are gone; ``kill_server(sig)`` and ``terminate()`` signal the server
alone. In the server, SIGTERM or SIGINT stops the target gracefully (``await target.stop()``),
answers nothing more, prints ``stopped by signal N`` on stderr and exits with 128+N; the end of
its stdin (this side gone) stops it too. ``stop()`` asks for a graceful stop (the server kills
its target's processes past ``stop_timeout``; this side kills the group 5 s later) and then
sweeps the group: it never leaves a process behind. ``async with serving(spec, data_dir,
**options)`` is a started one, stopped on the way out.

Needs: options that are JSON, payloads and results that pickle, and the target's module
importable in the child (the child's PYTHONPATH is this process's, extended with this process's
``sys.path`` entries outside the interpreter's own directories). The server's stdout is the
protocol channel: the target's own prints go to its stderr file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import psutil

from ._errors import ChaosError
from ._guard import TargetHung, stacks_of
from ._process_faults import Injected, send_signals
from ._processes import descendants, is_gone, wait_gone
from ._stacks import dump_stacks

DEFAULT_SPEC = "chaos:SystemTarget"
_OPTIONAL = ("committed_now", "dead_lettered", "events")
SERVED_ENV = "CHAOSGATE_SERVED"  # set in the server: the harness dumps its stacks from outside
# ``python -m chaos serve ...``, with chaosgate's own ``chaos`` imported first: a project's
# module of that name, on the PYTHONPATH the server inherits, must not shadow it.
_CHAOS_HOME = str(Path(__file__).resolve().parent.parent)
_SERVE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import chaos; del sys.path[0]; "
    "from chaos.__main__ import main; sys.exit(main())"
)
# What a target may record about itself for the harness (chaos.peers), by default:
RECORDS: dict[str, Any] = {
    "outstanding": [],
    "failures": {},
    "first_failure": None,
    "stop_blocked": False,
    "dumps": [],
}
_HEADER = struct.Struct(">I")
_TAIL = 2000  # bytes of the server's stderr quoted in errors


class TargetGone(ChaosError):
    """The served target's server process ended: what it had not answered never will be."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.returncode = returncode


class Refused(Exception):
    """The served target refused a submit (its exception, as ``"ExcType: msg"``): the
    target's answer, not the harness's error."""

    def __init__(self, message: str, error: str):
        super().__init__(message)
        self.error = error


def exit_status(returncode: int | None) -> str:
    """``killed by SIGKILL(-9)``, ``exited with status 143``, or ``still running``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal"
        return f"killed by {name}({returncode})"
    return f"exited with status {returncode}"


def _frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _child_pythonpath() -> str:
    """This process's PYTHONPATH, then its ``sys.path`` entries that are not the interpreter's
    own (stdlib, site-packages): the project, ``tests/``, wherever a user's target lives."""
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    own = {os.path.abspath(p) for p in sysconfig.get_paths().values()}
    own |= {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    for p in sys.path:
        p = os.path.abspath(p or os.getcwd())
        inside = any(p == o or p.startswith(o + os.sep) for o in own if o != os.sep)
        if os.path.isdir(p) and not inside and p not in entries:
            entries.append(p)
    return os.pathsep.join(entries)


def group_members(pgid: int) -> set[int]:
    """The live (non-zombie) processes of process group ``pgid``."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and not is_gone(proc.pid):
                found.add(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


class ServedTarget:
    """A target run in a child process of its own (see the module doc)."""

    def __init__(
        self,
        spec: str | None,
        data_dir: str | Path,
        *,
        timeout: float = 60.0,
        ack_timeout: float = 30.0,
        stop_timeout: float | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ):
        self.spec = spec or DEFAULT_SPEC
        self.data_dir = Path(data_dir)
        self.options = options
        self.timeout = timeout
        self.ack_timeout = ack_timeout
        self.stop_timeout = timeout if stop_timeout is None else stop_timeout
        self.env = env or {}
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}.served.stderr"
        self.capabilities: frozenset[str] = frozenset()
        self.proc: subprocess.Popen[bytes] | None = None
        self.most_pending = 0  # the most requests ever awaiting an answer at once
        self._has: frozenset[str] = frozenset()
        self._rids = itertools.count(1)
        self._pending: dict[int, tuple[str, Any]] = {}  # rid -> (command, future)
        self._lock = threading.Lock()
        self._gone: TargetGone | None = None
        self._exited = threading.Event()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stderr_from = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._records: dict[str, Any] = {}  # the server's target's, as last fetched
        self._sent: set[int] = set()  # signals this side sent the server (its exit: 128+N)

    # --- identity -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ChaosError(f"served target {self.spec} is not started")
        return self.proc.pid

    @property
    def pgid(self) -> int:
        return self.pid  # a session leader: its group is its pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"ServedTarget({self.spec!r}, {str(self.data_dir)!r}, pid={pid})"

    def __getattr__(self, name: str) -> Any:
        """``committed_now``, ``dead_lettered`` and ``events`` exist when the inner target has
        them (known once started); the ``RECORDS``, as last fetched (``records()``)."""
        if name in _OPTIONAL and name in self.__dict__.get("_has", ()):
            return getattr(self, f"_{name}")
        if name in RECORDS:
            return self.__dict__.get("_records", {}).get(name, RECORDS[name])
        raise AttributeError(f"{type(self).__name__} of {self.__dict__.get('spec')} has no {name}")

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.proc is not None:
            raise ChaosError(f"{self!r} is already started; start() it once")
        try:
            options = json.dumps(self.options)
        except TypeError as e:
            raise ChaosError(
                f"options of served target {self.spec} must be JSON to reach its process ({e}); "
                "pass plain numbers, strings, lists and dicts"
            ) from None
        self._loop = asyncio.get_running_loop()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": _child_pythonpath(), SERVED_ENV: "1", **self.env}
        argv = [sys.executable, "-P", "-c", _SERVE, _CHAOS_HOME, "serve", self.spec]
        argv += [str(self.data_dir)]
        argv += ["--options", options, "--stop-timeout", str(self.stop_timeout)]
        with open(self.stderr_path, "ab") as err:
            self._stderr_from = err.tell()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        ready = self._loop.create_future()
        self._pending[0] = ("start", ready)
        for name, run in (("reader", self._read), ("writer", self._write)):
            thread = threading.Thread(target=run, name=f"served-{name}-{self.pid}", daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            info = await self._wait(ready, "start", self.timeout, 0)
        except TargetGone as e:
            self._close_pipes()
            raise TargetGone(
                f"served target {self.spec} did not start (server pid {self.pid} "
                f"{exit_status(e.returncode)}){self._tail()}",
                e.returncode,
            ) from None
        except (ChaosError, TargetHung):  # not ready in time: nothing of it may stay
            self.kill_whole()
            self._close_pipes()
            raise
        self.capabilities = frozenset(info["capabilities"]) | {"whole"}
        self._has = frozenset(info["has"])

    async def submit(self, key: str, payload: Any, id: str) -> None:
        """Returns once this process received the server's acknowledgement of ``id``."""
        reply = await self._call("submit", (key, payload, id), self.ack_timeout)
        if reply is not None:  # ("refused", "ExcType: msg")
            raise Refused(f"served target {self.spec} refused {id}: {reply}", reply)

    def worker_pids(self) -> list[int]:
        return self._call_blocking("worker_pids")

    async def committed(self) -> dict[str, list[Any]]:
        return await self._call("committed", (), self.timeout)

    async def _committed_now(self) -> dict[str, list[Any]]:
        return await self._call("committed_now", (), self.timeout)

    def _dead_lettered(self) -> Any:
        return self._call_blocking("dead_lettered")

    def _events(self) -> list[dict[str, Any]]:
        return self._call_blocking("events")

    def records(self) -> dict[str, Any]:
        """Fetch what the server's target records about itself (``RECORDS``); once the server
        is gone, what was last fetched. Results that never came: the stacks of every process
        of the server's group, dumped from here (a dump from inside may be refused its fork --
        a pids cap -- and would count against the pool)."""
        if self._gone is None and self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(TargetGone):
                self._records.update(self._call_blocking("records"))
            if self._records.get("outstanding") and not self._records.get("dumps"):
                pids = sorted(group_members(self.pgid))
                self._records["dumps"] = [dump_stacks(pid, timeout=10.0) for pid in pids]
        return {name: getattr(self, name) for name in RECORDS}

    async def stop(self) -> None:
        """Stop the target gracefully and make sure nothing of its process group is left. The
        server gives the target's ``stop()`` ``stop_timeout`` s, then kills the target's
        processes and exits 1; this side waits 5 s more, then kills the group. Either way a
        ``TargetHung`` (no stop in time) or ``ChaosError`` says the stop failed. Safe after a
        kill, and twice."""
        if self.proc is None:
            return
        asked = self._gone is None and self.proc.poll() is None
        if asked:
            bound = self.stop_timeout + 5.0
            try:
                self._records.update(await self._call("stop", (), bound) or {})
                await self.wait_exit(bound)
            except TargetGone:
                pass
            except (ChaosError, TargetHung) as e:
                self.kill_whole()
                self._close_pipes()
                raise TargetHung(
                    f"served target {self.spec} (pid {self.pid}) did not stop within {bound} s "
                    f"({e}); its process group was killed"
                ) from None
        self._sweep()
        self._close_pipes()
        signalled = {128 + s for s in self._sent}  # a stop asked while a signal stopped it
        if asked and self.proc.returncode != 0 and self.proc.returncode not in signalled:
            raise ChaosError(
                f"served target {self.spec} (pid {self.pid}) failed to stop: "
                f"{exit_status(self.proc.returncode)}{self._tail()}"
            )

    def final_committed(self) -> dict[str, list[Any]] | None:
        """What the server's target had committed when a signal stopped it (None: it left
        nothing -- it was killed, or its stop failed)."""
        try:
            return pickle.loads(final_path(self.data_dir).read_bytes())
        except FileNotFoundError:
            return None

    async def wait_exit(self, timeout: float) -> int:
        """The server's exit status, once it has exited (``ChaosError`` past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self._exited.is_set():
            if time.monotonic() > deadline:
                raise self._overrun(f"did not exit within {timeout:g} s", {self.pid})
            await asyncio.sleep(0.01)
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    # --- faults ---------------------------------------------------------------------------

    def kill_whole(
        self, sig: int = signal.SIGKILL, timeout: float = 10.0, *, known: Iterable[int] = ()
    ) -> Injected:
        """Signal the server's whole process group (the server and all its workers) at once,
        first thing (no survey before it: the target's work goes on until the signal), then
        wait until every process of the group -- and of ``known``, pids the caller saw in it
        before -- is gone; ``ChaosError`` naming any survivor (the group's are SIGKILLed)."""
        name = signal.Signals(sig).name
        assert self.proc is not None
        mono, ts = time.clock_gettime(time.CLOCK_MONOTONIC), time.time()
        self._sent.add(int(sig))
        if self.proc.poll() is None or group_members(self.pgid):  # else the group is no more
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
        children = {p.pid: p for p in descendants(self.pid)}  # read now: surely the target's
        tree = {self.pid, *known, *children} | group_members(self.pgid)
        left = wait_gone(tree | group_members(self.pgid), timeout)
        if left and sig != signal.SIGKILL:  # the target's, for a verdict: a known pid alive now
            # outside the group may be another process's since (checked for leaks at teardown)
            left &= {self.pid, *children} | group_members(self.pgid)
        if left:
            what = f"outlived {name} to its process group {self.pgid} by {timeout:g} s"
            # A process that outlives SIGKILL is the kernel's matter; any other signal, the
            # target's: it did not stop in time (hung), its stacks taken before the kill.
            survived: Exception = ChaosError(f"{self.spec}: pids {sorted(left)} {what}")
            if sig != signal.SIGKILL:
                survived = self._overrun(what, left)
            if group_members(self.pgid):  # what is still in the group: SIGKILLed now
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
            for pid in left & set(children):  # and a child that left the group (its session)
                with contextlib.suppress(psutil.Error):
                    children[pid].kill()  # psutil: only if it is still that process
            raise survived
        self._exited.wait(timeout)
        detail = {"signal": f"{name}(-{int(sig)})", "pgid": self.pgid, "pids": sorted(tree)}
        return Injected("kill_whole", self.pid, mono, ts, detail)

    def _overrun(self, what: str, pids: Iterable[int]) -> TargetHung:
        """The served target did not end in time: a verdict (hung), with the stacks of the
        processes still there -- where each stands -- and the server's last words."""
        procs = []
        for pid in sorted(pids):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        text, found = stacks_of(procs)
        return TargetHung(
            f"served target {self.spec} (pid {self.pid}) {what}: the target is hung{found}"
            f"{self._tail()}",
            text,
        )

    def kill_server(self, sig: int = signal.SIGKILL) -> Injected:
        """Signal the server process alone (its workers are the target's business)."""
        self._sent.add(int(sig))
        return send_signals([self.pid], sig, kind="kill_server")[0]

    def terminate(self) -> Injected:
        """SIGTERM to the server alone: it stops its target gracefully and exits 128+15."""
        self._sent.add(signal.SIGTERM)
        return send_signals([self.pid], signal.SIGTERM, kind="terminate")[0]

    # --- the client side of the protocol -------------------------------------------------------

    def _register(self, command: str, future: Any) -> int:
        with self._lock:
            if self._gone is not None:  # a fresh exception each time, the same words
                raise TargetGone(str(self._gone), self._gone.returncode)
            if self.proc is None:
                raise ChaosError(f"served target {self.spec} is not started")
            rid = next(self._rids)
            self._pending[rid] = (command, future)
            self.most_pending = max(self.most_pending, len(self._pending))
        return rid

    async def _call(self, command: str, args: tuple[Any, ...], timeout: float) -> Any:
        assert self._loop is not None
        future = self._loop.create_future()
        rid = self._register(command, future)
        try:
            frame = _frame((rid, command, args))
        except Exception:
            self._pending.pop(rid, None)
            raise
        self._outbox.put(frame)
        return await self._wait(future, command, timeout, rid)

    async def _wait(
        self, future: asyncio.Future[Any], command: str, timeout: float, rid: int
    ) -> Any:
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._lock:
                self._pending.pop(rid, None)
            raise TargetHung(self._late(command, timeout)) from None

    def _call_blocking(self, command: str) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        rid = self._register(command, future)
        self._outbox.put(_frame((rid, command, ())))
        try:
            return future.result(self.ack_timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._pending.pop(rid, None)
            raise TargetHung(self._late(command, self.ack_timeout)) from None

    def _late(self, command: str, timeout: float) -> str:
        return (
            f"{command} got no answer from served target {self.spec} (server pid {self.pid}) "
            f"within {timeout} s{self._tail()}"
        )

    def _tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(max(self._stderr_from, f.seek(0, os.SEEK_END) - _TAIL))
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f"; its stderr ({self.stderr_path}) ends:\n{text}" if text else ""

    def _write(self) -> None:
        """Writer thread: frames to the server's stdin, several at a time; dropped once the
        server is gone (its reader reports that)."""
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        broken = False
        while True:
            frame = self._outbox.get()
            if frame is None:
                return
            chunks = [frame]
            with contextlib.suppress(queue.Empty):
                while len(chunks) < 512:
                    more = self._outbox.get_nowait()
                    if more is None:
                        self._outbox.put(None)
                        break
                    chunks.append(more)
            if broken:
                continue
            data = memoryview(b"".join(chunks))
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError:  # EPIPE: the server is gone
                broken = True

    def _read(self) -> None:
        """Reader thread: replies to the callers' futures; at the end of the pipe -- or once the
        server has exited, whoever else holds the pipe (the workers of a pool that forks
        inherit it, and may outlive a killed server) -- the exit status, and ``TargetGone``
        for every call still pending."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        exited = _pidfd_or_none(self.proc.pid)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if exited is not None:
            poller.register(exited, select.POLLIN)
        buf = bytearray()
        broken = ""
        try:
            while not broken:
                ready = dict(poller.poll())
                if exited in ready and fd not in ready:  # exited, its last words all read
                    break
                try:
                    chunk = os.read(fd, 1 << 18)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
                replies = []
                try:
                    while len(buf) >= 4:
                        (n,) = _HEADER.unpack_from(buf)
                        if len(buf) < 4 + n:
                            break
                        replies.append(pickle.loads(bytes(buf[4 : 4 + n])))
                        del buf[: 4 + n]
                except Exception as e:  # not our protocol any more: the server is of no use
                    broken = f" (its protocol broke: {type(e).__name__}: {e}; killed)"
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pgid, signal.SIGKILL)
                self._settle(replies)
        finally:
            if exited is not None:
                os.close(exited)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        gone = TargetGone(
            f"served target {self.spec} (server pid {self.pid}) is gone: {exit_status(code)}"
            f"{broken}{self._tail()}",
            code,
        )
        with self._lock:
            self._gone = gone
            pending, self._pending = self._pending, {}
        self._deliver([(future, None, gone) for _, future in pending.values()])
        self._exited.set()
        self._outbox.put(None)

    def _settle(self, replies: list[tuple[Any, ...]]) -> None:
        outcomes: list[tuple[Any, Any, BaseException | None]] = []
        with self._lock:
            for reply in replies:
                kind, rid = reply[0], (0 if reply[0] == "ready" else reply[1])
                entry = self._pending.pop(rid, None)
                if entry is None:
                    continue  # its caller gave up waiting
                command, future = entry
                if kind == "ready":
                    outcomes.append((future, reply[1], None))
                elif kind == "ack":
                    outcomes.append((future, None, None))
                elif kind == "refused":
                    outcomes.append((future, reply[2], None))
                elif kind == "ok":
                    outcomes.append((future, reply[2], None))
                else:
                    error = ChaosError(
                        f"{command} failed in served target {self.spec} (server pid "
                        f"{self.pid}): {reply[2]}"
                    )
                    outcomes.append((future, None, error))
        self._deliver(outcomes)

    def _deliver(self, outcomes: list[tuple[Any, Any, BaseException | None]]) -> None:
        """Blocking callers' futures now, from this thread; the event loop's in one callback."""
        in_loop = []
        for future, value, error in outcomes:
            if isinstance(future, concurrent.futures.Future):
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            else:
                in_loop.append((future, value, error))
        if in_loop and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_resolve, in_loop)

    def _sweep(self, timeout: float = 10.0) -> None:
        """Whatever is left of the server's group (after a kill of the server alone, say),
        killed; the server reaped."""
        left = wait_gone(group_members(self.pgid), 5.0)  # helpers that end with the server
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            left = wait_gone(left, timeout)
            if left:
                raise ChaosError(f"served target {self.spec}: pids {sorted(left)} survive SIGKILL")
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._exited.wait(timeout)

    def _close_pipes(self) -> None:
        self._outbox.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5.0)
        assert self.proc is not None
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _resolve(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


async def pipelined_traffic(
    target: Any,
    history: Any,
    n: int,
    *,
    prefix: str = "m",
    keys: int = 48,
    lanes: int = 16,
    rate: float | None = None,
    burst: asyncio.Event | None = None,
    work: float | None = None,
) -> None:
    """The list-append workload (``<prefix><i>``, payload ``i``, key ``k<i % keys>``) from
    ``lanes`` submitters at once, at most ``rate`` messages per second (pacing, not
    synchronisation) until ``burst`` is set, then as fast as the target takes them. Lane ``j``
    sends the messages ``i % lanes == j``, one at a time, and owns their keys (``keys`` is a
    multiple of ``lanes``): per-key order is submission order. Each message is recorded in
    ``history`` when its acknowledgement is seen, or as unacknowledged when its submit fails --
    then every lane stops, and ``TargetRefused`` (from the first failure) is raised once all
    have. ``work``: seconds each message keeps its worker busy (payload ``{"sleep": work}``)."""
    from ._target import TargetRefused, submit_one

    if keys % lanes:
        raise ChaosError(f"keys ({keys}) must be a multiple of lanes ({lanes})")
    t0 = time.monotonic()
    failed: list[TargetRefused] = []

    async def lane(j: int) -> None:
        for i in range(j, n, lanes):
            if rate and not (burst and burst.is_set()):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            if failed:
                return
            payload = i if work is None else {"sleep": work}
            if refused := await submit_one(
                target, history, f"k{i % keys}", payload, f"{prefix}{i}"
            ):
                failed.append(refused)
                return

    await asyncio.gather(*(lane(j) for j in range(lanes)))
    if failed:
        raise failed[0]


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """The coroutine (traffic, say) as a task for the block; cancelled if the block ends first."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_outstanding(
    target: Any,
    history: Any,
    at_least: int = 1,
    *,
    flow: int = 200,
    give_up: float = 10.0,
    burst: asyncio.Event | None = None,
) -> int | None:
    """Wait for a moment when a fault can do harm, as the harness sees it, and return how many
    acknowledged messages were outstanding (None: the target cannot tell).

    First, reads of ``target.committed_now()`` (which does not wait; every 20 ms) until some
    messages are committed and at least ``at_least`` others acknowledged (``history``) are not
    yet -- or ``give_up`` s passed (a pool that commits before it acknowledges never has any).
    A read may hold the pool up while its workers catch up, so then the traffic must flow again
    -- as fast as the target takes it, once ``burst`` (``pipelined_traffic``'s) is set: a load
    spike, so that work is in flight even in a pool that keeps up with paced traffic -- until
    ``flow`` more acknowledgements are seen (at most 30 s). Inject the fault at once after:
    nothing that blocks the event loop in between."""
    outstanding = None
    if hasattr(target, "committed_now"):
        deadline = time.monotonic() + give_up
        while True:
            acked = history.acked()
            committed = {mid for ids in (await target.committed_now()).values() for mid in ids}
            outstanding = len(acked - committed) if committed else 0
            if outstanding >= at_least or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
    seen = sum(s.acked for s in history.submits)
    if burst is not None:
        burst.set()
    deadline = time.monotonic() + 30.0
    while sum(s.acked for s in history.submits[seen:]) < flow and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return outstanding


# --- the server: python -m chaos serve SPEC DATA_DIR --options JSON -------------------------------


def serve_main(spec: str, data_dir: str, options: str, stop_timeout: float) -> int:
    """Entry point of ``python -m chaos serve``: 0 after a stop asked for, 128+N after signal N,
    2 for bad arguments (one line on stderr: the cause and the fix), 1 if the target fails."""
    from ._target import load_target
    from .workload import ENV_HARNESS

    # The protocol gets private copies of stdin and stdout (closed across an exec; a process
    # the target forks keeps them, and may outlive the server: the client learns of the
    # server's end from its exit, not the pipe's); fd 0 becomes /dev/null and fd 1 the stderr
    # file, so prints cannot corrupt it. A carried fault never hurts the server itself (in a
    # thread or inline pool the task runs here): it is the harness's process of this side.
    os.environ[ENV_HARNESS] = str(os.getpid())
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        kwargs = json.loads(options)
        if not isinstance(kwargs, dict):
            raise ValueError("not an object")
    except ValueError as e:
        print(f"error: --options {options!r} is not a JSON object ({e}); give e.g. "
              "'{\"workers\": 4}'", file=sys.stderr)  # fmt: skip
        return 2
    try:
        factory = load_target(spec, where="python -m chaos serve")
        target = factory(Path(data_dir), **kwargs)
    except ChaosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TypeError as e:
        print(f"error: {spec}(data_dir, **{kwargs}) failed: {e}; give options the factory "
              "takes", file=sys.stderr)  # fmt: skip
        return 2
    server = _Server(target, proto_in, proto_out, stop_timeout, final_path(Path(data_dir)))
    return asyncio.run(server.run())


def _plain_signals() -> None:
    """In a process the target forks (a ProcessPoolExecutor's worker): not the server's signal
    handling. Inherited, the loop's wakeup fd would carry a SIGTERM sent to the worker back to
    the server, which then stops as if signalled itself -- and the worker would survive the
    SIGTERM its pool sent it. The worker gets Python's defaults, as it would unserved."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def final_path(data_dir: Path) -> Path:
    """Where a server stopped by a signal leaves its target's committed state at the end."""
    return data_dir.parent / f"{data_dir.name}.served.final"


class _Server:
    def __init__(
        self, target: Any, proto_in: int, proto_out: int, stop_timeout: float, final: Path
    ):
        self.target = target
        self.final = final
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.stop_timeout = stop_timeout
        self.replying = True
        self.tasks: set[asyncio.Task[Any]] = set()
        self.signalled = asyncio.Event()
        self.signum = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        os.register_at_fork(after_in_child=_plain_signals)
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self.proto_in, "rb", 0)
        )
        self.out, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self.proto_out, "wb", 0)
        )
        try:
            await self.target.start()
        except Exception as e:
            traceback.print_exc()
            print(f"error: starting the target failed: {type(e).__name__}: {e}", file=sys.stderr)
            await self._stop()
            return 1
        caps = sorted(getattr(self.target, "capabilities", ()))
        has = [name for name in _OPTIONAL if callable(getattr(self.target, name, None))]
        self._send(("ready", {"capabilities": caps, "has": has, "pid": os.getpid()}))
        requests = asyncio.ensure_future(self._requests(reader))
        signalled = asyncio.ensure_future(self.signalled.wait())
        await asyncio.wait({requests, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if self.signum:  # SIGTERM / SIGINT: drain, answer nothing more
            requests.cancel()
            stopped = await self._stop()
            if stopped:
                await self._keep_final()
            await self._flush()
            print(f"stopped by signal {self.signum}", file=sys.stderr)
            return 128 + self.signum if stopped else 1  # 1: its graceful stop failed
        signalled.cancel()
        stop_rid = requests.result()
        ok = await self._stop()
        if stop_rid is not None:  # how the stop went, either way: its exit status says if it failed
            self._send(("ok", stop_rid, _records(self.target)))
        await self._flush()
        return 0 if ok else 1

    async def _keep_final(self) -> None:
        """The target's committed state once stopped, for a harness that can ask no more (an
        in-memory pool's results end with this process): read as any ``committed()`` is, and
        written whole or not at all."""
        try:
            state = dict(await asyncio.wait_for(self.target.committed(), self.stop_timeout))
        except Exception as e:
            print(f"error: committed() after the stop failed: {type(e).__name__}: {e}",
                  file=sys.stderr)  # fmt: skip
            return
        tmp = self.final.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(state))
        os.replace(tmp, self.final)

    def _on_signal(self, signum: int) -> None:
        if not self.signum:
            self.signum = signum
            self.replying = False
            self.signalled.set()

    async def _requests(self, reader: asyncio.StreamReader) -> int | None:
        """Serve requests until ``stop`` (its request id) or the end of stdin (None)."""
        while True:
            try:
                (n,) = _HEADER.unpack(await reader.readexactly(4))
                rid, command, args = pickle.loads(await reader.readexactly(n))
            except asyncio.IncompleteReadError:
                print("the client went away: stopping the target", file=sys.stderr)
                return None
            if command == "stop":
                return rid
            task = asyncio.ensure_future(self._answer(rid, command, args))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, rid: int, command: str, args: tuple[Any, ...]) -> None:
        try:
            if command == "submit":
                await self.target.submit(*args)
                reply: tuple[Any, ...] = ("ack", rid)
            elif command == "records":
                reply = ("ok", rid, _records(self.target))
            else:
                value = getattr(self.target, command)(*args)
                if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                    value = await value
                if command in ("committed", "committed_now"):
                    value = dict(value)
                elif command == "worker_pids":
                    value = list(value)
                reply = ("ok", rid, value)
        except Exception as e:
            kind = "refused" if command == "submit" else "error"
            reply = (kind, rid, f"{type(e).__name__}: {e}")
        self._send(reply)

    def _send(self, reply: tuple[Any, ...]) -> None:
        if not self.replying or self.out.is_closing():
            return
        try:
            frame = _frame(reply)
        except Exception as e:  # a value that does not pickle: say so instead
            frame = _frame(("error", reply[1], f"the answer does not pickle: {e}"))
        self.out.write(frame)

    async def _flush(self) -> None:
        deadline = time.monotonic() + 10.0
        while self.out.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _stop(self) -> bool:
        """``target.stop()``, bounded; past ``stop_timeout``, the target's processes are killed."""
        try:
            await asyncio.wait_for(self.target.stop(), self.stop_timeout)
            ok = True
        except Exception as e:
            traceback.print_exc()
            print(f"error: stopping the target failed: {type(e).__name__}: {e}", file=sys.stderr)
            for proc in descendants(os.getpid()):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            ok = False
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return ok


def _pidfd_or_none(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it has exited); None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _records(target: Any) -> dict[str, Any]:
    return {name: getattr(target, name) for name in RECORDS if hasattr(target, name)}


@contextlib.asynccontextmanager
async def serving(
    spec: str | None, data_dir: str | Path, **options: Any
) -> AsyncIterator[ServedTarget]:
    """``async with serving(spec, data_dir, **options) as target``: a started ``ServedTarget``,
    stopped on the way out (its processes killed if it will not stop); a failure of the block
    is not hidden by one of the stop."""
    target = ServedTarget(spec, data_dir, **options)
    try:
        await target.start()
        yield target
    except BaseException:
        with contextlib.suppress(Exception):
            await target.stop()
        raise
    await target.stop()
