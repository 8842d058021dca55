"""Every Redis key jobyard itself writes, in one place.

All live in the broker's Redis database, next to the kombu queues, under the
``jobyard:`` prefix. Every key that describes something transient has a TTL, so
state cleans itself up when its writer dies.
"""

from __future__ import annotations

PREFIX = "jobyard"

#: Sorted set: agent hostname -> last heartbeat (unix time).
AGENTS = f"{PREFIX}:agents"

#: Sorted set of hosts the autoscaler is draining: hostname -> drain start time.
DRAINING = f"{PREFIX}:draining"

#: List of the autoscaler's latest decisions (JSON), newest first, capped.
DECISIONS = f"{PREFIX}:autoscaler:decisions"

#: Sorted set of dead-lettered job ids -> time they died.
DEAD = f"{PREFIX}:dead"

#: Sorted set: delivery tag of a queued message that could run on a host but was
#: passed over for smaller ones -> when it first was (the backfill bound, tasks.transport).
SKIPPED = f"{PREFIX}:skipped"


def reservations(queue: str) -> str:
    """Hash: delivery tag of a queued message passed over past the backfill bound ->
    "<host> <unix time>", the host holding itself free for it and when it last saw it
    (tasks.transport)."""
    return f"{PREFIX}:reserve:{queue}"


def agent(hostname: str) -> str:
    """JSON of an agent's capacity, reservations and running jobs (TTL'd)."""
    return f"{PREFIX}:agent:{hostname}"


def job_facts(task_id: str) -> str:
    """Hash of a job's container facts: container id, image, limits, exit code, ..."""
    return f"{PREFIX}:job:{task_id}"


def job_logs(task_id: str) -> str:
    """A job's captured output (capped), kept after its container is gone."""
    return f"{PREFIX}:logs:{task_id}"


def bell(queue: str) -> str:
    """A queue's doorbell: pushed with every message, popped by waiting agents (tasks.transport)."""
    return f"{PREFIX}:bell:{queue}"


def published(task_id: str, retries: int) -> str:
    """Marks one publish of a job (its id and retry number) for a while: retries of it are no-ops."""
    return f"{PREFIX}:published:{task_id}:{retries}"


def wake(hostname: str) -> str:
    """An agent's own doorbell, rung when its capacity frees (tasks.transport)."""
    return f"{PREFIX}:wake:{hostname}"


def lease(task_id: str) -> str:
    """A running job's lease, renewed by its agent's heartbeat."""
    return f"{PREFIX}:lease:{task_id}"


def dead_job(task_id: str) -> str:
    """A dead-lettered job's message, reason and last error."""
    return f"{PREFIX}:dead:{task_id}"


def unfit(task_id: str) -> str:
    """Why a waiting job fits no host right now (TTL'd)."""
    return f"{PREFIX}:unfit:{task_id}"

#: JSON {"cpus", "memory", "queues"}: the host shape the autoscaler adds, so agents
#: do not reject a job that fits a host the autoscaler could start.
AUTOSCALER_SHAPE = f"{PREFIX}:autoscaler:shape"


def attempts(task_id: str) -> str:
    """Counter of container starts for a job: its attempt number."""
    return f"{PREFIX}:attempts:{task_id}"


def rejected() -> str:
    """Capped list of raw messages agents refused (JSON: reason, queue, host, raw), newest first."""
    return f"{PREFIX}:rejected"


def lost(task_id: str) -> str:
    """Counter of a job's deliveries whose host died before it finished."""
    return f"{PREFIX}:lost:{task_id}"


def retried(task_id: str) -> str:
    """The highest Celery retry number sent for a job: older deliveries are stale."""
    return f"{PREFIX}:retried:{task_id}"
