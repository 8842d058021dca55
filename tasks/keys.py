"""Every Redis key jobyard itself writes, in one place.

All live in the broker's Redis database, next to the kombu queues, under the
``jobyard:`` prefix. Each key either has a TTL, so state cleans itself up when its
writer dies, or is swept by a live process; its docstring says which. The keys
without a TTL of their own are listed in :data:`SWEPT`.
"""

from __future__ import annotations

PREFIX = "jobyard"

#: Seconds a host that stopped heartbeating stays in :data:`AGENTS` (``jobyard status``
#: lists it as lost) before a live agent sweeps it out.
AGENTS_RETENTION = 3600

#: Sorted set: agent hostname -> last heartbeat (unix time). Swept by every live
#: agent's heartbeat (entries older than :data:`AGENTS_RETENTION`), which also
#: renews the set's TTL of :data:`AGENTS_RETENTION`: it goes when the last agent
#: has been silent that long. A clean stop removes its own entry.
AGENTS = f"{PREFIX}:agents"

#: Sorted set of hosts the autoscaler is draining: hostname -> drain start time.
#: No TTL (a drain survives an autoscaler restart); swept by the autoscaler, which
#: unmarks every host its provider no longer has.
DRAINING = f"{PREFIX}:draining"

#: List of the autoscaler's latest decisions (JSON), newest first, capped; TTL 7 days,
#: renewed with every decision.
DECISIONS = f"{PREFIX}:autoscaler:decisions"

#: Sorted set of dead-lettered job ids -> time they died, capped; entries older than
#: their hashes' 14 days are swept when a job dies, and the set's TTL (14 days) is
#: renewed then too.
DEAD = f"{PREFIX}:dead"

#: Sorted set: delivery tag of a queued message that could run on a host but was
#: passed over for smaller ones -> when it first was (the backfill bound, tasks.transport).
#: Swept by the take script (a taken message's entry at once, entries older than a
#: day whenever one is added) and by every agent's heartbeat (older than a day); its
#: TTL (:data:`AGENTS_RETENTION`) is renewed by every heartbeat.
SKIPPED = f"{PREFIX}:skipped"


def reservations(queue: str) -> str:
    """Hash: delivery tag of a queued message passed over past the backfill bound ->
    "<host> <unix time>", the host holding itself free for it and when it last saw it
    (tasks.transport). Swept by the take script (taken messages, dead holders); its
    TTL (:data:`AGENTS_RETENTION`) is renewed by the heartbeat of every agent on ``queue``."""
    return f"{PREFIX}:reserve:{queue}"


def agent(hostname: str) -> str:
    """JSON of an agent's capacity, reservations and running jobs; TTL 10 s, renewed
    by its heartbeat (executor.agent.STATE_TTL_SECONDS)."""
    return f"{PREFIX}:agent:{hostname}"


def job_facts(task_id: str) -> str:
    """Hash of a job's container facts: container id, image, limits, exit code, ...; TTL 7 days."""
    return f"{PREFIX}:job:{task_id}"


def job_logs(task_id: str) -> str:
    """A job's captured output (capped), kept after its container is gone; TTL 7 days."""
    return f"{PREFIX}:logs:{task_id}"


def bell(queue: str) -> str:
    """A queue's doorbell: pushed with every message, popped by waiting agents (tasks.transport).
    Capped; deleted by any take that finds the queue empty, and its TTL
    (:data:`AGENTS_RETENTION`) is renewed by the heartbeat of every agent on ``queue``."""
    return f"{PREFIX}:bell:{queue}"


def published(task_id: str, retries: int) -> str:
    """Marks one publish of a job (its id and retry number) for a while: retries of it
    are no-ops; TTL 10 minutes (tasks.transport.PUBLISHED_TTL)."""
    return f"{PREFIX}:published:{task_id}:{retries}"


def wake(hostname: str) -> str:
    """An agent's own doorbell, rung when its capacity frees (tasks.transport); TTL
    10 s from each ring (executor.agent.WAKE_TTL_SECONDS)."""
    return f"{PREFIX}:wake:{hostname}"


def dead_job(task_id: str) -> str:
    """A dead-lettered job's message, reason and last error; TTL 14 days."""
    return f"{PREFIX}:dead:{task_id}"


def unfit(task_id: str) -> str:
    """Why a waiting job fits no host right now; TTL 60 s, renewed while the autoscaler sees it."""
    return f"{PREFIX}:unfit:{task_id}"

#: JSON {"cpus", "memory", "queues"}: the host shape the autoscaler adds, so agents
#: do not reject a job that fits a host the autoscaler could start. TTL 3 polls + 10 s,
#: renewed every poll.
AUTOSCALER_SHAPE = f"{PREFIX}:autoscaler:shape"


def attempts(task_id: str) -> str:
    """Counter of container starts for a job: its attempt number; TTL 7 days."""
    return f"{PREFIX}:attempts:{task_id}"


def rejected() -> str:
    """Capped list of raw messages agents refused (JSON: reason, queue, host, raw), newest
    first; TTL 14 days, renewed with every refusal."""
    return f"{PREFIX}:rejected"


def lost(task_id: str) -> str:
    """Counter of a job's deliveries whose host died before it finished; TTL 14 days."""
    return f"{PREFIX}:lost:{task_id}"


def retried(task_id: str) -> str:
    """The highest Celery retry number sent for a job: older deliveries are stale; TTL 14 days."""
    return f"{PREFIX}:retried:{task_id}"


#: Seconds a pull lock lives unless its holder renews it (executor.pulls.LOCK_TTL):
#: a dead agent's pull is taken over by a waiter within this long.
PULL_LOCK_TTL = 30


def pull_lock(engine_id: str, ref_hash: str) -> str:
    """JSON of one image's pull on one Docker engine, shared by the agents on it
    (executor.pulls): {"state": "pulling", "token"} while a pull runs, TTL
    :data:`PULL_LOCK_TTL` renewed by the puller; then {"state": "done", "digest"} or
    {"state": "failed", "reason", "message"} for waiters to read, TTL 10 s.
    ``ref_hash`` is the sha256 of the normalised reference."""
    return f"{PREFIX}:pull:{engine_id}:{ref_hash}"


#: Seconds the record of the images jobyard pulled outlives its last use (30 days).
IMAGES_TTL = 30 * 24 * 3600


def images(engine_id: str) -> str:
    """Sorted set: normalised reference jobyard pulled onto one Docker engine -> last
    use (unix time), shared by the agents on that engine (executor.image_cache). TTL
    :data:`IMAGES_TTL`, renewed with every pull and use; entries whose image left the
    engine are swept by every eviction pass."""
    return f"{PREFIX}:images:{engine_id}"


#: Keys (glob patterns) that may lack a TTL for a while because a live process sweeps
#: them: the draining set always; the take script creates the others without one,
#: until the next heartbeat gives them one.
SWEPT = (DRAINING, SKIPPED, reservations("*"), bell("*"))
