"""The body of the ``jobyard.run`` task: supervise one job's container, never run it.

Validate the spec the message carries, check it against the host policy, wait for
capacity, launch the container, and turn its outcome into a value or a typed error.
A failure the job's retry policy covers is sent again (Celery retry, with more
memory after an OOM when asked); a job that fails for good is dead-lettered.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.states import READY_STATES

from tasks import keys
from tasks.app import SPEC_HEADER
from tasks.errors import HostLost, InvalidJobSpec, JobError, Revoked
from tasks.spec import JobSpec

from .bounds import ERROR_BYTES, head
from .container import JobCall
from .placement import HandBack
from .request import hand_back, messages
from .retry import MEMORY_SCALE_HEADER, decide

log = logging.getLogger(__name__)

#: A job whose host died this many times is dead-lettered instead of run again.
MAX_LOST_DELIVERIES = 3
#: How long the retry mark of a job is kept.
RETRIED_TTL = 14 * 24 * 3600
#: Errors that no requeue could fix: they are not dead-lettered.
_NOT_DEAD = (InvalidJobSpec, Revoked)


def supervise(task: Task, args: tuple, kwargs: dict) -> Any:
    """Run the job this task's message describes in a container on this agent."""
    from .agent import Agent

    call = job_call(task.request, args, kwargs)
    agent = Agent.current()
    try:
        _drop_if_superseded(agent, call, task.request)
        _drop_if_ended(agent, call, task)
        _check_lost(agent, call, task.request)
        return agent.execute(call)
    except HandBack:
        hand_back(call.task_id)
        log.info("job %s[%s] handed back: another host has room for it now", call.spec.name, call.task_id)
        raise Ignore() from None
    except JobError as exc:
        scale = _memory_scale(task.request)
        decision = decide(call.spec, exc, int(task.request.retries or 0), scale)
        if decision.retry:
            log.info("job %s[%s] attempt %d failed (%s); %s in %.1fs", call.spec.name, call.task_id,
                     call.attempt, exc.reason, decision.reason, decision.delay)
            # Mark the retry before sending it: if this agent dies before acknowledging
            # the current delivery, that delivery comes back and must not run again.
            agent.redis.set(keys.retried(call.task_id), int(task.request.retries or 0) + 1, ex=RETRIED_TTL)
            raise task.retry(exc=exc, countdown=decision.delay, max_retries=call.spec.retries,
                             headers=_retry_headers(call.task_id, decision.memory_scale))
        log.info("job %s[%s] ended: %s: %s", call.spec.name, call.task_id, type(exc).__name__,
                 head(str(exc), ERROR_BYTES))
        if not isinstance(exc, _NOT_DEAD):
            agent.dead_letter(call, exc, decision.reason)
        raise


def job_call(request: Any, args: tuple, kwargs: dict) -> JobCall:
    """Build the :class:`JobCall` for a Celery request, validating what arrived."""
    raw = getattr(request, SPEC_HEADER, None)
    if raw is None:
        raw = (getattr(request, "headers", None) or {}).get(SPEC_HEADER)
    if raw is None:
        raise InvalidJobSpec(f"message {request.id} carries no {SPEC_HEADER} header", field="spec")
    spec = JobSpec.from_dict(raw).scaled_memory(_memory_scale(request))
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise InvalidJobSpec(f"{spec.name}: malformed call arguments", field="args")
    return JobCall(request.id, spec, tuple(args), dict(kwargs), attempt=attempt_of(request))


def attempt_of(request: Any) -> int:
    """Celery's own count (1 + retries); the agent raises it from its Redis counter."""
    return 1 + int(getattr(request, "retries", 0) or 0)


def _memory_scale(request: Any) -> float:
    value = getattr(request, MEMORY_SCALE_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(MEMORY_SCALE_HEADER, 1.0)
    try:
        return max(1.0, min(float(value), 1024.0))
    except (TypeError, ValueError):
        return 1.0


def _retry_headers(task_id: str, memory_scale: float) -> dict[str, Any]:
    message = messages.get(task_id)
    headers = dict(getattr(message, "headers", None) or {})
    kept = {k: v for k, v in headers.items() if k.startswith("jobyard_") and k != "jobyard_seal"}
    kept[MEMORY_SCALE_HEADER] = memory_scale
    return kept


def _drop_if_superseded(agent, call: JobCall, request: Any) -> None:
    """Acknowledge, without running, a delivery older than a retry already sent."""
    sent = agent.redis.get(keys.retried(call.task_id))
    if sent is not None and int(getattr(request, "retries", 0) or 0) < int(sent):
        _drop(agent, call, f"dropping a stale delivery (retry {sent} was already sent)")


def _drop_if_ended(agent, call: JobCall, task: Task) -> None:
    """Acknowledge, without running, a delivery of a job whose outcome is already stored.

    An agent killed after storing the outcome but before settling the message
    leaves it recorded as taken; the lease sweep then delivers it again.
    """
    state = task.backend.get_task_meta(call.task_id).get("status")
    if state in READY_STATES:
        _drop(agent, call, f"dropping a delivery of a job that already ended ({state})")


def _drop(agent, call: JobCall, why: str) -> None:
    log.warning("job %s[%s]: %s", call.spec.name, call.task_id, why)
    agent.settle(call.task_id)
    raise Ignore()


def _check_lost(agent, call: JobCall, request: Any) -> None:
    """Count a redelivery after a lost host; past the cap, fail it as HostLost."""
    if not (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        return
    lost = agent.redis.incr(keys.lost(call.task_id))
    agent.redis.expire(keys.lost(call.task_id), 14 * 24 * 3600)
    if lost > MAX_LOST_DELIVERIES:
        raise HostLost(f"{call.spec.name}: its host was lost {lost - 1} times; not running it again",
                       {"lost": lost - 1, "attempt": call.attempt})
    log.warning("job %s[%s] redelivered after its host was lost (%d so far)", call.spec.name, call.task_id, lost)
