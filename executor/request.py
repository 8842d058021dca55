"""A Celery request that turns ``revoke(terminate=True)`` into stopping a container.

Celery's thread pool cannot terminate a task (celery#8147), and the job is not a
thread of ours anyway: the supervisor of the job polls :data:`terminations` and kills
the job's container, then reports :class:`tasks.errors.Revoked`.
"""

from __future__ import annotations

import threading

from celery.worker.request import Request


class _Terminations:
    """Thread-safe set of task ids whose containers must be stopped."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        with self._lock:
            self._ids.add(task_id)

    def discard(self, task_id: str) -> None:
        with self._lock:
            self._ids.discard(task_id)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._ids


terminations = _Terminations()


class ContainerRequest(Request):
    """Request whose terminate stops the job's container instead of a process."""

    def terminate(self, pool, signal=None):
        terminations.add(self.id)
