"""A small real target process for the chaos tests: it reads commands on stdin, answers on stdout.

thread          start (and join) one thread: "ok" or "RuntimeError: ..."
hog N           start up to N idle threads: "started K" (and "refused: ..." if it was)
alloc MB        allocate and touch MB: "ok" or "MemoryError"
free            drop what alloc kept: "ok"
deadlock        a thread named "deadlocked" blocks forever on a lock: "ok"
recv FD         read from socket FD until EOF or error: "EOF" / "ConnectionResetError" ...
send FD         write to socket FD until it fails: "BrokenPipeError" ...
selfpipe        an event loop's self-pipe: a socket pair, one end the signal wakeup fd, SIGUSR1
                handled: "WAKEUP_FD READ_FD"
woken           read a byte from the self-pipe: the signal number written there, or "EOF"
failpoint NAME  call chaos.failpoint(NAME) in a thread named "site": "ok" or the exception
connect H P     open a TCP connection to host H port P, kept: "connected"
recv-connected  read from that connection until EOF or error: "EOF" / "ConnectionResetError"
"""

import os
import signal
import socket
import sys
import threading

KEEP: list[bytearray] = []
SELF_PIPE: list[socket.socket] = []
HOGS: list[threading.Thread] = []
RELEASE = threading.Event()
HOGGING: list = []
CONNECTED: list[socket.socket] = []


def run(cmd: str, *args: str) -> str:
    if cmd == "thread":
        try:
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
            return "ok"
        except RuntimeError as e:
            return f"RuntimeError: {e}"
    if cmd == "hog":
        started = 0
        for _ in range(int(args[0])):
            t = threading.Thread(target=RELEASE.wait, daemon=True)
            try:
                t.start()
            except RuntimeError as e:
                return f"started {started} refused: {e}"
            HOGS.append(t)
            started += 1
        return f"started {started}"
    if cmd == "hogging":
        from chaos import hogging_threads

        HOGGING.append(hogging_threads(int(args[0])))
        hog = HOGGING[-1].__enter__()
        refused = f" refused: {hog.refused}" if hog.refused else ""
        return f"held {len(hog.threads)}{refused}"
    if cmd == "release":
        HOGGING.pop().__exit__(None, None, None)
        return "ok"
    if cmd == "alloc":
        try:
            KEEP.append(bytearray(int(args[0]) * 2**20))
            return "ok"
        except MemoryError:
            return "MemoryError"
    if cmd == "free":
        KEEP.clear()
        return "ok"
    if cmd == "deadlock":
        lock = threading.Lock()
        lock.acquire()

        def deadlocked() -> None:
            lock.acquire()  # blocks forever: nobody releases it

        threading.Thread(target=deadlocked, name="deadlocked", daemon=True).start()
        return "ok"
    if cmd == "connect":
        CONNECTED.append(socket.create_connection((args[0], int(args[1])), timeout=10))
        return "connected"
    if cmd == "recv-connected":
        try:
            while CONNECTED[-1].recv(65536):
                pass
            return "EOF"
        except OSError as e:
            return type(e).__name__
    if cmd in ("recv", "send"):
        sock = socket.socket(fileno=int(args[0]))
        try:
            if cmd == "recv":
                while sock.recv(65536):
                    pass
                return "EOF"
            while True:
                sock.send(b"x" * 65536)
        except OSError as e:
            return type(e).__name__
        finally:
            sock.detach()
    if cmd == "selfpipe":
        SELF_PIPE[:] = socket.socketpair()
        SELF_PIPE[0].setblocking(False)
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.set_wakeup_fd(SELF_PIPE[0].fileno())
        return f"{SELF_PIPE[0].fileno()} {SELF_PIPE[1].fileno()}"
    if cmd == "woken":
        got = SELF_PIPE[1].recv(1)
        return str(got[0]) if got else "EOF"
    if cmd == "failpoint":
        from chaos import failpoint

        result: list[str] = []

        def site() -> None:
            try:
                result.append(repr(failpoint(args[0])))
            except BaseException as e:
                result.append(f"{type(e).__name__}: {e}")

        t = threading.Thread(target=site, name="site", daemon=True)
        t.start()
        t.join(float(args[1]) if len(args) > 1 else None)
        return result[0] if result else "still running"
    return f"unknown command {cmd!r}"


def main() -> None:
    print("ready", os.getpid(), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(run(*line.split()), flush=True)


if __name__ == "__main__":
    main()
