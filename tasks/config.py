"""Configuration from the environment, read in one place.

``JOBYARD_BROKER_URL``      broker (default ``redis://127.0.0.1:6379/0``)
``JOBYARD_RESULT_BACKEND``  results (default: the broker's Redis, db 1)
``JOBYARD_DEFAULT_IMAGE``   image for jobs that name none (default ``jobyard/python:latest``)
``JOBYARD_VISIBILITY_TIMEOUT`` seconds before Redis redelivers an unacked message
``JOBYARD_MAX_PAYLOAD``     largest call payload in bytes (default 1 MiB)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_IMAGE = "jobyard/python:latest"
DEFAULT_VISIBILITY_TIMEOUT = 6 * 3600
DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything jobyard reads from the environment."""

    broker_url: str
    result_backend: str
    default_image: str
    visibility_timeout: int
    max_payload: int

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """Read settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        broker = env.get("JOBYARD_BROKER_URL") or DEFAULT_BROKER_URL
        return cls(
            broker_url=broker,
            result_backend=env.get("JOBYARD_RESULT_BACKEND") or redis_db(broker, 1),
            default_image=env.get("JOBYARD_DEFAULT_IMAGE") or DEFAULT_IMAGE,
            visibility_timeout=int(env.get("JOBYARD_VISIBILITY_TIMEOUT") or DEFAULT_VISIBILITY_TIMEOUT),
            max_payload=int(env.get("JOBYARD_MAX_PAYLOAD") or DEFAULT_MAX_PAYLOAD),
        )


def redis_db(url: str, db: int) -> str:
    """The same Redis server as ``url`` with database ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and status output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
