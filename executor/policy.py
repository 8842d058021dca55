"""The host's policy: what a job may ask of this agent.

The policy is the agent's, never the caller's: allowed images, the largest job
(CPUs, memory, pids, timeout), whether a job may have a network.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tasks.errors import JobRejected
from tasks.spec import JobSpec
from tasks.units import format_memory

#: Most processes one job may ask for unless the agent says otherwise: the spec
#: accepts up to a million, which no host should grant by default.
DEFAULT_MAX_PIDS = 4096


@dataclass(frozen=True)
class HostPolicy:
    """Limits this host puts on every job it accepts."""

    allowed_images: tuple[str, ...] = ("*",)
    max_cpus: float | None = None
    max_memory: int | None = None
    allow_network: bool = False
    max_timeout: float | None = None
    max_pids: int | None = DEFAULT_MAX_PIDS

    def check(self, spec: JobSpec) -> None:
        """Raise :class:`JobRejected` naming the rule ``spec`` breaks."""
        if not any(fnmatch.fnmatchcase(spec.image, pattern) for pattern in self.allowed_images):
            raise JobRejected(
                f"{spec.name}: image {spec.image!r} is not allowed on this host "
                f"(allowed: {', '.join(self.allowed_images)})", {"rule": "image", "image": spec.image})
        if spec.network != "none" and not self.allow_network:
            raise JobRejected(f"{spec.name}: network {spec.network!r} is not allowed on this host",
                              {"rule": "network", "network": spec.network})
        if self.max_cpus is not None and spec.effective_cpus_limit > self.max_cpus:
            raise JobRejected(
                f"{spec.name}: cpus {spec.effective_cpus_limit:g} exceeds this host's per-job maximum "
                f"{self.max_cpus:g}", {"rule": "cpus", "request": spec.effective_cpus_limit, "max": self.max_cpus})
        if self.max_memory is not None and spec.effective_memory_limit > self.max_memory:
            raise JobRejected(
                f"{spec.name}: memory {format_memory(spec.effective_memory_limit)} exceeds this host's "
                f"per-job maximum {format_memory(self.max_memory)}",
                {"rule": "memory", "request": spec.effective_memory_limit, "max": self.max_memory})
        if self.max_pids is not None and spec.pids > self.max_pids:
            raise JobRejected(f"{spec.name}: pids {spec.pids} exceeds this host's per-job maximum {self.max_pids}",
                              {"rule": "pids", "request": spec.pids, "max": self.max_pids})
        if self.max_timeout is not None and spec.timeout > self.max_timeout:
            raise JobRejected(f"{spec.name}: timeout {spec.timeout:g}s exceeds this host's maximum "
                              f"{self.max_timeout:g}s",
                              {"rule": "timeout", "request": spec.timeout, "max": self.max_timeout})
