"""The agent's periodic work, one daemon thread per loop, each handed the agent.

Lease renewal talks only to Redis, so a slow or hung Docker Engine can never let
a running job's lease age past the sweep; everything that talks to the engine
runs in :class:`Housekeeping`, on its own client with short timeouts. The
worker's bootsteps start and stop them (:mod:`executor.steps`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)

#: Heartbeats between two sweeps for containers no held job owns.
REAP_EVERY_BEATS = 8


class PeriodicLoop:
    """Calls :meth:`beat` every ``interval`` seconds in a daemon thread until :meth:`stop`."""

    name = "jobyard-loop"

    def __init__(self, agent: "Agent", interval: float):
        self.agent = agent
        self.interval = interval
        self._stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        """Start the loop's thread and return it."""
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Ask the loop to end after its current beat (does not wait for it)."""
        self._stopping.set()

    def beat(self) -> None:
        """One round of the loop's work."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - one bad beat must not end the loop
                log.exception("%s: beat failed", self.name)


class LeaseRenewal(PeriodicLoop):
    """Renews held messages' leases, follows the drain mark and publishes state: Redis only."""

    name = "jobyard-heartbeat"

    def beat(self) -> None:
        """Renew, follow the drain mark, publish, look at the broker's replicas."""
        self.agent.renew_leases()
        self.agent.follow_drain_mark()
        self.agent.publish()
        self.agent.check_durability()


class Housekeeping(PeriodicLoop):
    """Pings a down engine every beat and reaps containers no held job owns every ``reap_every`` beats."""

    name = "jobyard-housekeeping"

    def __init__(self, agent: "Agent", interval: float, reap_every: int = REAP_EVERY_BEATS):
        super().__init__(agent, interval)
        self.reap_every = reap_every
        self._beats = 0

    def beat(self) -> None:
        """Check the engine if it was lost; reap on every ``reap_every``-th beat."""
        if self.agent.placement.engine_down:
            self.agent.check_engine()
        self._beats += 1
        if self._beats % self.reap_every == 0:
            self.agent.reap(keep=self.agent.held.task_ids())
