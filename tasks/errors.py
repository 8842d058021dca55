"""Every error jobyard raises, under one catchable root: :class:`JobyardError`.

Below it, :class:`JobError` is every way a *job* can end other than with its value:
what ``AsyncResult.get()`` raises, so ``except JobError`` around ``.get()`` catches
job outcomes only. The agent's own errors (``executor.errors.AgentError``) and the
autoscaler's (``autoscaler.errors.AutoscalerError``) are the root's other branches.
Control flow, such as an agent handing a job back to its queue, is not an error and
stays outside the tree (as Celery's ``TaskPredicate`` does).

The agent raises these inside its Celery task; Celery stores them as JSON
(type, module, args) and ``AsyncResult.get()`` rebuilds them on the caller's side
from this module, so the caller catches the same classes the agent raised.

Each error carries a message and a ``details`` dict of JSON facts (exit code,
memory limit, peak memory, log tail, container id, attempt, ...). Both travel as
the exception's ``args``, which is what survives JSON serialisation.
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import OperationalError


class JobyardError(Exception):
    """Root of every error jobyard raises: job outcomes, agent and autoscaler errors."""


class SettingsError(JobyardError, ValueError):
    """A ``JOBYARD_*`` setting cannot be read; the message names the variable, never a secret's value."""


class RecordError(JobyardError, ValueError):
    """A stored record (agent state, job facts, dead letter, ...) is not of its documented
    form; readers skip such an entry with a warning (:mod:`tasks.records`)."""


class _Facts:
    """An error's message and a dict of JSON facts, kept as its ``args``."""

    def __init__(self, message: str = "", details: dict[str, Any] | None = None):
        super().__init__(message, dict(details or {}))

    @property
    def details(self) -> dict[str, Any]:
        """The error's facts."""
        return self.args[1]

    def __str__(self) -> str:
        return self.args[0]


class WriteNotDurable(_Facts, JobyardError):
    """Fewer replicas than ``JOBYARD_BROKER_MIN_REPLICAS`` confirmed a write within
    ``JOBYARD_BROKER_WAIT_TIMEOUT`` (:mod:`tasks.durable`).

    The write may still have been applied on the primary, and lost if it dies now.
    ``details`` holds ``acked``, ``needed`` and ``timeout_ms``.
    """


class PublishFailed(_Facts, JobyardError):
    """Sending a job did not certainly queue it: it may or may not be queued.

    Sending it again with the same task id (``details["task_id"]``, as
    ``apply_async(..., task_id=...)``) is safe: publishes are idempotent per task id
    (and retry number), so a job already queued is not queued twice.
    """


class PublishNotDurable(WriteNotDurable, PublishFailed):
    """A job's publish was not confirmed by enough replicas in time (``details``: ``acked``,
    ``needed``, ``timeout_ms``, ``task_id``)."""


class BrokerUnavailable(PublishFailed, OperationalError):
    """A job's publish did not reach the broker's Redis within the publish retries: it was
    down or unreachable, Sentinel named no primary, or the primary refused writes. Also
    kombu's ``OperationalError``, which Celery raises here (``details``: ``task_id``)."""


class JobError(JobyardError):
    """Root of every error a job can end with."""

    #: Short machine-readable reason, shown in status tables and metrics.
    reason = "error"

    def __init__(self, message: str = "", details: dict[str, Any] | None = None):
        super().__init__(message, dict(details or {}))

    @property
    def message(self) -> str:
        """The human-readable message."""
        return self.args[0] if self.args else ""

    @property
    def details(self) -> dict[str, Any]:
        """JSON facts about the failure (container, limits, exit code, ...)."""
        return self.args[1] if len(self.args) > 1 and isinstance(self.args[1], dict) else {}

    def __getattr__(self, name: str) -> Any:
        # Facts are reachable as attributes: err.exit_code, err.log_tail, ...
        if name.startswith("_") or name in ("args",):
            raise AttributeError(name)
        details = self.details
        if name in details:
            return details[name]
        raise AttributeError(f"{type(self).__name__} has no fact {name!r}")

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), self.args)


class InvalidJobSpec(JobError, ValueError):
    """The job's spec is malformed; ``field`` names the offending field."""

    reason = "invalid_spec"

    def __init__(self, message: str = "", details: dict[str, Any] | None = None, *, field: str | None = None):
        details = dict(details or {})
        if field is not None:
            details["field"] = field
        super().__init__(message, details)


class PayloadTooLarge(InvalidJobSpec):
    """The call's arguments are larger than the payload cap."""

    reason = "payload_too_large"


class JobRejected(JobError):
    """The host policy or the fleet's capacity refuses the job."""

    reason = "rejected"


class ImageNotFound(JobError):
    """The job's image is not present on the host that took it."""

    reason = "image_not_found"


class ImagePullFailed(JobError):
    """The agent could not pull the job's image from its registry.

    ``.reason`` is one of :data:`PULL_REASONS`; ``registry`` and ``repository`` name
    what was pulled. Never carries credentials. Not an :class:`ImageNotFound`: that
    one means the image is absent and no pull was asked for.
    """

    def __init__(self, message: str = "", details: dict[str, Any] | None = None, *, reason: str | None = None,
                 registry: str | None = None, repository: str | None = None):
        details = dict(details or {})
        if reason is not None:
            if reason not in PULL_REASONS:
                raise ValueError(f"unknown pull failure reason {reason!r}")
            details["reason"] = reason
        for name, value in (("registry", registry), ("repository", repository)):
            if value is not None:
                details[name] = value
        super().__init__(message, details)

    @property
    def reason(self) -> str:  # type: ignore[override]
        """Why the pull failed: ``auth``, ``not_found``, ``timeout``, ``unreachable`` or ``policy``."""
        return self.details.get("reason", "image_pull_failed")


#: Every ``ImagePullFailed.reason``.
PULL_REASONS = ("auth", "not_found", "timeout", "unreachable", "policy")


class JobRuntimeError(JobError):
    """The job started but did not finish with a value."""

    reason = "runtime_error"


class ContainerOOMKilled(JobRuntimeError):
    """The kernel killed the job's container at its memory limit."""

    reason = "oom_killed"


class JobTimeout(JobRuntimeError):
    """The job ran past its timeout and its container was killed."""

    reason = "timeout"


class JobFailed(JobRuntimeError):
    """The job exited non-zero or raised; see exit_code, log_tail, traceback."""

    reason = "failed"


class ResultTooLarge(JobFailed):
    """The job's result is over the agent's result cap, refused before it was parsed.

    ``size`` is the result's size in bytes and ``limit`` the cap (``JOBYARD_MAX_RESULT``);
    a result within the cap but with too many JSON values or nested too deep for the
    agent to parse in bounded memory is refused the same way (``values``/``depth``).
    """


class HostLost(JobRuntimeError):
    """The host or agent running the job went away before it finished."""

    reason = "host_lost"


class Revoked(JobError):
    """The job was revoked (cancelled) before it finished."""

    reason = "revoked"


class BackendError(JobError):
    """The agent could not talk to the container runtime."""

    reason = "backend_error"


__all__ = [
    "JobyardError",
    "SettingsError",
    "WriteNotDurable",
    "PublishFailed",
    "PublishNotDurable",
    "BrokerUnavailable",
    "JobError",
    "InvalidJobSpec",
    "PayloadTooLarge",
    "JobRejected",
    "ImageNotFound",
    "ImagePullFailed",
    "JobRuntimeError",
    "ContainerOOMKilled",
    "JobTimeout",
    "JobFailed",
    "ResultTooLarge",
    "HostLost",
    "Revoked",
    "BackendError",
]
