"""A failed scenario's message, read back from pytest's failure text (its ``longreprtext``, which
the report keeps as ``failure``).

Most of that text is source code: the test's, then chaosgate's own frames (the whole of
``Scenario.judge``). The message is elsewhere, and pytest writes it in one of three shapes:

- lines marked ``E   `` under the frame that raised (the last such block is the exception
  raised; earlier blocks are its causes);
- a native traceback, as pytest prints exception groups (Hypothesis' ``FlakyFailure``): a
  ``|`` gutter, ``+-+---- 1 ----`` borders, and each exception's message after its frames;
- plain text (``pytest.fail(..., pytrace=False)``, a collection error): all of it is message.

``message`` gives the message's lines (borders and blank lines dropped); ``one_line`` the first
meaningful one, with any header it sits under ("SLO breached:") joined to it; ``cut`` shortens
a line for showing.
"""

from __future__ import annotations

import re

RULES = set("-=+_~*#.|│─━═┄┈┌┐└┘├┤┬┴┼╭╮╰╯")  # what borders are drawn with
GUTTER = re.compile(r"^\s*\| ?")  # the left margin of an exception group's tracebacks
TRACEBACK = re.compile(r"\+? ?(Exception Group )?Traceback \(most recent call last\):")
GROUP = re.compile(r"\(\d+ sub-exceptions?\)$")  # "ExceptionGroup: ... (2 sub-exceptions)"
CHAINED = ("The above exception was", "During handling of the above exception")


def message(text: str | None) -> list[str]:
    """The message lines of a failure text, without borders or blank lines."""
    lines = (text or "").splitlines()
    lines = _last_marked_block(lines) or lines
    if any(TRACEBACK.match(GUTTER.sub("", line).strip()) for line in lines):
        lines = _native_messages(lines)
    lines = [_unruled(line) for line in _dedent(lines)]
    return [line for line in lines if line.strip() and not is_border(line)]


def is_border(line: str) -> bool:
    """A rule drawn across the text ("+-+---- 1 ----", "─────", "_ _ _ _"), not a message."""
    rule = re.sub(r"\s\d+\s", "", line).replace(" ", "")
    return len(rule) >= 3 and set(rule) <= RULES


def _unruled(line: str) -> str:
    """The header of a table: "AssertionError: +-----+" reads "AssertionError:"."""
    name, colon, rest = line.partition(": ")
    return f"{name}:" if colon and is_border(rest) and name.isidentifier() else line


def one_line(text: str | None, limit: int = 300) -> str:
    """The failure in one line: its first meaningful line, headers ("SLO breached:") joined to
    it; an exception group's own summary gives way to the first exception it holds."""
    lines = [" ".join(line.strip("|│ ").split()) for line in message(text)]
    lines = [line for line in lines if not GROUP.search(line)] or lines
    taken: list[str] = []
    for line in lines:
        taken.append(line)
        if not line.endswith(":"):
            break
    return cut(" ".join(taken) or "no detail", limit)


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, an ellipsis where it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _last_marked_block(lines: list[str]) -> list[str]:
    blocks: list[list[str]] = []
    previous = False
    for line in lines:
        marked = line.startswith("E ") or line == "E"
        if marked and not previous:
            blocks.append([])
        if marked:
            blocks[-1].append(line[1:])
        previous = marked
    return blocks[-1] if blocks else []


def _native_messages(lines: list[str]) -> list[str]:
    """Each exception's message in a native traceback: what follows its last frame."""
    found: list[str] = []
    in_frames = False
    for raw in lines:
        line = GUTTER.sub("", raw).rstrip()
        stripped = line.strip()
        if TRACEBACK.match(stripped):
            in_frames = True
        elif in_frames and (line.startswith("  File ") or line.startswith("    ")):
            continue  # a frame, its source line, its ~~^^ markers
        elif not stripped or stripped.startswith(CHAINED) or is_border(line):
            in_frames = False
        elif in_frames and line[:1] not in ("", " "):
            in_frames = False
            found.append(line)  # "AssertionError: SLO breached:"
        elif not in_frames:
            found.append(line)  # the message's further lines
    return found


def _dedent(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    margin = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return [line[margin:] for line in lines]
