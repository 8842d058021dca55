"""jobyard for callers: run Python functions and commands in isolated containers.

    from tasks import job

    @job(memory="256Mi", cpus=0.5, timeout=60)
    def grade(submission_id: int) -> dict: ...

    grade.delay(42).get()   # runs in its own container on an executor agent
"""

from .app import app, create_app
from .errors import JobError
from .job import JobFunction, command_job, job
from .spec import JobSpec

__all__ = ["app", "create_app", "job", "command_job", "JobFunction", "JobSpec", "JobError"]
