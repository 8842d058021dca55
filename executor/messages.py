"""Every transition of a job's broker message on the agent, in one place.

A message the take recorded in kombu's ``unacked`` hash is *held* by this agent
(:class:`HeldMessages`) from the moment Celery builds its request until the job's
outcome is stored. While held, its lease is renewed; then it is settled (removed
from ``unacked``), or handed back to the head of its queue as a copy, or kept with
its dead letter as a payload to requeue. A delivery the agent must not run (its job
already ended, or a newer retry was already sent) is dropped; a redelivery after a
lost host is counted.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from celery.states import READY_STATES

from tasks import keys, transport
from tasks.durable import Durability

#: The field of a task's request holding the delivery tag of its message.
DELIVERY_TAG = "jobyard_delivery_tag"


class TaskIds:
    """A thread-safe set of task ids."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        """Add ``task_id``."""
        with self._lock:
            self._ids.add(task_id)

    def discard(self, task_id: str) -> None:
        """Remove ``task_id`` if present."""
        with self._lock:
            self._ids.discard(task_id)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._ids


class HeldMessages:
    """Task id -> the kombu messages this agent holds (received, not yet settled), by delivery tag. Thread-safe.

    Every message here has its lease renewed by the agent's heartbeat. One job can
    have two deliveries here at once (a stale first delivery, back from its lease,
    beside the retry running): each transition names the delivery it ends by its
    tag; without a tag it means the job's latest delivery.
    """

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, task_id: str, message: Any) -> None:
        """Hold ``message``, a delivery of ``task_id``."""
        with self._lock:
            self._items.setdefault(task_id, {})[message.delivery_tag] = message

    def _pop(self, task_id: str, tag: str | None) -> Any:
        """Remove and return a delivery of ``task_id`` (``tag``, or the latest); the lock is held."""
        deliveries = self._items.get(task_id)
        if not deliveries:
            return None
        message = deliveries.pop(next(reversed(deliveries)) if tag is None else tag, None)
        if not deliveries:
            del self._items[task_id]
        return message

    def discard(self, task_id: str, tag: str | None = None) -> None:
        """Stop holding a delivery of ``task_id`` without settling it: its lease lapses."""
        with self._lock:
            self._pop(task_id, tag)

    def get(self, task_id: str, tag: str | None = None) -> Any:
        """The message held for ``task_id`` (delivery ``tag``, or the latest), or None."""
        with self._lock:
            deliveries = self._items.get(task_id) or {}
            if tag is not None:
                return deliveries.get(tag)
            return deliveries[next(reversed(deliveries))] if deliveries else None

    def task_ids(self) -> set[str]:
        """The task ids held now."""
        with self._lock:
            return set(self._items)

    def renew(self, client, now: float) -> int:
        """Renew the lease of every held message; return how many were renewed.

        A lease is the message's score in kombu's ``unacked_index``: kombu requeues
        entries older than the visibility timeout. ``XX`` never resurrects an entry
        that was acknowledged meanwhile.
        """
        with self._lock:
            held = [message for deliveries in self._items.values() for message in deliveries.values()]
        if not held:
            return 0
        pipe = client.pipeline(transaction=False)
        for message in held:
            key = getattr(message.channel, "unacked_index_key", None)
            if key:
                pipe.zadd(key, {message.delivery_tag: now}, xx=True)
        pipe.execute()
        return len(held)

    def settle(self, task_id: str, client, tag: str | None = None,
               durability: Durability = Durability()) -> None:
        """Forget a delivery of ``task_id`` and remove it from kombu's unacked set ourselves.

        Called after the task's outcome is stored. Celery acks too, but through the
        consumer's channel, which may be a dead connection after a broker restart;
        a message left in ``unacked`` would be requeued and run again. With durable
        writes it raises :class:`tasks.errors.WriteNotDurable` unless replicas hold the
        settle (a redelivery after a failover is then dropped: its outcome is stored).
        ``tag`` names the delivery to settle; without it, the latest held.
        """
        with self._lock:
            message = self._pop(task_id, tag)
        if message is None or not hasattr(message.channel, "unacked_key"):
            return
        pipe = durability.pipeline(client)
        pipe.zrem(message.channel.unacked_index_key, message.delivery_tag)
        pipe.hdel(message.channel.unacked_key, message.delivery_tag)
        durability.execute(pipe, client, f"settling {task_id}")

    def let_go(self, task_id: str, tag: str | None = None) -> None:
        """Stop holding a delivery of ``task_id`` and free its prefetch slot; its record stays in ``unacked``.

        The lease sweep then delivers it again (:meth:`executor.channel.TakingQoS.release`).
        """
        with self._lock:
            message = self._pop(task_id, tag)
        if message is not None:
            free_slot(message)

    def hand_back(self, task_id: str) -> bool:
        """Put a copy of the job's message at the head of its queue; True if it was.

        The caller then acknowledges the original. kombu's ``reject(requeue=True)``
        would push it to the tail, losing its turn, and restoring by tag would reuse
        the delivery tag, so the original's ack could cancel the copy's delivery.
        Pushing first means a crash in between duplicates the message, never loses it.
        """
        message = self.get(task_id)
        if message is None:
            return False
        lists = queue_keys(message)
        if lists is None:
            message.reject(requeue=True)  # not kombu's Redis transport: the tail is all we have
            return True
        payload = fresh_copy(message._raw)
        with message.channel.conn_or_acquire() as client:
            with client.pipeline() as pipe:
                for key in lists:
                    transport.ring(pipe.rpush(key, json.dumps(payload)), transport.queue_of(key))
                pipe.execute()
        return True

    def requeue_payload(self, task_id: str) -> tuple[dict | None, str | None]:
        """The message to keep with a dead job, and the queue key to requeue it on."""
        message = self.get(task_id)
        if message is None:
            return None, None
        lists = queue_keys(message)
        return fresh_copy(message._raw), (lists[0] if lists else None)

    def retry_headers(self, task_id: str, memory_scale: float, scale_header: str) -> dict[str, Any]:
        """The jobyard headers a retry of ``task_id`` carries on (never the seal), with its memory scale."""
        message = self.get(task_id)
        headers = dict(getattr(message, "headers", None) or {})
        kept = {k: v for k, v in headers.items() if k.startswith("jobyard_") and k != "jobyard_seal"}
        kept[scale_header] = memory_scale
        return kept


def delivery_tag(request: Any) -> str | None:
    """The delivery tag of the message a task request came in (:class:`executor.request.ContainerRequest`)."""
    return getattr(request, DELIVERY_TAG, None)


def free_slot(message) -> None:
    """Free ``message``'s prefetch slot without removing its record (jobyard's channel only)."""
    qos = getattr(message.channel, "qos", None)
    if hasattr(qos, "release"):
        qos.release(message.delivery_tag)


def fresh_copy(payload: dict) -> dict:
    """A copy of the raw broker ``payload`` with a fresh delivery tag, not marked redelivered."""
    copy = json.loads(json.dumps(payload))
    copy["properties"]["delivery_tag"] = uuid.uuid4().hex
    copy["headers"].pop("redelivered", None)
    copy["properties"].get("delivery_info", {}).pop("redelivered", None)
    return copy


def queue_keys(message) -> list[str] | None:
    """The Redis list keys ``message`` is delivered from (None if not kombu's Redis)."""
    channel = message.channel
    if not hasattr(channel, "_q_for_pri"):
        return None
    info = message.delivery_info or {}
    priority = channel._get_message_priority(message._raw, reverse=False)
    return [channel._q_for_pri(queue, priority)
            for queue in channel._lookup(info.get("exchange"), info.get("routing_key"))]


def superseded(client, task_id: str, retries: int) -> str | None:
    """Why a delivery older than a retry already sent must be dropped, or None.

    The retry's publish raises the mark (``tasks/lua/publish.lua``), in the same step.
    """
    sent = client.get(keys.retried(task_id))
    if sent is not None and retries < int(sent):
        return f"dropping a stale delivery (retry {sent} was already sent)"
    return None


def ended(backend, task_id: str) -> str | None:
    """Why a delivery of a job whose outcome is already stored must be dropped, or None.

    An agent killed after storing the outcome but before settling the message
    leaves it recorded as taken; the lease sweep then delivers it again.
    """
    state = backend.get_task_meta(task_id).get("status")
    if state in READY_STATES:
        return f"dropping a delivery of a job that already ended ({state})"
    return None


def count_lost(client, task_id: str) -> int:
    """Count one more redelivery of ``task_id`` after a lost host; return the count."""
    lost = client.incr(keys.lost(task_id))
    client.expire(keys.lost(task_id), keys.DELIVERY_TTL)
    return lost
