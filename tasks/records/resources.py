"""CPUs and memory: what a host offers (agent capacity, the autoscaler's host shape)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..spec import CPU_EPSILON
from ..units import format_memory
from .base import Record, number, strings, whole

#: Memory kept back for the OS, the Docker Engine and the agent itself.
DEFAULT_MEMORY_RESERVE = 512 * 1024**2
#: CPU kept back for the same.
DEFAULT_CPU_RESERVE = 0.0


@dataclass(frozen=True)
class Resources(Record):
    """Allocatable CPUs and memory bytes; JSON ``{"cpus", "memory"}``."""

    cpus: float
    memory: int

    @classmethod
    def detect(cls, cpus: float | None = None, memory: int | None = None) -> "Resources":
        """This host's allocatable capacity (psutil, less the reserves); explicit values override."""
        import psutil

        if cpus is None:
            cpus = max((psutil.cpu_count() or 1) - DEFAULT_CPU_RESERVE, 0.1)
        if memory is None:
            memory = max(psutil.virtual_memory().total - DEFAULT_MEMORY_RESERVE, 64 * 1024**2)
        return cls(float(cpus), int(memory))

    def holds(self, request: Any) -> bool:
        """Whether ``request`` (anything with ``cpus`` and ``memory``) fits in these resources."""
        return request.cpus <= self.cpus + CPU_EPSILON and request.memory <= self.memory

    def describe(self) -> str:
        """``2 cpus, 1Gi``."""
        return f"{self.cpus:g} cpus, {format_memory(self.memory)}"

    def to_dict(self) -> dict[str, Any]:
        """``{"cpus", "memory"}``."""
        return {"cpus": self.cpus, "memory": self.memory}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Resources":
        """Read ``{"cpus", "memory"}``."""
        return cls(number(data["cpus"]), whole(data["memory"]))


@dataclass(frozen=True)
class HostOffer(Record):
    """The host shape the autoscaler adds, at ``jobyard:autoscaler:shape``:
    JSON ``{"cpus", "memory", "queues"}``. No queues means every queue."""

    resources: Resources
    queues: tuple[str, ...] = ()

    def serves(self, queue: str) -> bool:
        """Whether hosts of this shape would consume ``queue``."""
        return not self.queues or queue in self.queues

    def to_dict(self) -> dict[str, Any]:
        """``{"cpus", "memory", "queues"}``."""
        return {**self.resources.to_dict(), "queues": list(self.queues)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HostOffer":
        """Read ``{"cpus", "memory", "queues"}``."""
        return cls(Resources.from_dict(data), strings(data.get("queues") or ()))
