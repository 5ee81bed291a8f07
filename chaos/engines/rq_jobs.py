"""The job an ``RQTarget``'s workers run: the list-append workload (``chaos.engines._queue``).

``append(key, message_id, payload)`` runs in RQ's work horse (a process forked per job): it
connects to the store named in ``CHAOSGATE_STORE`` and commits there.
"""

from __future__ import annotations

import os
from typing import Any

from ._queue import commit

STORE_ENV = "CHAOSGATE_STORE"


def append(key: str, message_id: str, payload: Any) -> Any:
    import redis

    return commit(redis.Redis.from_url(os.environ[STORE_ENV]), key, message_id, payload)
