"""``chaosgate [PYTEST ARGS...]``: every scenario, against the project's own target, gated.

Runs ``pytest --pyargs chaos.scenarios --chaos-gate`` in the current directory, so the
project's ``pyproject.toml`` applies (``[tool.chaosgate] target = "mypkg.pool:Target"``, its
seed, report dir, profile and gate settings) and any further pytest argument is passed on
(``--chaos-target``, ``-k``, ``-n auto``, ``-x``...). The scenarios' own files are collected
whatever the project's ``python_files`` says, and their async tests run whatever its
``asyncio_mode``. Exits with pytest's code: the gate's 0, 10 (a weakness), 11 (a harness or
environment error), 12 (bad configuration), or 1 for a test outside the gate.
"""

from __future__ import annotations

import os
import sys

PACKAGE = "chaos.scenarios"
COLLECT = ["-o", "python_files=test_*.py", "-o", "python_functions=test_*"]


def arguments(argv: list[str]) -> list[str]:
    """The pytest command line for ``argv`` (the gate on unless asked otherwise)."""
    gate = [] if "--chaos-gate" in argv or "--no-chaos-gate" in argv else ["--chaos-gate"]
    rest = [a for a in argv if a != "--no-chaos-gate"]
    return ["--pyargs", PACKAGE, *COLLECT, *gate, *rest]


def main(argv: list[str] | None = None) -> int:
    """Become ``python -m pytest ...``: a fresh interpreter, in which pytest imports chaosgate
    itself (so that it can rewrite its asserts) -- this one has imported it already."""
    args = arguments(sys.argv[1:] if argv is None else argv)
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])


if __name__ == "__main__":
    sys.exit(main())
