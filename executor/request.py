"""A Celery request that knows its job's container and its broker message.

Celery's thread pool cannot terminate a task (celery#8147), and the job is not a
thread of ours anyway: ``revoke(terminate=True)`` marks the job in
:data:`terminations`, and its supervisor kills the container and reports
:class:`tasks.errors.Revoked`. The request also records its kombu message in
:data:`messages`, so placement can hand a job back to the head of its queue.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.worker.request import Request

from tasks import transport
from tasks.failure import failure_text


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

    def get(self, task_id: str) -> Any:
        with self._lock:
            return self._items.get(task_id)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._items)

    def discard(self, task_id: str) -> None:
        self.pop(task_id)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._items


#: Task ids whose containers must be stopped.
terminations = _Registry()
#: Task id -> the kombu message this agent holds (received, not yet settled).
#: Every message here has its lease renewed by the agent's heartbeat.
messages = _Registry()


class ContainerRequest(Request):
    """Request whose terminate stops the job's container instead of a process."""

    def __init__(self, message, *args, **kwargs):
        # Celery's strategy subclasses this class and replaces execute_using_pool,
        # so the message is recorded here.
        super().__init__(message, *args, **kwargs)
        messages.add(self.id, message)

    def terminate(self, pool, signal=None):
        terminations.add(self.id)

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        """Celery's failure handling, with the job's own traceback in the task-failed event."""
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        text = failure_text(error)
        if text is not None:
            exc_info.traceback = text
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def settle(task_id: str, client) -> None:
    """Forget the message and remove it from kombu's unacked set ourselves.

    Called after the task's outcome is stored. Celery acks too, but through the
    consumer's channel, which may be a dead connection after a broker restart;
    a message left in ``unacked`` would be requeued and run again.
    """
    message = messages.pop(task_id)
    if message is None or not hasattr(message.channel, "unacked_key"):
        return
    pipe = client.pipeline()
    pipe.zrem(message.channel.unacked_index_key, message.delivery_tag)
    pipe.hdel(message.channel.unacked_key, message.delivery_tag)
    pipe.execute()


def renew(client, now: float) -> int:
    """Renew the lease of every held message; return how many were renewed.

    A lease is the message's score in kombu's ``unacked_index``: kombu requeues
    entries older than the visibility timeout. ``XX`` never resurrects an entry
    that was acknowledged meanwhile.
    """
    held = messages.snapshot()
    if not held:
        return 0
    pipe = client.pipeline(transaction=False)
    for message in held.values():
        key = getattr(message.channel, "unacked_index_key", None)
        if key:
            pipe.zadd(key, {message.delivery_tag: now}, xx=True)
    pipe.execute()
    return len(held)


def hand_back(task_id: str) -> bool:
    """Put a copy of the job's message at the head of its queue; True if it was.

    The caller then acknowledges the original. kombu's ``reject(requeue=True)``
    would push it to the tail, losing its turn, and restoring by tag would reuse
    the delivery tag, so the original's ack could cancel the copy's delivery.
    Pushing first means a crash in between duplicates the message, never loses it.
    """
    message = messages.get(task_id)
    if message is None:
        return False
    keys = queue_keys(message)
    if keys is None:
        message.reject(requeue=True)  # not kombu's Redis transport: the tail is all we have
        return True
    payload = message_copy(message)
    with message.channel.conn_or_acquire() as client:
        with client.pipeline() as pipe:
            for key in keys:
                transport.ring(pipe.rpush(key, json.dumps(payload)), transport.queue_of(key))
            pipe.execute()
    return True


def message_copy(message) -> dict:
    """The raw broker payload of ``message`` with a fresh delivery tag, not redelivered."""
    payload = json.loads(json.dumps(message._raw))
    payload["properties"]["delivery_tag"] = uuid.uuid4().hex
    payload["headers"].pop("redelivered", None)
    payload["properties"].get("delivery_info", {}).pop("redelivered", None)
    return payload


def queue_keys(message) -> list[str] | None:
    """The Redis list keys ``message`` is delivered from (None if not kombu's Redis)."""
    channel = message.channel
    if not hasattr(channel, "_q_for_pri"):
        return None
    info = message.delivery_info or {}
    priority = channel._get_message_priority(message._raw, reverse=False)
    return [channel._q_for_pri(queue, priority)
            for queue in channel._lookup(info.get("exchange"), info.get("routing_key"))]


def requeue_payload(task_id: str) -> tuple[dict | None, str | None]:
    """The message to keep with a dead job, and the queue key to requeue it on."""
    message = messages.get(task_id)
    if message is None:
        return None, None
    keys = queue_keys(message)
    return message_copy(message), (keys[0] if keys else None)
