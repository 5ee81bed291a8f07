"""Python 3.11's ast state is shared by threads: tracebacks formatted in one thread (their carets
come from ast.parse) while the main thread parses, with the garbage collector running finalizers,
corrupt it -- "SystemError: AST constructor recursion depth mismatch". Run as a script:
``python ast_race.py SECONDS [patched]``; prints the number of SystemErrors seen."""

import ast
import gc
import sys
import threading
import time
import traceback


class Finalized:
    def __del__(self) -> None:
        sum(range(50))  # Python code in a finalizer: the GIL can change hands mid-conversion


def main(seconds: float, patched: bool) -> None:
    if patched:
        from chaos._tracebacks import carets_in_main_thread_only

        carets_in_main_thread_only()
    source = open(ast.__file__).read()
    try:
        {"a": 1}["b"]
    except KeyError as e:
        error = e
    stop = threading.Event()

    def format_in_a_thread() -> None:
        while not stop.is_set():
            "".join(traceback.format_exception(error))

    def make_garbage() -> None:
        while not stop.is_set():
            for _ in range(1000):
                a, b = Finalized(), Finalized()
                a.other, b.other = b, a
            time.sleep(0)

    gc.set_threshold(50, 5, 5)
    threads = [threading.Thread(target=format_in_a_thread), threading.Thread(target=make_garbage)]
    for t in threads:
        t.start()
    bad, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ast.parse(source)
        except SystemError:
            bad += 1
    stop.set()
    for t in threads:
        t.join()
    print(bad)


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2:] == ["patched"])
