"""The body of the ``jobyard.run`` task, registered by the agent on its own app.

Callers publish ``jobyard.run`` by name and register nothing (:mod:`tasks.app`);
an agent registers this task when it starts, bound to itself, so the task, its
requests and the job's life reach the agent through the task, never a global.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from tasks.names import RUN_TASK

from .lifecycle import supervise
from .request import ContainerRequest

if TYPE_CHECKING:
    from .agent import Agent


class ContainerJobTask(Task):
    """The Celery task behind every job: it supervises a container and never runs job code."""

    name = RUN_TASK
    # Turns revoke(terminate=True) into stopping the job's container instead of
    # signalling a pool process.
    Request = ContainerRequest
    typing = False
    acks_late = True
    reject_on_worker_lost = True
    # Celery's tracer would store STARTED before the body can drop a delivery of a
    # job that already ended; supervise stores it after the drop checks instead.
    track_started = False

    def __init__(self, agent: "Agent"):
        self.agent = agent

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Supervise the job's container; the job's code runs only inside it."""
        return supervise(self, args, kwargs)


def register(app: Celery, agent: "Agent") -> ContainerJobTask:
    """Register ``jobyard.run`` on ``app``, bound to ``agent`` (replacing an earlier one)."""
    task = ContainerJobTask(agent)
    app.tasks.register(task)
    task.bind(app)
    return task
