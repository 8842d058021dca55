"""Strategies: pure functions from demand to a number of hosts.

A strategy sees only the demand and the provider's host shape; it knows nothing of
time, bounds or the hosts that exist. Min/max, cooldown, stabilisation and drains
are the control loop's (:mod:`autoscaler.loop`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tasks.units import format_memory

from .shape import HostShape, Request


@dataclass(frozen=True)
class Demand:
    """Jobs that need room: ``waiting`` (queued or held, not admitted) and ``running``."""

    waiting: tuple[Request, ...] = ()
    running: tuple[Request, ...] = ()

    @property
    def cpus(self) -> float:
        """Summed CPU requests of waiting jobs."""
        return sum(r.cpus for r in self.waiting)

    @property
    def memory(self) -> int:
        """Summed memory requests of waiting jobs, bytes."""
        return sum(r.memory for r in self.waiting)


@dataclass(frozen=True)
class Target:
    """A strategy's answer: ``hosts`` needed (unclamped), why, and jobs no host can hold."""

    hosts: int
    reason: str
    unfit: tuple[Request, ...] = field(default=())


def pack(requests: list[Request] | tuple[Request, ...], shape: HostShape, fill: float = 1.0) -> int:
    """Hosts of ``shape`` that first-fit-decreasing needs for ``requests``.

    ``fill`` < 1 packs each host only up to that fraction (a request larger than the
    fraction still gets a host of its own). Requests larger than ``shape`` must be
    filtered out first.
    """
    cpus_room, memory_room = shape.cpus * fill, shape.memory * fill
    hosts: list[list[float]] = []
    for request in sorted(requests, key=lambda r: _share(r, shape), reverse=True):
        for host in hosts:
            if host[0] + request.cpus <= cpus_room + 1e-9 and host[1] + request.memory <= memory_room:
                host[0] += request.cpus
                host[1] += request.memory
                break
        else:
            hosts.append([request.cpus, float(request.memory)])
    return len(hosts)


def _share(request: Request, shape: HostShape) -> float:
    return max(request.cpus / shape.cpus, request.memory / shape.memory)


@dataclass(frozen=True)
class BinPacking:
    """Enough hosts to bin-pack waiting plus running requests, and optionally at most
    ``jobs_per_host`` jobs per host."""

    jobs_per_host: int | None = None

    def desired(self, demand: Demand, shape: HostShape, fill: float = 1.0) -> Target:
        """The hosts ``demand`` needs, packed to ``fill`` of each host."""
        unfit = tuple(r for r in demand.waiting + demand.running if not shape.holds(r))
        fitting = [r for r in demand.waiting + demand.running if shape.holds(r)]
        hosts = pack(fitting, shape, fill)
        reason = (f"{len(demand.waiting)} waiting ({demand.cpus:g} cpus, {format_memory(demand.memory)}) "
                  f"+ {len(demand.running)} running pack onto {hosts} host(s) of {shape.describe()}")
        if self.jobs_per_host and fitting:
            by_count = math.ceil(len(fitting) / (self.jobs_per_host * fill))
            if by_count > hosts:
                hosts = by_count
                reason += f"; {len(fitting)} jobs at {self.jobs_per_host}/host need {hosts}"
        if unfit:
            reason += f"; {len(unfit)} job(s) fit no host"
        return Target(hosts, reason, unfit)
