"""Host providers: where hosts come from. One role (:class:`~autoscaler.roles.HostProvider`),
one module per kind, each with a ``from_config`` that :mod:`autoscaler.registry` names.

A provider lists, adds and removes hosts of one shape. It never decides anything:
which host to remove, and whether removing it is safe, is the control loop's call.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from tasks.config import SECRET_VARIABLES, read_secret

from ..roles import Host, HostProvider
from ..shape import HostShape

if TYPE_CHECKING:
    from ..run import AutoscaleConfig

__all__ = ["Host", "HostProvider", "agent_options", "autoscaler_state_dir", "host_prefix", "host_shape", "without_secrets", "write_secrets"]


def host_shape(config: AutoscaleConfig) -> HostShape:
    """The shape of the hosts ``config`` asks for."""
    return HostShape(config.host_cpus, config.host_memory)


def host_prefix(config: AutoscaleConfig) -> str:
    """``config``'s host name prefix: ``--host-prefix``, else this machine's short hostname."""
    return config.host_prefix or socket.gethostname().split(".")[0]


def autoscaler_state_dir() -> str:
    """Where providers keep their hosts' files unless told: ``<JOBYARD_STATE_DIR>/autoscaler``."""
    from tasks.config import default_state_dir

    return os.path.join(default_state_dir(), "autoscaler")


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
