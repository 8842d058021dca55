"""A job's facts and attempt count in Redis, written only here (:class:`tasks.records.JobFacts`).

What ``jobyard job ID``, Flower's container row and the dead letter show of a job:
its host, image and digest, limits, container, exit code, OOM flag and peak memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tasks import keys
from tasks.records import JobFacts

from .container import JobCall, Outcome

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


def count_attempt(agent: "Agent", call: JobCall) -> int:
    """Count this start in Redis: the attempt number survives redeliveries."""
    try:
        key = keys.attempts(call.task_id)
        pipe = agent.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, keys.JOB_TTL)
        return max(int(pipe.execute()[0]), call.attempt)
    except Exception as exc:  # noqa: BLE001 - fall back to Celery's own count
        log.warning("could not count attempt of %s: %s", call.task_id, exc)
        return call.attempt


def uncount_attempt(agent: "Agent", call: JobCall) -> None:
    try:
        agent.redis.decr(keys.attempts(call.task_id))
    except Exception as exc:  # noqa: BLE001 - only the attempt number is off by one
        log.warning("could not uncount attempt of %s: %s", call.task_id, exc)


def record(agent: "Agent", call: JobCall, outcome: Outcome | None = None, state: str = "running") -> None:
    spec = call.spec
    facts: dict[str, Any] = {
        "name": spec.name, "host": agent.name, "image": spec.image, "state": state,
        "attempt": call.attempt, "cpus": spec.cpus, "cpus_limit": spec.effective_cpus_limit,
        "memory": spec.memory, "memory_limit": spec.effective_memory_limit, "pids": spec.pids,
        "timeout": spec.timeout, "queue": spec.queue, "image_digest": call.image_digest,
    }
    if outcome is not None:
        facts.update(container_id=outcome.container_id, started_at=outcome.started_at)
        outcome.facts.update(container_id=outcome.container_id, image=spec.image,
                             memory_limit=spec.effective_memory_limit,
                             cpus_limit=spec.effective_cpus_limit, attempt=call.attempt)
    write_facts(agent, call.task_id, facts)


def finish(agent: "Agent", call: JobCall, outcome: Outcome, state: str) -> None:
    facts = {"state": state, "exit_code": outcome.exit_code, "oom_killed": outcome.oom_killed,
             "peak_memory": outcome.peak_memory, "finished_at": outcome.finished_at,
             "container_id": outcome.container_id}
    write_facts(agent, call.task_id, facts)
    agent.notify("job_finished", call, state, outcome)
    try:
        agent.redis.set(keys.job_logs(call.task_id), outcome.logs, ex=keys.JOB_TTL)
    except Exception as exc:  # noqa: BLE001 - facts are best effort; the result is not
        log.warning("could not store logs of %s: %s", call.task_id, exc)


def write_facts(agent: "Agent", task_id: str, facts: dict[str, Any]) -> None:
    key = keys.job_facts(task_id)
    try:
        pipe = agent.redis.pipeline()
        pipe.hset(key, mapping=JobFacts.from_json(facts).to_redis())
        pipe.expire(key, keys.JOB_TTL)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001
        log.warning("could not store facts of %s: %s", task_id, exc)
