"""Configuration from the environment, read in one place.

``JOBYARD_BROKER_URL``      broker (default ``redis://127.0.0.1:6379/0``)
``JOBYARD_RESULT_BACKEND``  results (default: the broker's Redis, db 1)
``JOBYARD_DEFAULT_IMAGE``   image for jobs that name none (default ``jobyard/python:latest``)
``JOBYARD_LEASE_SECONDS``  a running job's lease: its agent renews it every few
                            seconds; a job whose lease is this old is requeued (default 10)
``JOBYARD_MAX_PAYLOAD``     largest call payload in bytes (default 1 MiB)
``JOBYARD_MAX_RESULT``      largest job result in bytes (default: ``JOBYARD_MAX_PAYLOAD``)
``JOBYARD_STATE_DIR``       agents' job input/output dirs (:func:`default_state_dir`)
``JOBYARD_MAX_MESSAGE``     largest raw message an agent takes (default 4 x ``JOBYARD_MAX_PAYLOAD``)
``JOBYARD_AGENT_IMAGE``     image the docker provider runs agents in (default ``jobyard/jobyard:latest``)
``JOBYARD_FLOWER_USER``, ``JOBYARD_FLOWER_PASSWORD``  Flower's basic-auth login (both or neither)
``JOBYARD_BROKER_MIN_REPLICAS``  replicas that must confirm each job write (``WAIT``) before it
                            counts as done (default 1 for a ``sentinel://`` broker, else 0; :mod:`tasks.durable`)
``JOBYARD_BROKER_WAIT_TIMEOUT``  milliseconds a write waits for them (default 1000)
``JOBYARD_BROKER_SSL_*``, ``JOBYARD_SIGNING_*``  TLS and message signing (:mod:`tasks.security`)
``JOBYARD_SENTINEL_MASTER``  with a ``sentinel://`` URL: the master set's name (default ``mymaster``)
``JOBYARD_SENTINEL_PASSWORD``  with a ``sentinel://`` URL: the sentinels' own password, if any
                            (Sentinel URLs: :mod:`tasks.clients`)

A secret may come from a file instead: ``JOBYARD_BROKER_URL_FILE`` and
``JOBYARD_RESULT_BACKEND_FILE`` (and ``JOBYARD_SENTINEL_PASSWORD_FILE``) name a file whose content is the value (see
:func:`read_secret`), so the URL and its password stay out of every process's
environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .durable import DEFAULT_WAIT_TIMEOUT_MS, Durability
from .clients import DEFAULT_SENTINEL_MASTER, MASTER_NAME, SENTINEL_SEPARATOR, SentinelURL, is_sentinel, with_db
from .errors import SettingsError
from .security import Signing, tls_url

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_IMAGE = "jobyard/python:latest"
DEFAULT_LEASE_SECONDS = 10
DEFAULT_MAX_PAYLOAD = 1024 * 1024
DEFAULT_AGENT_IMAGE = "jobyard/jobyard:latest"
#: The default cap on one raw message, as a multiple of the call payload cap: the
#: body is base64 (4/3) and headers carry the spec and canvas callbacks.
MESSAGE_CAP_FACTOR = 4
#: Variables that hold a secret and may be given as ``<name>_FILE`` instead.
SECRET_VARIABLES = ("JOBYARD_BROKER_URL", "JOBYARD_RESULT_BACKEND", "JOBYARD_SENTINEL_PASSWORD")
#: The most replicas a write may wait for, and the longest wait (ms).
MAX_MIN_REPLICAS = 64
MAX_WAIT_TIMEOUT_MS = 600_000


def read_secret(environ, name: str) -> str | None:
    """The value of ``name``, or the content of the file ``<name>_FILE`` names
    (less one trailing newline); None when neither is set."""
    variable = f"{name}_FILE"
    path = environ.get(variable)
    if not path:
        return environ.get(name) or None
    if environ.get(name):
        raise SettingsError(f"{name} and {variable} are both set: set one of them")
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read()
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: cannot read {path}: not UTF-8 text") from None
    value = value.removesuffix("\n")
    if not value:
        raise SettingsError(f"{variable}: {path} is empty")
    return value


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
    state_dir: str = field(default_factory=lambda: default_state_dir({}))
    max_message: int = MESSAGE_CAP_FACTOR * DEFAULT_MAX_PAYLOAD
    agent_image: str = DEFAULT_AGENT_IMAGE
    flower_user: str | None = None
    flower_password: str | None = field(default=None, repr=False)
    broker_min_replicas: int = 0
    broker_wait_timeout: int = DEFAULT_WAIT_TIMEOUT_MS

    @property
    def durability(self) -> Durability:
        """How job writes wait for replicas (:mod:`tasks.durable`)."""
        return Durability(self.broker_min_replicas, self.broker_wait_timeout)
    sentinel_master: str = DEFAULT_SENTINEL_MASTER
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """Read settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        max_payload = _integer(env, "JOBYARD_MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD)
        broker = _redis_url(env, "JOBYARD_BROKER_URL", DEFAULT_BROKER_URL)
        return cls(
            broker_url=broker,
            result_backend=_redis_url(env, "JOBYARD_RESULT_BACKEND", redis_db(broker, 1)),
            default_image=env.get("JOBYARD_DEFAULT_IMAGE") or DEFAULT_IMAGE,
            lease_seconds=int(env.get("JOBYARD_LEASE_SECONDS") or DEFAULT_LEASE_SECONDS),
            max_payload=max_payload,
            signing=Signing.from_env(env),
            max_result=_integer(env, "JOBYARD_MAX_RESULT", max_payload),
            state_dir=default_state_dir(env),
            max_message=_integer(env, "JOBYARD_MAX_MESSAGE", MESSAGE_CAP_FACTOR * max_payload),
            agent_image=env.get("JOBYARD_AGENT_IMAGE") or DEFAULT_AGENT_IMAGE,
            flower_user=env.get("JOBYARD_FLOWER_USER") or None,
            flower_password=env.get("JOBYARD_FLOWER_PASSWORD") or None,
            broker_min_replicas=_bounded(env, "JOBYARD_BROKER_MIN_REPLICAS",
                                         1 if is_sentinel(broker) else 0, 0, MAX_MIN_REPLICAS),
            broker_wait_timeout=_bounded(env, "JOBYARD_BROKER_WAIT_TIMEOUT", DEFAULT_WAIT_TIMEOUT_MS, 1,
                                         MAX_WAIT_TIMEOUT_MS),
            sentinel_master=_master_name(env),
            sentinel_password=read_secret(env, "JOBYARD_SENTINEL_PASSWORD"),
        )


def broker_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether ``environ`` names a broker (``JOBYARD_BROKER_URL`` or its ``_FILE``), not the default."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOBYARD_BROKER_URL") or env.get("JOBYARD_BROKER_URL_FILE"))


def _redis_url(env, name: str, default: str) -> str:
    """The URL in ``name`` (or its file), with TLS options; a Sentinel URL is checked here."""
    url = read_secret(env, name) or default
    if is_sentinel(url):
        SentinelURL.parse(url, name)
        return url
    return tls_url(url, env)


def _master_name(env) -> str:
    name = env.get("JOBYARD_SENTINEL_MASTER") or DEFAULT_SENTINEL_MASTER
    if not MASTER_NAME.fullmatch(name):
        raise SettingsError("JOBYARD_SENTINEL_MASTER: a master set's name is letters, digits, '.', '_' or '-'")
    return name


def _integer(env, name: str, default: int) -> int:
    return int(env.get(name) or default)


def _bounded(env, name: str, default: int, low: int, high: int) -> int:
    """The whole number ``name`` holds, from ``low`` to ``high``; SettingsError naming it otherwise."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be from {low} to {high}, not {value}")
    return value


def redis_db(url: str, db: int) -> str:
    """The same Redis server as ``url`` with database ``db`` (every sentinel of a Sentinel URL)."""
    return with_db(url, db)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and status output."""
    if SENTINEL_SEPARATOR in url:
        return SENTINEL_SEPARATOR.join(redact(chunk) for chunk in url.split(SENTINEL_SEPARATOR))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def default_state_dir(environ: dict[str, str] | None = None) -> str:
    """Where job input/output directories live (must be a path the engine can mount)."""
    env = os.environ if environ is None else environ
    if env.get("JOBYARD_STATE_DIR"):
        return env["JOBYARD_STATE_DIR"]
    return "/var/lib/jobyard" if os.geteuid() == 0 else os.path.expanduser("~/.local/state/jobyard")
