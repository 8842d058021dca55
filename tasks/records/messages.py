"""Records of what happened to messages: refused by an agent, decided by the autoscaler."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .base import Record, number, strings, text, whole

#: Bytes of each refused raw message kept for inspection.
SAMPLE_BYTES = 16 * 1024


@dataclass(frozen=True)
class RejectedMessage(Record):
    """One entry of the list ``jobyard:rejected``: a raw queue item an agent refused.

    ``raw`` is the start of the item (``SAMPLE_BYTES``) as text, UTF-8 or base64
    (``raw_encoding``); ``truncated`` says whether more was cut.
    """

    reason: str
    queue: str | None
    host: str | None
    at: float
    size: int
    truncated: bool
    raw_encoding: str
    raw: str

    @classmethod
    def of(cls, raw: bytes, reason: str, queue: str | None, host: str | None,
           sample_bytes: int = SAMPLE_BYTES) -> "RejectedMessage":
        """The record of refusing ``raw`` now, with a bounded sample of it."""
        sample = raw[:sample_bytes]
        try:
            shown, encoding = sample.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            shown, encoding = base64.b64encode(sample).decode(), "base64"
        return cls(reason, queue, host, time.time(), len(raw), len(raw) > sample_bytes, encoding, shown)

    def to_dict(self) -> dict[str, Any]:
        """``{"reason", "queue", "host", "at", "size", "truncated", "raw_encoding", "raw"}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RejectedMessage":
        """Read one entry; ``reason`` and ``at`` are required."""
        optional = lambda name: None if data.get(name) is None else text(data[name])  # noqa: E731
        return cls(text(data["reason"]), optional("queue"), optional("host"), number(data["at"]),
                   whole(data.get("size") or 0), bool(data.get("truncated")),
                   str(data.get("raw_encoding") or "utf-8"), str(data.get("raw") or ""))


@dataclass(frozen=True)
class Decision(Record):
    """One entry of the list ``jobyard:autoscaler:decisions``: a tick of the autoscaler.

    The timeline row's fields (backlog, hosts now and wanted, the action's direction,
    count and reason), with ``hosts`` and ``removed`` as lists of hostnames.
    """

    time: float = 0.0
    ready: int = 0
    in_flight: int = 0
    running: int = 0
    waiting: int = 0
    demand_cpus: float = 0.0
    demand_memory: int = 0
    hosts_current: int = 0
    hosts_desired: int = 0
    draining: int = 0
    decision: str = ""
    count: int = 0
    reason: str = ""
    hosts: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The entry as the autoscaler has always pushed it."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        """Read one entry; missing fields take their defaults."""
        values = {f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None}
        for name in ("time", "demand_cpus"):
            if name in values:
                values[name] = number(values[name])
        for name in ("ready", "in_flight", "running", "waiting", "demand_memory", "hosts_current",
                     "hosts_desired", "draining", "count"):
            if name in values:
                values[name] = whole(values[name])
        for name in ("hosts", "removed"):
            if name in values:
                values[name] = strings(values[name])
        return cls(**values)
