"""The dead-letter store: jobs that failed for good, with reason, error and message.

Each dead job is a hash at ``jobyard:dead:<task_id>`` (:class:`tasks.records.DeadLetter`,
kept :data:`tasks.keys.DEAD_TTL`) indexed by the sorted set ``jobyard:dead``. The stored
broker message lets ``jobyard dead requeue`` send the very same job again, with a fresh
retry budget.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from tasks import keys, transport
from tasks.records import DeadLetter
from tasks.spec import MAX_RETRIES

from .bounds import ERROR_BYTES, clip_facts, head
from .messages import fresh_copy

log = logging.getLogger(__name__)


class DeadLetters:
    """Read and write the dead-letter store in the broker's Redis."""

    def __init__(self, client):
        self.redis = client

    def add(self, task_id: str, record: dict[str, Any], payload: dict | None, queue_key: str | None) -> None:
        """Store a dead job: ``record`` facts plus the message to requeue it with.

        Every string of ``record`` is cut (``error`` to 4 KiB, ``details`` to their
        documented sizes): its error text comes from the job.
        """
        now = time.time()
        fields = {**_bounded(record), "task_id": task_id, "died_at": now}
        if payload is not None and queue_key:
            fields["message"] = payload
            fields["queue_key"] = queue_key
        pipe = self.redis.pipeline()
        pipe.hset(keys.dead_job(task_id), mapping=DeadLetter.from_json(fields).to_redis())
        pipe.expire(keys.dead_job(task_id), keys.DEAD_TTL)
        pipe.zadd(keys.DEAD, {task_id: now})
        pipe.zremrangebyrank(keys.DEAD, 0, -keys.DEAD_KEPT - 1)
        pipe.zremrangebyscore(keys.DEAD, "-inf", now - keys.DEAD_TTL)  # their hashes have expired
        pipe.expire(keys.DEAD, keys.DEAD_TTL)
        pipe.execute()

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead jobs first (malformed ones skipped with a warning)."""
        ids = self.redis.zrevrange(keys.DEAD, 0, limit - 1)
        records = []
        for task_id in ids:
            raw = self.redis.hgetall(keys.dead_job(task_id))
            if not raw:
                self.redis.zrem(keys.DEAD, task_id)  # expired hash: drop the index entry
                continue
            record = DeadLetter.parse_redis(raw)
            if record is not None:
                records.append(record)
        return records

    def get(self, task_id: str) -> DeadLetter | None:
        """One dead job's record, or None (also when it is malformed)."""
        raw = self.redis.hgetall(keys.dead_job(task_id))
        return DeadLetter.parse_redis(raw) if raw else None

    def requeue(self, task_id: str, backend=None, sealer=None) -> bool:
        """Send the job again with a fresh retry budget; False if it cannot be.

        ``backend`` is the result backend: its stored FAILURE is forgotten first, or
        the agent would drop the requeued delivery as one of a job that already ended.
        With signing on, ``sealer`` (:class:`tasks.security.Sealer`) seals the changed
        ``retries`` header again, once the stored message's own seal holds.
        """
        record = self.get(task_id)
        if not record or not isinstance(record.message, dict) or not record.queue_key:
            return False
        payload = fresh_copy(record.message)
        problem = sealer.reseal(payload, retries=0) if sealer is not None else None
        if problem:
            log.warning("not requeueing %s: %s", task_id, problem)
            return False
        if backend is not None:
            backend.forget(task_id)
        payload["headers"]["retries"] = 0
        pipe = self.redis.pipeline()
        pipe.lpush(record.queue_key, json.dumps(payload))
        transport.ring(pipe, transport.queue_of(record.queue_key))
        pipe.delete(keys.dead_job(task_id), keys.lost(task_id), keys.retried(task_id))
        # Its earlier retries' publish marks would swallow the retries of the new run.
        pipe.delete(*(keys.published(task_id, retry) for retry in range(MAX_RETRIES + 1)))
        pipe.zrem(keys.DEAD, task_id)
        pipe.execute()
        return True

    def purge(self, task_ids: list[str] | None = None) -> int:
        """Delete the given dead jobs, or all of them; return how many."""
        ids = task_ids if task_ids is not None else self.redis.zrange(keys.DEAD, 0, -1)
        if not ids:
            return 0
        pipe = self.redis.pipeline()
        for task_id in ids:
            pipe.delete(keys.dead_job(task_id))
            pipe.zrem(keys.DEAD, task_id)
        results = pipe.execute()
        return sum(1 for deleted in results[1::2] if deleted)


def _bounded(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its strings and its details' strings cut to their documented sizes."""
    bounded = {}
    for key, value in record.items():
        if key == "details" and isinstance(value, dict):
            value = clip_facts(value)
        elif isinstance(value, str):
            value = head(value, ERROR_BYTES)
        bounded[key] = value
    return bounded
