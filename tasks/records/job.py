"""What is kept of one job: its container facts, and its dead letter if it failed for good."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .base import HashRecord, number, text


class _Fields(HashRecord):
    """A hash record of optional fields: only set fields are written, unknown ones are kept."""

    def to_dict(self) -> dict[str, Any]:
        """The set fields (not None) in declaration order, then the unknown ones kept in ``extra``."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in known.items() if v is not None}, **dict(self.extra)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Known fields by name; any other field goes to ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = tuple((k, v) for k, v in data.items() if k not in names)
        return cls(**known, extra=extra)

    def __bool__(self) -> bool:
        """Whether any field is set (an expired or unknown hash reads as an empty record)."""
        return bool(self.to_dict())

    def get(self, name: str, default: Any = None) -> Any:
        """A field's value, known or extra, or ``default`` when not set."""
        value = self.to_dict().get(name)
        return default if value is None else value


@dataclass(frozen=True)
class JobFacts(_Fields):
    """The hash ``jobyard:job:<task_id>``: one job's container facts, written by its agent
    in parts (when it starts, when it ends), every value JSON. Unset fields are None."""

    name: str | None = None
    host: str | None = None
    image: str | None = None
    state: str | None = None
    attempt: int | None = None
    cpus: float | None = None
    cpus_limit: float | None = None
    memory: int | None = None
    memory_limit: int | None = None
    pids: int | None = None
    timeout: float | None = None
    queue: str | None = None
    container_id: str | None = None
    started_at: float | None = None
    exit_code: int | None = None
    oom_killed: bool | None = None
    peak_memory: int | None = None
    finished_at: float | None = None
    image_digest: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def running(self) -> bool:
        """Whether the facts describe a job that has not ended yet."""
        return self.state == "running"


@dataclass(frozen=True)
class DeadLetter(_Fields):
    """The hash ``jobyard:dead:<task_id>``: a job that failed for good, every value JSON.

    ``message`` and ``queue_key`` (the broker message and the list it came from) are
    what ``jobyard dead requeue`` sends again; :meth:`listed` leaves them out.
    """

    task_id: str = ""
    died_at: float = 0.0
    name: str | None = None
    queue: str | None = None
    reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    attempt: int | None = None
    host: str | None = None
    why: str | None = None
    details: dict | None = None
    message: dict | None = None
    queue_key: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        text(self.task_id)
        number(self.died_at)

    def listed(self) -> dict[str, Any]:
        """The record as ``jobyard dead list`` shows it: without the stored message."""
        shown = self.to_dict()
        shown.pop("message", None)
        return shown
