"""Task queues as targets, on a real Redis: ``CeleryTarget``, ``RQTarget`` (``pip install
'chaosgate[engines]'``, and Debian's ``redis-server``), and ``RedisServer``, the Redis a test
starts on a free loopback port. See ``scenarios/test_engines.py`` for the matrix they run."""

from __future__ import annotations

from typing import Any

from .redis_server import RedisMissing, RedisServer

__all__ = ["CeleryTarget", "RQTarget", "RedisMissing", "RedisServer"]


def __getattr__(name: str) -> Any:  # the engines' own packages, imported when asked for
    if name == "CeleryTarget":
        from .celery_target import CeleryTarget

        return CeleryTarget
    if name == "RQTarget":
        from .rq_target import RQTarget

        return RQTarget
    raise AttributeError(f"module 'chaos.engines' has no attribute {name!r}")
