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
import sys
import tomllib
from pathlib import Path

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


def shadowing(project: Path, ours: Path) -> list[Path]:
    """The project's own ``chaos`` modules that pytest would import instead of chaosgate's:
    in a ``pythonpath`` entry of its pyproject.toml, which pytest puts first on sys.path."""
    try:
        with open(project / "pyproject.toml", "rb") as f:
            ini = tomllib.load(f).get("tool", {}).get("pytest", {}).get("ini_options", {})
    except (OSError, tomllib.TOMLDecodeError):
        ini = {}
    entries = ini.get("pythonpath", [])
    entries = entries.split() if isinstance(entries, str) else entries
    found = []
    for entry in entries:
        for module in (project / entry / "chaos", project / entry / "chaos.py"):
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
            "chaosgate. Rename it, or leave its directory out of [tool.pytest.ini_options] "
            "pythonpath and make the project importable another way (pip install -e .).",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    os.execv(sys.executable, [sys.executable, "-P", "-c", PYTEST, *args])
