"""Errors of the chaos toolkit, named by who caused them, under one base ``ChaosError``.

``BlastRadiusError`` and ``FailpointError`` are the caller's (a refused target, a bad spec);
``InjectorUnavailable`` is the platform's (no cgroup controller here, no py-spy, ...), and its
message says why and what would make the injector available.
"""

from __future__ import annotations


class ChaosError(Exception):
    """Base of every error raised by ``chaos``."""


class BlastRadiusError(ChaosError, PermissionError):
    """The target is outside what this caller may hurt (pid 1, itself, not a descendant)."""


class FailpointError(ChaosError, ValueError):
    """A failpoint specification is malformed; the message shows the grammar."""


class InjectorUnavailable(ChaosError, OSError):
    """This machine cannot inject this fault; the message says why."""


class ContractError(ChaosError):
    """A target's adapter broke the target contract (e.g. ``worker_pids()`` lists a process that
    is long dead): the harness cannot judge the pool through it. The message says the fix."""
