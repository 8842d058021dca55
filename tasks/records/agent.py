"""What an agent publishes at ``jobyard:agent:<hostname>`` with every heartbeat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .base import Record, number, strings, text, whole
from .resources import CPU_EPSILON, Resources


@dataclass(frozen=True)
class HeldJob(Record):
    """A job an agent holds: admitted (running) or waiting for capacity or, with
    ``pulling``, for its image.

    JSON ``{"task_id", "name", "cpus", "memory", "started", "timeout"}``, plus
    ``"pulling": true`` for a job waiting on its image's pull; ``started`` is unix
    time (for a waiting job: when it began waiting).
    """

    task_id: str
    cpus: float
    memory: int
    started: float
    timeout: float
    name: str = ""
    pulling: bool = False

    @property
    def ends_by(self) -> float:
        """When its timeout kills it at the latest (unix time)."""
        return self.started + self.timeout

    def to_dict(self) -> dict[str, Any]:
        """The published form of one held job."""
        held = {"task_id": self.task_id, "name": self.name, "cpus": self.cpus, "memory": self.memory,
                "started": self.started, "timeout": self.timeout}
        if self.pulling:
            held["pulling"] = True
        return held

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeldJob":
        """Read one held job; only ``task_id`` is required."""
        return cls(text(data["task_id"]), number(data.get("cpus", 0)), whole(data.get("memory", 0)),
                   number(data.get("started", 0)), number(data.get("timeout", 0)), str(data.get("name") or ""),
                   data.get("pulling") is True)


@dataclass(frozen=True)
class AgentState(Record):
    """One agent's published state (JSON, TTL :data:`tasks.keys.AGENT_STATE_TTL`).

    ``capacity``/``reserved`` are ``{"cpus", "memory" (bytes)}``; ``running`` lists
    admitted jobs, ``waiting`` jobs held but not admitted yet (:class:`HeldJob`);
    ``draining`` is true once the agent stopped taking new jobs.
    """

    hostname: str
    worker: str
    queues: tuple[str, ...]
    capacity: Resources
    running: tuple[HeldJob, ...] = ()
    waiting: tuple[HeldJob, ...] = ()
    heartbeat: float = 0.0
    draining: bool = False
    reserved: Resources = Resources(0.0, 0)
    max_jobs: int | None = None
    pid: int | None = None

    @property
    def busy(self) -> bool:
        """Whether it holds any job, running or waiting."""
        return bool(self.running or self.waiting)

    @property
    def work_ends_by(self) -> float:
        """When its last held job must end by (0 when idle)."""
        return max((job.ends_by for job in self.running + self.waiting), default=0.0)

    def serves(self, queue: str) -> bool:
        """Whether it consumes ``queue``."""
        return queue in self.queues

    def has_room(self, request: Any) -> bool:
        """Whether ``request`` (``cpus``, ``memory``) fits in its unreserved capacity now."""
        return (request.cpus <= self.capacity.cpus - self.reserved.cpus + CPU_EPSILON
                and request.memory <= self.capacity.memory - self.reserved.memory)

    def to_dict(self) -> dict[str, Any]:
        """The published layout, in the order agents have always written it."""
        return {
            "hostname": self.hostname, "worker": self.worker, "draining": self.draining,
            "max_jobs": self.max_jobs, "waiting": [job.to_dict() for job in self.waiting],
            "queues": list(self.queues), "capacity": self.capacity.to_dict(),
            "reserved": self.reserved.to_dict(), "running": [job.to_dict() for job in self.running],
            "heartbeat": self.heartbeat, "pid": self.pid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AgentState":
        """Read a published state; ``hostname`` and ``capacity`` are required."""
        hostname = text(data["hostname"])
        if not hostname:
            raise ValueError("empty hostname")
        return cls(
            hostname, str(data.get("worker") or worker_name(hostname)), strings(data.get("queues") or ()),
            Resources.from_dict(data["capacity"]), _held(data.get("running") or ()),
            _held(data.get("waiting") or ()), number(data.get("heartbeat") or 0),
            bool(data.get("draining")),
            Resources.from_dict(data.get("reserved") or {"cpus": 0.0, "memory": 0}),
            None if data.get("max_jobs") is None else whole(data["max_jobs"]),
            None if data.get("pid") is None else whole(data["pid"]))


def worker_name(hostname: str) -> str:
    """The Celery node name of the agent on ``hostname``: ``jobyard@<hostname>``."""
    return f"jobyard@{hostname}"


def _held(items: Iterable[Any]) -> tuple[HeldJob, ...]:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{items!r} is not a list of jobs")
    return tuple(HeldJob.from_json(item) for item in items)
