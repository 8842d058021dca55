"""Access to jobyard's own state in the broker's Redis (keys in :mod:`tasks.keys`)."""

from __future__ import annotations

from typing import Any

import redis

from . import keys
from .clients import broker_client
from .config import Settings
from .records import JobFacts, RejectedMessage


def state_client(settings: Settings | None = None) -> redis.Redis:
    """A Redis client for the broker's database (``redis://``, ``rediss://`` or Sentinel: :mod:`tasks.clients`)."""
    return broker_client(settings or Settings.from_env())


def read_job_facts(task_id: str, client: redis.Redis | None = None) -> JobFacts:
    """A job's container facts as the record (every field None when none are kept)."""
    client = client or state_client()
    return JobFacts.parse_redis(client.hgetall(keys.job_facts(task_id))) or JobFacts()


def job_facts(task_id: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """Container facts of a job: container id, image, limits, exit code, peak memory, attempt."""
    return read_job_facts(task_id, client).to_dict()


def job_logs(task_id: str, client: redis.Redis | None = None) -> str:
    """A job's captured output (the last 256 KiB), kept after its container is gone."""
    client = client or state_client()
    return client.get(keys.job_logs(task_id)) or ""


def rejected_messages(client: redis.Redis, limit: int = keys.REJECTED_KEPT) -> list[RejectedMessage]:
    """The refused messages kept in :func:`tasks.keys.rejected`, newest first (malformed
    entries skipped with a warning)."""
    records = (RejectedMessage.parse(item) for item in client.lrange(keys.rejected(), 0, limit - 1))
    return [record for record in records if record is not None]
