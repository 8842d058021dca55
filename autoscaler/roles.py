"""The autoscaler's three roles, as in nomad-autoscaler's plugins (apm, strategy, target).

* a :class:`MetricSource` reads the backlog and its resource demand;
* a :class:`Strategy` is a pure function from that demand to a host count, with a reason;
* a :class:`HostProvider` lists, adds and removes hosts of one shape.

None of them holds a safety rule: min/max, cooldown, stabilisation and never removing
a busy host are the control loop's (:mod:`autoscaler.loop`). Implementations are
registered by name in :mod:`autoscaler.registry`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .metrics import Observation
    from .shape import HostShape
    from .strategy import Demand, Target


@dataclass(frozen=True)
class Host:
    """A host that exists (or is starting): its agent's name, when it was created,
    and the provider's own id for it (pid, container id, instance id)."""

    name: str
    created: float
    id: str = ""


class MetricSource(Protocol):
    """Reads the backlog of :attr:`queues` without consuming it."""

    #: The queues it watches; a drain stops these on a host that published none.
    queues: tuple[str, ...]

    def read(self) -> Observation:
        """One observation of the queues, their demand and the agents."""


class Strategy(Protocol):
    """A pure function from demand to hosts: it knows nothing of time, bounds or hosts."""

    def desired(self, demand: Demand, shape: HostShape, fill: float = 1.0) -> Target:
        """The hosts of ``shape`` that ``demand`` needs, each packed to ``fill``, and why."""


class HostProvider(Protocol):
    """Adds and removes hosts of :attr:`shape`; never decides which or when.

    A host's ``name`` is the hostname its agent publishes state under. Subclass it to
    inherit :meth:`protect`'s default.
    """

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
