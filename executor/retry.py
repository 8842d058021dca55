"""Retry policy: which failures a job retries, after how long, with how much memory.

Pure functions of the spec, the error and the attempt count; the supervisor acts.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.errors import (BackendError, ContainerOOMKilled, ImageNotFound, ImagePullFailed, JobError, JobFailed,
                          JobTimeout)
from tasks.spec import JobSpec

#: Header carrying the memory multiplier earned by OOM retries.
MEMORY_SCALE_HEADER = "jobyard_memory_scale"
#: Longest wait between two attempts.
MAX_DELAY = 300.0

_CLASSES = ((ContainerOOMKilled, "oom"), (JobTimeout, "timeout"), (JobFailed, "failed"),
            (BackendError, "backend"), (ImageNotFound, "image"))
#: Pull failures another attempt may get past; auth, not_found and policy never do.
_TRANSIENT_PULLS = ("unreachable", "timeout")


@dataclass(frozen=True)
class RetryDecision:
    """Retry or not; if so, after ``delay`` seconds with memory × ``memory_scale``."""

    retry: bool
    delay: float = 0.0
    memory_scale: float = 1.0
    reason: str = ""


def failure_class(error: JobError) -> str | None:
    """The retry-policy class of ``error`` (None for errors no retry can fix)."""
    if isinstance(error, ImagePullFailed):
        return "image" if error.reason in _TRANSIENT_PULLS else None
    for cls, name in _CLASSES:
        if isinstance(error, cls):
            return name
    return None


def decide(spec: JobSpec, error: JobError, retries_done: int, memory_scale: float = 1.0) -> RetryDecision:
    """Whether ``error`` on attempt ``retries_done + 1`` earns another attempt."""
    kind = failure_class(error)
    if kind is None:
        return RetryDecision(False, reason=f"{type(error).__name__} is never retried")
    if retries_done >= spec.retries:
        return RetryDecision(False, reason=f"no retries left ({spec.retries} allowed)")
    exit_code = error.details.get("exit_code")
    if kind not in spec.retry_on and exit_code not in spec.retry_on:
        return RetryDecision(False, reason=f"{kind} (exit code {exit_code}) is not in retry_on")
    delay = min(spec.retry_delay * (2 ** retries_done), MAX_DELAY)
    scale = memory_scale
    if kind == "oom" and spec.retry_memory_factor:
        scale = memory_scale * spec.retry_memory_factor
    return RetryDecision(True, delay, scale, reason=f"retrying after {kind}")
