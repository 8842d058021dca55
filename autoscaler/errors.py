"""Every error the autoscaler raises, under one root: :class:`AutoscalerError`.

Foreign exceptions (boto3, Docker, Redis, OS) are translated once, where they
happen, with ``raise ... from exc``.
"""

from tasks.errors import JobyardError


class AutoscalerError(JobyardError):
    """Root of the autoscaler's errors."""


class ConfigError(AutoscalerError, ValueError):
    """An autoscaler option (bounds, host shape, windows) is malformed."""


class MetricError(AutoscalerError):
    """The broker could not be read, or held something that is not a Celery message."""


class ControlError(AutoscalerError):
    """A drain step could not reach Redis or the workers' remote control."""


class ProviderError(AutoscalerError):
    """A host provider could not list, add or remove hosts."""


class RecordError(AutoscalerError):
    """A timeline file could not be written, read or plotted."""
