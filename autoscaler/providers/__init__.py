"""Host providers: where hosts come from. One interface, one module per kind.

A provider lists, adds and removes hosts of one shape. It never decides anything:
which host to remove, and whether removing it is safe, is the control loop's call.
A host's ``name`` is the hostname its agent publishes state under.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

from tasks.config import SECRET_VARIABLES, read_secret

from ..shape import HostShape

#: Provider kinds and the modules that implement them.
KINDS = {"local": "autoscaler.providers.local", "docker": "autoscaler.providers.docker",
         "aws": "autoscaler.providers.aws"}


@dataclass(frozen=True)
class Host:
    """A host that exists (or is starting): its agent's name, when it was created,
    and the provider's own id for it (pid, container id, instance id)."""

    name: str
    created: float
    id: str = ""


class HostProvider(ABC):
    """Adds and removes hosts of :attr:`shape`."""

    #: What each host offers to jobs.
    shape: HostShape

    @abstractmethod
    def hosts(self) -> list[Host]:
        """Every host that exists now, including ones still starting."""

    @abstractmethod
    def add(self, count: int) -> list[Host]:
        """Start ``count`` hosts; return them."""

    @abstractmethod
    def remove(self, name: str) -> None:
        """Remove the host ``name`` (the loop has drained it already)."""

    def protect(self, busy: set[str]) -> None:
        """Shield ``busy`` hosts from removal by the platform itself (default: nothing to do)."""


def agent_options(name: str, shape: HostShape, queues, state_dir: str, extra=()) -> list[str]:
    """``jobyard agent`` options for host ``name``; creates its state dir under ``state_dir``."""
    host_dir = os.path.join(state_dir, name)
    os.makedirs(host_dir, exist_ok=True)
    return ["--hostname", name, "--cpus", f"{shape.cpus:g}", "--memory", str(shape.memory),
            "--queues", ",".join(queues), "--state-dir", host_dir, *extra]


def write_secrets(environ, directory: str) -> dict[str, str]:
    """Write each secret of ``environ`` (``JOBYARD_BROKER_URL`` and the like, given as
    the variable or its ``_FILE``) to a mode-0600 file in ``directory`` (made mode 0700);
    return ``{"<name>_FILE": path}`` for the secrets that are set."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    files = {}
    for name in SECRET_VARIABLES:
        value = read_secret(environ, name)
        if value is not None:
            files[f"{name}_FILE"] = _write_private(os.path.join(directory, name.lower()), value + "\n")
    return files


def without_secrets(environ) -> dict[str, str]:
    """``environ`` less every secret variable and its ``_FILE``."""
    secret = {variant for name in SECRET_VARIABLES for variant in (name, f"{name}_FILE")}
    return {key: value for key, value in environ.items() if key not in secret}


def _write_private(path: str, content: str) -> str:
    # A fresh 0600 file renamed over the old one: never a moment with wider permissions.
    temp = f"{path}.{os.getpid()}.tmp"
    if os.path.lexists(temp):
        os.unlink(temp)
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.replace(temp, path)
    return path
