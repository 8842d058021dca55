"""The host's policy: what a job may ask of this agent.

The policy is the agent's, never the caller's: allowed images, the largest job
(CPUs, memory, pids, timeout), whether a job may have a network.

An ``allowed_images`` glob matches an image when it matches the reference as the job
wrote it or its normalised form (``busybox`` is ``docker.io/library/busybox:latest``).
A registry host always has a ``.`` or ``:`` (or is ``localhost``) and a reference
without one is Docker Hub's, so a glob that starts with ``registry.example:5000/``
matches only images from that registry, written either way.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tasks.errors import JobRejected
from tasks.images import ImageRef, parse_image_ref
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
    require_digest: bool = False

    def check(self, spec: JobSpec) -> None:
        """Raise :class:`JobRejected` naming the rule ``spec`` breaks."""
        self.check_image(spec)
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

    def check_image(self, spec: JobSpec) -> None:
        """Refuse an image outside ``allowed_images``, or without a digest under ``require_digest``.

        Checked before any pull; the rejection's ``details["reason"]`` is ``"policy"``.
        """
        ref = parse_image_ref(spec.image)
        if not any(fnmatch.fnmatchcase(spec.image, pattern) or fnmatch.fnmatchcase(ref.normalised, pattern)
                   for pattern in self.allowed_images):
            raise JobRejected(
                f"{spec.name}: image {ref.normalised!r} (registry {ref.registry}) is not allowed on this host "
                f"(allowed: {', '.join(self.allowed_images)})", _image_details("image", spec.image, ref))
        if self.require_digest and not ref.pinned:
            raise JobRejected(f"{spec.name}: image {spec.image!r} names no @sha256: digest, and this host "
                              f"runs only pinned images", _image_details("digest", spec.image, ref))


def _image_details(rule: str, image: str, ref: ImageRef) -> dict:
    return {"rule": rule, "reason": "policy", "image": image, "normalised": ref.normalised,
            "registry": ref.registry}
