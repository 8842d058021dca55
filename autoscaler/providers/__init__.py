"""Host providers: where hosts come from. One interface, one module per kind.

A provider lists, adds and removes hosts of one shape. It never decides anything:
which host to remove, and whether removing it is safe, is the control loop's call.
A host's ``name`` is the hostname its agent publishes state under.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

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
