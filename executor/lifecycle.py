"""A job's life on an agent: admit → launch → verdict → retry or dead letter.

The body of ``jobyard.run`` (:mod:`executor.task`) calls :func:`supervise` with the
task it was handed, whose ``agent`` is the agent that registered it. It validates
the spec the message carries, drops deliveries that must not run (:mod:`executor.messages`),
checks the spec against the host policy, waits for capacity (:mod:`executor.placement`),
launches the container (:mod:`executor.container`), and turns its outcome into a
value or a typed error (:mod:`executor.verdict`). A failure the job's retry policy
covers is sent again (Celery retry, with more memory after an OOM when asked); a
job that fails for good is dead-lettered. The job's code never runs here.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject
from celery.states import STARTED

from tasks.errors import BackendError, HostLost, InvalidJobSpec, JobError, Revoked, WriteNotDurable
from tasks.images import parse_image_ref
from tasks.names import SPEC_HEADER
from tasks.spec import JobSpec

from . import host_images, job_facts, messages
from .bounds import ERROR_BYTES, head
from .container import JobCall, Outcome
from .deadletter import DeadLetters
from .errors import EngineUnavailable
from .placement import HandBack
from .retry import MEMORY_SCALE_HEADER, decide
from .verdict import verdict

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)

#: A job whose host died this many times is dead-lettered instead of run again.
MAX_LOST_DELIVERIES = 3
#: The broker's Redis unreachable (redis-py's MasterNotFoundError and READONLY's
#: reconnect are ConnectionErrors): not an outcome of the job.
BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError)
#: Errors that no requeue could fix: they are not dead-lettered.
_NOT_DEAD = (InvalidJobSpec, Revoked)


def supervise(task: Task, args: tuple, kwargs: dict) -> Any:
    """Run the job this task's message describes in a container on the task's agent."""
    agent: Agent = task.agent
    call = job_call(task.request, args, kwargs)
    try:
        _screen_delivery(agent, task, call)
        _store_started(agent, task, call)
        return execute(agent, call)
    except HandBack:
        agent.held.hand_back(call.task_id)
        log.info("job %s[%s] handed back: another host has room for it now", call.spec.name, call.task_id)
        raise Ignore() from None
    except JobError as exc:
        _retry_or_dead_letter(agent, task, call, exc)
        raise
    except BROKER_ERRORS as exc:
        # The broker's Redis went away between the take and the job's checks (a restart,
        # a failover): the job is not this delivery's to end. The lease brings it back.
        _leave_to_lease(agent, call, exc)


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


def execute(agent: "Agent", call: JobCall) -> Any:
    """Admit, run and judge one job; return its value or raise its typed error.

    Raises :class:`~executor.placement.HandBack` when another host should run it.
    """
    agent.config.policy.check(call.spec)
    agent.job_images.add(call.task_id, parse_image_ref(call.spec.image).normalised)
    try:
        host_images.ensure_image(agent, call)
        _admit(agent, call)
    except BaseException:
        agent.job_images.discard(call.task_id)
        raise
    finally:
        agent.gate.refresh()
    outcome: list[Outcome] = []
    try:
        job_facts.record(agent, call, state="running")
        return _launch_and_judge(agent, call, outcome)
    except JobError as exc:
        if isinstance(exc, BackendError):
            agent.check_engine()
        if not outcome:  # ended before its container produced an outcome
            job_facts.write_facts(agent, call.task_id, {"state": exc.reason})
            agent.notify("job_finished", call, exc.reason, None)
        raise
    finally:
        agent.stopping.discard(call.task_id)
        agent.job_images.discard(call.task_id)
        agent.ledger.release(call.task_id)
        agent.gate.refresh()
        agent.publish(wake=True)


def _admit(agent: "Agent", call: JobCall) -> None:
    waited = agent.placement.admit(call, lambda: call.task_id in agent.stopping)
    call.attempt = job_facts.count_attempt(agent, call)
    agent.notify("job_admitted", call, waited)
    agent.publish()


def _launch_and_judge(agent: "Agent", call: JobCall, outcome: list[Outcome]) -> Any:
    """Run the container, then judge its outcome (appended to ``outcome``) into a value or error."""
    launched = time.monotonic()

    def started(result: Outcome) -> None:
        job_facts.record(agent, call, result, state="running")
        agent.notify("job_started", call, time.monotonic() - launched)

    try:
        outcome.append(agent.launcher.run(call, should_stop=lambda: call.task_id in agent.stopping,
                                          on_start=started))
    except EngineUnavailable as exc:
        log.warning("%s; handing %s back and pausing intake", exc, call.task_id)
        agent.engine_lost()
        job_facts.uncount_attempt(agent, call)
        raise HandBack() from exc
    try:
        value = verdict(call, outcome[0], agent.name)
    except JobError as exc:
        job_facts.finish(agent, call, outcome[0], exc.reason)
        raise
    job_facts.finish(agent, call, outcome[0], "succeeded")
    return value


def _screen_delivery(agent: "Agent", task: Task, call: JobCall) -> None:
    """Drop a delivery that must not run; count one that follows a lost host."""
    why = (messages.superseded(agent.redis, call.task_id, int(task.request.retries or 0))
           or messages.ended(task.backend, call.task_id))
    if why:
        log.warning("job %s[%s]: %s", call.spec.name, call.task_id, why)
        agent.settle(call.task_id, messages.delivery_tag(task.request))  # this delivery, not one running
        raise Ignore()
    if not (getattr(task.request, "delivery_info", None) or {}).get("redelivered"):
        return
    lost = messages.count_lost(agent.redis, call.task_id)
    if lost > MAX_LOST_DELIVERIES:
        raise HostLost(f"{call.spec.name}: its host was lost {lost - 1} times; not running it again",
                       {"lost": lost - 1, "attempt": call.attempt})
    log.warning("job %s[%s] redelivered after its host was lost (%d so far)", call.spec.name, call.task_id, lost)


def _store_started(agent: "Agent", task: Task, call: JobCall) -> None:
    """Store STARTED as Celery's tracer would with ``task_track_started``, once the delivery may run.

    A STARTED no replica confirmed starts no container: the delivery is left to the lease.
    """
    if task.app.conf.task_track_started and not getattr(task.request, "ignore_result", False):
        try:
            task.backend.store_result(task.request.id, {"pid": os.getpid(), "hostname": task.request.hostname},
                                      STARTED, request=task.request)
        except WriteNotDurable as exc:
            _leave_to_lease(agent, call, exc)


def _retry_or_dead_letter(agent: "Agent", task: Task, call: JobCall, exc: JobError) -> None:
    """Send a retry the job's policy covers (raises Celery's Retry), or dead-letter the job."""
    retries = int(task.request.retries or 0)
    decision = decide(call.spec, exc, retries, _memory_scale(task.request))
    if decision.retry:
        log.info("job %s[%s] attempt %d failed (%s); %s in %.1fs", call.spec.name, call.task_id,
                 call.attempt, exc.reason, decision.reason, decision.delay)
        # The publish script raises the job's retry mark with the retry's message, so
        # this delivery, if it comes back unacknowledged, is dropped as stale.
        headers = agent.held.retry_headers(call.task_id, decision.memory_scale, MEMORY_SCALE_HEADER)
        try:
            sent = task.retry(exc=exc, countdown=decision.delay, max_retries=call.spec.retries, headers=headers,
                              throw=False)
        except Reject as refused:  # Celery's wrapping of a failed publish
            if isinstance(refused.reason, WriteNotDurable):
                # The retry may or may not be queued: the lease brings this delivery back,
                # dropped as stale if the retry's mark survived (messages.superseded).
                _leave_to_lease(agent, call, refused.reason)
            raise _unsent_retry(agent, call, refused.reason) from exc
        raise sent
    log.info("job %s[%s] ended: %s: %s", call.spec.name, call.task_id, type(exc).__name__,
             head(str(exc), ERROR_BYTES))
    if not isinstance(exc, _NOT_DEAD):
        dead_letter(agent, call, exc, decision.reason)


def _leave_to_lease(agent: "Agent", call: JobCall, why: Exception) -> None:
    """End this delivery unsettled (Celery's Ignore): its record stays for the lease to bring back."""
    log.warning("job %s[%s]: %s; its delivery is left to the lease", call.spec.name, call.task_id, why)
    agent.outcome_not_stored(call.task_id)
    raise Ignore() from why


def _unsent_retry(agent: "Agent", call: JobCall, why: Any) -> BackendError:
    """The typed end of a job whose retry could not be published: dead-lettered, to requeue."""
    error = BackendError(f"{call.spec.name}: its retry could not be sent: {head(str(why), ERROR_BYTES)}",
                         {"attempt": call.attempt})
    log.warning("job %s[%s]: %s", call.spec.name, call.task_id, error)
    dead_letter(agent, call, error, "its retry could not be sent")
    return error


def dead_letter(agent: "Agent", call: JobCall, error: JobError, why: str) -> None:
    """Store a job that failed for good in the dead-letter store."""
    payload, queue_key = agent.held.requeue_payload(call.task_id)
    record = {"name": call.spec.name, "queue": call.spec.queue, "reason": error.reason,
              "error_type": type(error).__name__, "error": str(error), "attempt": call.attempt,
              "host": agent.name, "why": why,
              "details": {k: v for k, v in error.details.items() if k not in ("traceback",)}}
    if call.image_digest:
        record["image_digest"] = call.image_digest
    try:
        DeadLetters(agent.redis).add(call.task_id, record, payload, queue_key)
    except Exception as exc:  # noqa: BLE001 - the caller still gets the error
        log.warning("could not dead-letter %s: %s", call.task_id, exc)


def _memory_scale(request: Any) -> float:
    value = getattr(request, MEMORY_SCALE_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(MEMORY_SCALE_HEADER, 1.0)
    try:
        return max(1.0, min(float(value), 1024.0))
    except (TypeError, ValueError):
        return 1.0


