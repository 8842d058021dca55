"""Access to jobyard's own state in the broker's Redis (keys in :mod:`tasks.keys`)."""

from __future__ import annotations

import json
from typing import Any

import redis

from . import keys
from .config import Settings


def state_client(settings: Settings | None = None) -> redis.Redis:
    """A Redis client for the broker's database (``redis://`` or ``rediss://``)."""
    settings = settings or Settings.from_env()
    return redis.Redis.from_url(settings.broker_url, decode_responses=True,
                                socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=10, retry_on_timeout=True)


def job_facts(task_id: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """Container facts of a job: container id, image, limits, exit code, peak memory, attempt."""
    client = client or state_client()
    raw = client.hgetall(keys.job_facts(task_id))
    return {key: _decode(value) for key, value in raw.items()}


def job_logs(task_id: str, client: redis.Redis | None = None) -> str:
    """A job's captured output (the last 256 KiB), kept after its container is gone."""
    client = client or state_client()
    return client.get(keys.job_logs(task_id)) or ""


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
