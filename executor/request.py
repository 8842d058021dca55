"""A Celery request that knows its job's container and its broker message.

Celery's thread pool cannot terminate a task (celery#8147), and the job is not a
thread of ours anyway: ``revoke(terminate=True)`` marks the job in
:data:`terminations`, and its supervisor kills the container and reports
:class:`tasks.errors.Revoked`. The request also records its kombu message in
:data:`messages`, so placement can hand a job back to the head of its queue.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.worker.request import Request


class _Registry:
    """Thread-safe map of task id -> value."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, task_id: str, value: Any = True) -> None:
        with self._lock:
            self._items[task_id] = value

    def pop(self, task_id: str) -> Any:
        with self._lock:
            return self._items.pop(task_id, None)

    def discard(self, task_id: str) -> None:
        self.pop(task_id)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._items


#: Task ids whose containers must be stopped.
terminations = _Registry()
#: Task id -> the kombu message being worked on.
messages = _Registry()


class ContainerRequest(Request):
    """Request whose terminate stops the job's container instead of a process."""

    def execute_using_pool(self, pool, **kwargs):
        messages.add(self.id, self._message)
        return super().execute_using_pool(pool, **kwargs)

    def terminate(self, pool, signal=None):
        terminations.add(self.id)


def hand_back(task_id: str) -> bool:
    """Put the job's message back at the head of its queue; True if it was.

    kombu's ``reject(requeue=True)`` would push it to the tail, losing its turn;
    restoring by tag with ``leftmost=False`` puts it where consumers pop next.
    """
    message = messages.pop(task_id)
    if message is None:
        return False
    qos = getattr(message.channel, "qos", None)
    if qos is None or not hasattr(qos, "restore_by_tag"):
        message.reject(requeue=True)  # a transport without head-restore: tail is all we have
        return True
    qos.restore_by_tag(message.delivery_tag, leftmost=False)
    return True
