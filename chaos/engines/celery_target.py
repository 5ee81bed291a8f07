"""Celery as a target: a real ``celery worker`` (prefork) on a real Redis broker.

``CeleryTarget(data_dir, workers=2, config="defaults")`` runs ``celery -A
chaos.engines.celery_app worker --pool=prefork --concurrency=N`` on a broker and a store of its
own (``chaos.engines._queue``: the supervisor, the evidence). Each message is published with
``send_task`` (task id = message id), acknowledged when the publish returns. The
configurations a team would choose (``CONFIGS``):

- ``defaults``: Celery's own -- a task is acknowledged to the broker as it starts;
- ``acks_late``: acknowledged when it ends (``task_acks_late``);
- ``acks_late+reject``: and a task whose worker process died is given back to the broker
  (``task_reject_on_worker_lost``);

each also with ``-vt``: a ``visibility_timeout`` of ``SHORT_VT`` s instead of an hour, and the
broker's unacknowledged messages looked at every ``SHORT_VT`` s instead of every 100 s
(kombu's ``unacked_restore_interval`` x ``unacked_restore_throttle``). Worker pids are the
prefork children; ``pid`` is the worker's main process.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import ChaosError
from ._queue import QUEUE, QueueTarget

SHORT_VT = 5  # seconds: the -vt variants' visibility timeout (and restore sweep)
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "acks_late": {"task_acks_late": True},
    "acks_late+reject": {"task_acks_late": True, "task_reject_on_worker_lost": True},
}
for _name, _settings in list(CONFIGS.items()):
    CONFIGS[f"{_name}-vt"] = {
        **_settings,
        "broker_transport_options": {
            "visibility_timeout": SHORT_VT,
            "unacked_restore_interval": SHORT_VT,
            "unacked_restore_throttle": 1,
        },
    }


class CeleryTarget(QueueTarget):
    name = "celery"
    ready_marker = b" ready."
    not_applicable = {
        "pipe_outside": "its prefork children talk to the worker over pipes, not sockets (the "
        "worker's broker connection: broker_link)",
    }

    def __init__(
        self, data_dir: Any, workers: int = 2, *, config: str = "defaults", **options: Any
    ):
        if config not in CONFIGS:
            raise ChaosError(
                f"unknown Celery configuration {config!r}: one of {', '.join(CONFIGS)}"
            )
        self.config = config
        if "collect_timeout" not in options and config.endswith("-vt"):
            options["collect_timeout"] = 2 * SHORT_VT + 5.0  # a timeout and a sweep: back
        super().__init__(data_dir, workers, **options)

    @property
    def visibility_timeout(self) -> float:
        """Seconds before the broker gives an unacknowledged message to a worker again."""
        options = CONFIGS[self.config].get("broker_transport_options", {})
        return float(options.get("visibility_timeout", 3600))

    def _settings(self) -> dict[str, Any]:
        assert self.broker is not None
        return {"broker": self.broker.url, "store": self.store.url, "queue": QUEUE,
                "settings": CONFIGS[self.config]}  # fmt: skip

    def _environment(self) -> dict[str, str]:
        from .celery_app import CONFIG_ENV

        return {CONFIG_ENV: json.dumps(self._settings())}

    def _command(self, host: str | None = None) -> list[str]:
        assert self.broker is not None
        return [
            "celery", "-A", "chaos.engines.celery_app", "worker", "--pool=prefork",
            f"--concurrency={1 if host else self.workers}", "--without-heartbeat",
            "--without-gossip", "--without-mingle", "--loglevel=INFO", f"--queues={QUEUE}",
            f"--hostname=chaosgate-{self.broker.port}@{host or 'localhost'}",
        ]  # fmt: skip

    def _connect(self) -> None:
        from .celery_app import make_app

        self.app = make_app(self._settings())

    def _publish(self, key: str, message_id: str, payload: Any) -> None:
        from .celery_app import TASK

        self.app.send_task(TASK, args=[key, message_id, payload], task_id=message_id)

    def _placed(self) -> dict[str, str]:
        """The queue and kombu's unacknowledged set, read in one transaction (a message
        moving from one to the other is seen in one of them)."""
        pipe = self._broker.pipeline()
        pipe.lrange(QUEUE, 0, -1)
        pipe.hvals("unacked")
        queued, unacked = pipe.execute()
        placed = {}
        for raw in queued:
            placed[_task_id(json.loads(raw))] = "queued"
        for raw in unacked:
            placed.setdefault(_task_id(json.loads(raw)[0]), "unacknowledged")
        return placed

    def worker_pids(self) -> list[int]:
        pids = []
        for service in self.services:
            for child in service.children():
                service.note(child.pid)
                pids.append(child.pid)
        return pids


def _task_id(message: dict[str, Any]) -> str:
    return str(message.get("headers", {}).get("id", "?"))
