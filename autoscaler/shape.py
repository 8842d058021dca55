"""What one host offers and what one job asks for: the units the strategy packs."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.units import format_memory

from .errors import ConfigError


@dataclass(frozen=True)
class HostShape:
    """Allocatable CPUs and memory bytes of one host a provider adds."""

    cpus: float
    memory: int

    def __post_init__(self):
        if not (self.cpus > 0 and self.memory > 0):
            raise ConfigError(f"a host shape needs positive cpus and memory, got {self.cpus!r}, {self.memory!r}")

    def holds(self, request: "Request") -> bool:
        """Whether ``request`` fits on an empty host of this shape."""
        return request.cpus <= self.cpus + 1e-9 and request.memory <= self.memory

    def describe(self) -> str:
        """``2 cpus, 1Gi``."""
        return f"{self.cpus:g} cpus, {format_memory(self.memory)}"


@dataclass(frozen=True)
class Request:
    """One job's resource request, as admission reserves it."""

    task_id: str
    cpus: float
    memory: int
