"""Errors of the worker pool, named by who caused the failure.

``PoolError`` is the base of them all. Errors caused by the caller (bad arguments, a closed pool,
an unusable data dir) derive from ``UsageError``; errors caused by an outside event (a worker
killed, a restart limit hit) derive from ``PoolBroken``. The underlying error, when there is one,
is kept in ``__cause__``.
"""

from __future__ import annotations


class PoolError(Exception):
    """Base of every error raised by ``system``."""


class UsageError(PoolError, ValueError):
    """The caller asked for something the pool cannot do; the message says how to fix it."""


class DataDirError(UsageError):
    """The data dir is missing, unusable, or was made with incompatible settings."""


class PayloadError(UsageError, TypeError):
    """A payload was refused at submit (e.g. it cannot be pickled); nothing was written."""


class PoolClosed(UsageError):
    """The caller closed the pool (or is closing it); no new work is accepted."""


class PoolBroken(PoolError):
    """An outside event left the pool unable to go on (e.g. the restart intensity was exceeded)."""


class WorkerLost(PoolBroken):
    """A worker died while a request (a query, a drain) was waiting on it."""


class Fenced(PoolError):
    """A worker tried to commit partitions that a newer worker has claimed; it must stop."""
