"""The task a ``DaskTarget``'s workers run: the list-append workload (``chaos.engines._queue``).

``append(key, message_id, payload, store_url)`` marks the message running, hands the payload to
``chaos.workload.apply`` and commits the id to the key's list in the store -- a Redis outside
every worker, which the harness reads. One store client per worker process.
"""

from __future__ import annotations

from typing import Any

from ._queue import commit

_stores: dict[str, Any] = {}


def append(key: str, message_id: str, payload: Any, store_url: str) -> Any:
    import redis

    store = _stores.get(store_url)
    if store is None:
        store = _stores[store_url] = redis.Redis.from_url(store_url)
    return commit(store, key, message_id, payload)
