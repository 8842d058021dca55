"""Errors of the agent itself (configuration, start-up), under one root.

Errors a *job* ends with live in :mod:`tasks.errors`; these are for the operator.
"""

from tasks.errors import JobyardError


class AgentError(JobyardError):
    """Root of the agent's own errors."""


class DockerUnavailable(AgentError):
    """The Docker Engine cannot be reached or answers with an error."""


class ImageBuildError(AgentError):
    """``jobyard image build`` could not assemble or build the image."""


class InvalidAgentConfig(AgentError, ValueError):
    """An agent option (capacity, policy, queues) is malformed."""


class EngineUnavailable(AgentError):
    """The Docker Engine could not be reached before a job's container started.

    The job never ran, so it is handed back rather than charged an attempt.
    """
