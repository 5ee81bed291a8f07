"""Targets that raise the exceptions a broken adapter can raise, for the gate's containment tests:
an in-process pool (no workers: each message committed at once) whose ``submit`` raises after
``AFTER`` messages, and whose other calls raise too once it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AFTER = 25  # messages acknowledged before the target starts raising


class Recursive(Exception):
    def __init__(self) -> None:
        super().__init__("its cause is itself")
        self.__cause__ = self


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class NotAnException(BaseException):
    """A BaseException, not an Exception: escapes ``except Exception``."""


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


ERRORS: dict[str, Any] = {
    "Recursive": Recursive,
    "BadStr": BadStr,
    "NotAnException": NotAnException,
    "DeepRecursion": lambda: _recurse(0),  # raises RecursionError from deep in a stack
}


class Raising:
    capabilities = frozenset()
    error: Any = None

    def __init__(self, data_dir: str | Path, **_: Any) -> None:
        self.lists: dict[str, list[str]] = {}
        self.n = 0

    def _fail(self) -> None:
        if self.n >= AFTER:
            raise type(self).error()

    async def start(self) -> None:
        pass

    async def submit(self, key: str, payload: Any, id: str) -> None:
        self._fail()
        self.n += 1
        self.lists.setdefault(key, []).append(id)

    def worker_pids(self) -> list[int]:
        self._fail()
        return []

    async def committed(self) -> dict[str, list[str]]:
        self._fail()
        return {k: list(v) for k, v in self.lists.items()}

    async def stop(self) -> None:
        pass


for _name, _error in ERRORS.items():
    globals()[_name] = type(_name, (Raising,), {"error": staticmethod(_error)})
