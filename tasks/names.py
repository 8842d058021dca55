"""Names every side of jobyard shares: the task, the spec header, the job label, the node name.

Callers publish under these names, agents consume and label under them, and operator
tools look them up; each is written here once.
"""

from __future__ import annotations

#: The one Celery task every job travels as; agents register its body (executor.task).
RUN_TASK = "jobyard.run"
#: The message header carrying a job's spec.
SPEC_HEADER = "jobyard_spec"
#: The container label naming the task id of the job a container runs.
JOB_LABEL = "jobyard.job"


def node_name(hostname: str) -> str:
    """The Celery node name of the agent on ``hostname``."""
    return f"jobyard@{hostname}"
