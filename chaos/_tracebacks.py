"""Tracebacks as text, safe to format in any thread.

Python 3.11's ``traceback`` module underlines the failing expression of each frame (the ``^^^``
carets), and finds it with ``ast.parse``. The ``ast`` module's recursion counter is shared by all
threads in 3.11, so a parse in one thread while another thread parses (pytest rewriting or
formatting, in the main thread) corrupts it, and a later parse fails with ``SystemError: AST
constructor recursion depth mismatch`` (CPython gh-106905, fixed in 3.12). Frames stripped of
their column positions are formatted without carets, hence without ``ast``.
"""

from __future__ import annotations

import sys
import threading
import traceback


def format_plain(error: BaseException, limit: int | None = None) -> str:
    """``error``'s traceback, its chained causes included, without carets (see the module doc)."""
    te = traceback.TracebackException(
        type(error), error, error.__traceback__, limit=limit, max_group_width=5, max_group_depth=3
    )
    _strip(te, set())
    return "".join(te.format(chain=True))


def format_stack_plain(frames: traceback.StackSummary) -> str:
    return "".join(_plain(frames).format())


def _plain(stack: traceback.StackSummary) -> traceback.StackSummary:
    return traceback.StackSummary.from_list(
        [traceback.FrameSummary(f.filename, f.lineno, f.name, line=f.line) for f in stack]
    )


def _strip(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:  # a cause that is itself, or a cycle
        return
    seen.add(id(te))
    te.stack = _plain(te.stack)
    for nested in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if nested is not None:
            _strip(nested, seen)


def carets_in_main_thread_only() -> None:
    """Make every traceback formatted outside the main thread skip its carets (Python < 3.12),
    so that no library formatting a traceback in a thread -- asyncio logging a task's error, a
    thread's excepthook -- parses with ``ast`` while the main thread does. Idempotent."""
    find = getattr(traceback, "_extract_caret_anchors_from_line_segment", None)
    if sys.version_info >= (3, 12) or find is None or getattr(find, "_main_only", False):
        return

    def main_only(segment: str) -> object:
        if threading.current_thread() is not threading.main_thread():
            return None  # no carets: traceback prints the frame's line alone
        return find(segment)

    main_only._main_only = True  # type: ignore[attr-defined]
    traceback._extract_caret_anchors_from_line_segment = main_only  # type: ignore[attr-defined]
