"""What one host offers and what one job asks for: the units the strategy packs."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.records import Resources

from .errors import ConfigError

#: Allocatable CPUs and memory bytes of one host a provider adds: the shared record.
HostShape = Resources


def host_shape(cpus: float, memory: int) -> Resources:
    """The shape of the hosts a provider adds; both amounts must be positive."""
    if not (cpus > 0 and memory > 0):
        raise ConfigError(f"a host shape needs positive cpus and memory, got {cpus!r}, {memory!r}")
    return Resources(cpus, memory)


@dataclass(frozen=True)
class Request:
    """One job's resource request, as admission reserves it."""

    task_id: str
    cpus: float
    memory: int
