"""``chaosgate [PYTEST ARGS...]``: every scenario, against the project's own target, gated.

Runs ``pytest --pyargs chaos.scenarios --chaos-gate`` in the current directory, so the
project's ``pyproject.toml`` applies (``[tool.chaosgate] target = "mypkg.pool:Target"``, its
seed, report dir, profile and gate settings) and any further pytest argument is passed on
(``--chaos-target``, ``-k``, ``-n auto``, ``-x``...). The scenarios' own files are collected
whatever the project's ``python_files`` says, and their async tests run whatever its
``asyncio_mode``. Exits with pytest's code: the gate's 0, 10 (a weakness), 11 (a harness or
environment error), 12 (bad configuration), or 1 for a test outside the gate. The project's
directory comes last on sys.path; a module of its own named ``chaos`` in a ``pythonpath`` entry
of its pytest settings (which pytest puts first) would shadow chaosgate's package: refused, with
exit 12 and the fix.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ._gate import EXIT_CONFIG

PACKAGE = "chaos.scenarios"
COLLECT = ["-o", "python_files=test_*.py", "-o", "python_functions=test_*"]


def arguments(argv: list[str]) -> list[str]:
    """The pytest command line for ``argv`` (the gate on unless asked otherwise)."""
    gate = [] if "--chaos-gate" in argv or "--no-chaos-gate" in argv else ["--chaos-gate"]
    rest = [a for a in argv if a != "--no-chaos-gate"]
    return ["--pyargs", PACKAGE, *COLLECT, *gate, *rest]


# ``python -m pytest`` with the project's directory last on sys.path, not first (``-P``): a
# project's own module named ``chaos`` then cannot shadow chaosgate's package.
PYTEST = "import os, sys, pytest; sys.path.append(os.getcwd()); sys.exit(pytest.main())"


def pythonpath(project: Path) -> list[Path]:
    """The ``pythonpath`` entries of the configuration pytest would take when run in
    ``project`` -- found by pytest's own lookup (its file names, their order, the walk up to
    parent directories), relative to that file; none if that lookup is not to be had."""
    try:
        from _pytest.config.findpaths import locate_config  # not public: guarded

        found = locate_config(project, [])
        inifile, config = found[1], found[2]
        value: Any = config.get("pythonpath")  # a str, a list, or pytest 9's ConfigValue
    except Exception:  # another pytest's internals: no check rather than a wrong one
        return []
    if inifile is None or value is None:
        return []
    value = getattr(value, "value", value)  # pytest 9: a ConfigValue
    entries = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return [inifile.parent / entry for entry in entries]


def shadowing(project: Path, ours: Path) -> list[Path]:
    """The project's own ``chaos`` modules that pytest would import instead of chaosgate's:
    in a ``pythonpath`` entry of its pytest configuration, which pytest puts first on
    sys.path."""
    found = []
    for entry in pythonpath(project):
        for module in (entry / "chaos", entry / "chaos.py"):
            if module.exists() and module.resolve() != ours.resolve():
                found.append(module)
    return found


def main(argv: list[str] | None = None) -> int:
    """Become pytest: a fresh interpreter, in which pytest imports chaosgate itself (so that
    it can rewrite its asserts) -- this one has imported it already."""
    args = arguments(sys.argv[1:] if argv is None else argv)
    if found := shadowing(Path.cwd(), Path(__file__).parent):
        print(
            f"chaosgate: {found[0]} is a module of this project named as chaosgate's own "
            "package, and pytest's pythonpath puts it first: it would be imported instead of "
            "chaosgate. Rename it, or leave its directory out of pytest's pythonpath setting "
            "and make the project importable another way (pip install -e .).",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    os.execv(sys.executable, [sys.executable, "-P", "-c", PYTEST, *args])
