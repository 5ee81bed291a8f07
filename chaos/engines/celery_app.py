"""The Celery app a ``CeleryTarget`` runs: one task, the list-append workload.

``chaosgate.append(key, message_id, payload)`` hands the payload to ``chaos.workload.apply``
(the workload contract: a payload may sleep, hang, leak, break the channel...) and commits the
message id to the key's list in the store (``chaos.engines._queue.commit``).

The worker (``celery -A chaos.engines.celery_app worker``) and the harness's publisher build
the same app from one JSON configuration (``CHAOSGATE_CELERY`` in the worker's environment):
``broker`` and ``store`` URLs, the queue, and the Celery settings under test.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from ._queue import commit

CONFIG_ENV = "CHAOSGATE_CELERY"
TASK = "chaosgate.append"


def make_app(config: dict[str, Any]) -> Celery:
    app = Celery("chaosgate", broker=config["broker"], set_as_current=False)
    # Retrying the broker connection at startup is Celery's behaviour by default; said
    # explicitly, since leaving it unset is deprecated (a warning in every process).
    app.conf.update(broker_connection_retry_on_startup=True, task_default_queue=config["queue"])
    app.conf.update(config.get("settings", {}))
    store_url = config["store"]
    store: Any = None

    @app.task(name=TASK)
    def append(key: str, message_id: str, payload: Any) -> Any:
        nonlocal store
        import redis

        if store is None:  # one client per process (a forked child makes its own)
            store = redis.Redis.from_url(store_url)
        return commit(store, key, message_id, payload)

    return app


if CONFIG_ENV in os.environ:  # the worker's process: ``celery -A chaos.engines.celery_app``
    app = make_app(json.loads(os.environ[CONFIG_ENV]))
