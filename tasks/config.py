"""Configuration from the environment, read in one place.

``JOBYARD_BROKER_URL``      broker (default ``redis://127.0.0.1:6379/0``)
``JOBYARD_RESULT_BACKEND``  results (default: the broker's Redis, db 1)
``JOBYARD_DEFAULT_IMAGE``   image for jobs that name none (default ``jobyard/python:latest``)
``JOBYARD_LEASE_SECONDS``  a running job's lease: its agent renews it every few
                            seconds; a job whose lease is this old is requeued (default 10)
``JOBYARD_MAX_PAYLOAD``     largest call payload in bytes (default 1 MiB)
``JOBYARD_MAX_RESULT``      largest job result in bytes (default: ``JOBYARD_MAX_PAYLOAD``)
``JOBYARD_BROKER_SSL_*``, ``JOBYARD_SIGNING_*``  TLS and message signing (:mod:`tasks.security`)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .security import Signing, tls_url

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_IMAGE = "jobyard/python:latest"
DEFAULT_LEASE_SECONDS = 10
DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything jobyard reads from the environment."""

    broker_url: str
    result_backend: str
    default_image: str
    lease_seconds: int
    max_payload: int
    signing: Signing | None = None
    max_result: int = DEFAULT_MAX_PAYLOAD

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """Read settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        broker = tls_url(env.get("JOBYARD_BROKER_URL") or DEFAULT_BROKER_URL, env)
        return cls(
            broker_url=broker,
            result_backend=tls_url(env.get("JOBYARD_RESULT_BACKEND") or redis_db(broker, 1), env),
            default_image=env.get("JOBYARD_DEFAULT_IMAGE") or DEFAULT_IMAGE,
            lease_seconds=int(env.get("JOBYARD_LEASE_SECONDS") or DEFAULT_LEASE_SECONDS),
            max_payload=int(env.get("JOBYARD_MAX_PAYLOAD") or DEFAULT_MAX_PAYLOAD),
            signing=Signing.from_env(env),
            max_result=int(env.get("JOBYARD_MAX_RESULT") or env.get("JOBYARD_MAX_PAYLOAD")
                           or DEFAULT_MAX_PAYLOAD),
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
