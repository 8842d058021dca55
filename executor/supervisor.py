"""The body of the ``jobyard.run`` task: supervise one job's container, never run it.

Validate the spec the message carries, check it against the host policy, wait for
capacity, launch the container, and turn its outcome into a value or a typed error.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from tasks.app import SPEC_HEADER
from tasks.errors import InvalidJobSpec, JobError
from tasks.spec import JobSpec

from .container import JobCall
from .placement import HandBack
from .request import hand_back

log = logging.getLogger(__name__)


def supervise(task: Task, args: tuple, kwargs: dict) -> Any:
    """Run the job this task's message describes in a container on this agent."""
    from .agent import Agent

    call = job_call(task.request, args, kwargs)
    agent = Agent.current()
    try:
        return agent.execute(call)
    except HandBack:
        hand_back(call.task_id)
        log.info("job %s[%s] handed back: another host has room for it now", call.spec.name, call.task_id)
        raise Ignore() from None
    except JobError as exc:
        log.info("job %s[%s] ended: %s: %s", call.spec.name, call.task_id, type(exc).__name__, exc)
        raise


def job_call(request: Any, args: tuple, kwargs: dict) -> JobCall:
    """Build the :class:`JobCall` for a Celery request, validating what arrived."""
    raw = getattr(request, SPEC_HEADER, None)
    if raw is None:
        raw = (getattr(request, "headers", None) or {}).get(SPEC_HEADER)
    if raw is None:
        raise InvalidJobSpec(f"message {request.id} carries no {SPEC_HEADER} header", field="spec")
    spec = JobSpec.from_dict(raw)
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise InvalidJobSpec(f"{spec.name}: malformed call arguments", field="args")
    return JobCall(request.id, spec, tuple(args), dict(kwargs), attempt=attempt_of(request))


def attempt_of(request: Any) -> int:
    """Celery's own count (1 + retries); the agent raises it from its Redis counter."""
    return 1 + int(getattr(request, "retries", 0) or 0)
