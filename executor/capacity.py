"""What this host can give to jobs, and what running jobs have reserved.

Capacity is the host's total CPU and memory (psutil) minus a reserve for the OS and
the agent, unless the operator sets it. Admission reserves a job's *requests*; the
sum of reservations never exceeds capacity.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tasks.records import CPU_EPSILON, Resources
from tasks.spec import JobSpec

#: This host's allocatable CPUs and memory bytes (``Capacity.detect()``): the shared record.
Capacity = Resources


@dataclass
class Reservation:
    """One admitted job's hold on capacity."""

    task_id: str
    name: str
    cpus: float
    memory: int
    started: float = field(default_factory=time.time)
    timeout: float = 0.0


class Ledger:
    """Thread-safe book of reservations against a fixed capacity.

    ``admit`` is non-blocking; the caller decides what to do with a job that does
    not fit now. ``changed`` is notified on every release so waiters can retry.
    """

    #: Whether admission reserves jobs' requests. A ledger that admits by another rule
    #: (a benchmark's fixed slots) sets False: placement then neither parks a job too
    #: big for this host nor sizes what the intake takes.
    sizes_jobs = True

    def __init__(self, capacity: Capacity):
        self.capacity = capacity
        self.changed = threading.Condition()
        self._held: dict[str, Reservation] = {}

    def fits(self, spec: JobSpec) -> bool:
        """Whether ``spec``'s requests fit in the free capacity now."""
        with self.changed:
            return self._fits(spec.cpus, spec.memory)

    def admit(self, task_id: str, spec: JobSpec) -> Reservation | None:
        """Reserve ``spec``'s requests if they fit now; else return None."""
        with self.changed:
            if task_id in self._held:
                return self._held[task_id]
            if not self._fits(spec.cpus, spec.memory):
                return None
            held = Reservation(task_id, spec.name, spec.cpus, spec.memory, timeout=spec.timeout)
            self._held[task_id] = held
            return held

    def release(self, task_id: str) -> None:
        """Give a job's reservation back and wake waiters."""
        with self.changed:
            self._held.pop(task_id, None)
            self.changed.notify_all()

    def reserved(self) -> tuple[float, int]:
        """Summed (cpus, memory) of all reservations."""
        with self.changed:
            return self._reserved()

    def free(self) -> tuple[float, int]:
        """Unreserved (cpus, memory)."""
        with self.changed:
            cpus, memory = self._reserved()
            return self.capacity.cpus - cpus, self.capacity.memory - memory

    def running(self) -> list[Reservation]:
        """A snapshot of current reservations."""
        with self.changed:
            return list(self._held.values())

    def _reserved(self) -> tuple[float, int]:
        return (sum(r.cpus for r in self._held.values()), sum(r.memory for r in self._held.values()))

    def _fits(self, cpus: float, memory: int) -> bool:
        used_cpus, used_memory = self._reserved()
        return used_cpus + cpus <= self.capacity.cpus + CPU_EPSILON and used_memory + memory <= self.capacity.memory
