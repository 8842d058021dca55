"""Flower for the jobyard app, safe by default.

Flower binds to 127.0.0.1 unless told otherwise. Bound anywhere else it refuses to
start without basic-auth credentials, which come from ``JOBYARD_FLOWER_USER`` and
``JOBYARD_FLOWER_PASSWORD`` or from a file of ``user:password`` lines; they are
handed to Flower in-process, so they never appear in a command line, a log line or
the process list.

With credentials, Flower's HTTP API is on (behind the same auth). On loopback
without credentials the UI is open to local users but the API stays off, as
Flower ships it, because the API can revoke jobs and shut workers down; pass
``unauthenticated_api=True`` to turn it on for loopback only.

Every task page also shows the job's container facts (container id, image,
limits, exit code, peak memory, attempt), read from Redis by a ``format_task`` hook.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from dataclasses import dataclass

import click

from tasks.config import Settings, redact

log = logging.getLogger(__name__)

USER_ENV = "JOBYARD_FLOWER_USER"
PASSWORD_ENV = "JOBYARD_FLOWER_PASSWORD"
#: The columns Flower's tasks table shows for jobyard jobs.
TASK_COLUMNS = "name,uuid,state,args,kwargs,result,received,runtime,worker,exception"


@dataclass(frozen=True)
class FlowerConfig:
    """How to run Flower: where it listens and who may use it."""

    address: str = "127.0.0.1"
    port: int = 5555
    credentials: tuple[str, ...] = ()
    unauthenticated_api: bool = False

    def __repr__(self) -> str:
        # Never let the credentials reach a log line through a repr.
        return (f"FlowerConfig(address={self.address!r}, port={self.port}, "
                f"credentials={len(self.credentials)} user(s), unauthenticated_api={self.unauthenticated_api})")

    @property
    def loopback(self) -> bool:
        """Whether Flower listens only on this machine."""
        return is_loopback(self.address)

    def check(self) -> None:
        """Refuse unsafe combinations with a clear message."""
        if not self.loopback and not self.credentials:
            raise click.ClickException(
                f"refusing to serve Flower on {self.address or 'all interfaces'} without authentication: "
                f"set {USER_ENV} and {PASSWORD_ENV} or pass --basic-auth-file")
        if self.unauthenticated_api and not self.loopback:
            raise click.ClickException("--unauthenticated-api is only allowed on a loopback address")


def is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IPs; the empty address means all interfaces."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def load_credentials(basic_auth_file: str | None = None, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """``user:password`` entries from ``basic_auth_file`` or the environment."""
    if basic_auth_file:
        return _read_credentials_file(basic_auth_file)
    settings = Settings.from_env(environ)
    user, password = settings.flower_user, settings.flower_password
    if bool(user) != bool(password):
        raise click.ClickException(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
    if not user:
        return ()
    return (_credential(user, password, USER_ENV),)


def _read_credentials_file(path: str) -> tuple[str, ...]:
    try:
        mode = os.stat(path).st_mode
        with open(path) as handle:
            lines = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except OSError as exc:
        raise click.ClickException(f"cannot read basic-auth file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("basic-auth file %s is readable by other users; chmod 600 it", path)
    if not lines:
        raise click.ClickException(f"basic-auth file {path} holds no user:password line")
    entries = []
    for number, line in enumerate(lines, 1):
        user, sep, password = line.partition(":")
        if not sep:
            raise click.ClickException(f"basic-auth file {path}, entry {number}: expected user:password")
        entries.append(_credential(user, password, f"{path}, entry {number}"))
    return tuple(entries)


def _credential(user: str, password: str, where: str) -> str:
    if not user or ":" in user or not password:
        raise click.ClickException(f"{where}: a user name without ':' and a non-empty password are required")
    return f"{user}:{password}"


def run_flower(config: FlowerConfig, settings: Settings | None = None) -> None:
    """Serve Flower for ``tasks.app`` in this process until it is stopped."""
    from celery.bin.celery import celery as celery_command
    from flower.options import options  # defines Flower's options on tornado's registry

    from .facts import add_container_facts

    config.check()
    settings = settings or Settings.from_env()
    # Set directly, not through FLOWER_BASIC_AUTH, which Flower splits on commas.
    options.basic_auth = list(config.credentials)
    options.format_task = add_container_facts
    options.tasks_columns = TASK_COLUMNS
    if config.unauthenticated_api:
        os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        os.environ.pop("FLOWER_UNAUTHENTICATED_API", None)
    if not config.credentials:
        log.warning("Flower has no authentication: UI on loopback only, HTTP API %s",
                    "on (--unauthenticated-api)" if config.unauthenticated_api else
                    f"off (set {USER_ENV}/{PASSWORD_ENV} to enable it)")
    log.info("Flower for %s on http://%s:%d/", redact(settings.broker_url), config.address, config.port)
    # --conf=/dev/null: a stray flowerconfig.py in the working directory must not
    # change who may log in; other Flower options still come from FLOWER_* variables.
    argv = ["-A", "tasks.app:app", "flower", f"--address={config.address}", f"--port={config.port}",
            "--conf=/dev/null"]
    celery_command.main(args=argv, prog_name="jobyard flower", standalone_mode=True)
