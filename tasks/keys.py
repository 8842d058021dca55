"""Every Redis key jobyard itself writes, in one place.

All live in the broker's Redis database, next to the kombu queues, under the
``jobyard:`` prefix. Each key either has a TTL, so state cleans itself up when its
writer dies, or is swept by a live process; its docstring says which. The keys
without a TTL of their own are listed in :data:`SWEPT`.
"""

from __future__ import annotations

PREFIX = "jobyard"

DAY = 24 * 3600

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

#: List of the autoscaler's latest decisions (JSON, :class:`tasks.records.Decision`), newest
#: first, capped at :data:`DECISIONS_KEPT`; TTL :data:`DECISIONS_TTL`, renewed with every decision.
DECISIONS = f"{PREFIX}:autoscaler:decisions"
DECISIONS_TTL = 7 * DAY
DECISIONS_KEPT = 100

#: Sorted set of dead-lettered job ids -> time they died, capped at :data:`DEAD_KEPT`;
#: entries older than their hashes' :data:`DEAD_TTL` are swept when a job dies, and the
#: set's TTL (:data:`DEAD_TTL`) is renewed then too.
DEAD = f"{PREFIX}:dead"
DEAD_TTL = 14 * DAY
DEAD_KEPT = 10_000

#: Sorted set: delivery tag of a queued message that could run on a host but was
#: passed over for smaller ones -> when it first was (the backfill bound, tasks.transport).
#: Swept by the take script (a taken message's entry at once, entries older than a
#: day whenever one is added) and by every agent's heartbeat (older than a day); its
#: TTL (:data:`AGENTS_RETENTION`) is renewed by every heartbeat.
SKIPPED = f"{PREFIX}:skipped"
#: Seconds after which a :data:`SKIPPED` entry is swept (the take script's own bound).
SKIPPED_RETENTION = DAY


def reservations(queue: str) -> str:
    """Hash: delivery tag of a queued message passed over past the backfill bound ->
    "<host> <unix time>", the host holding itself free for it and when it last saw it
    (tasks.transport). Swept by the take script (taken messages, dead holders); its
    TTL (:data:`AGENTS_RETENTION`) is renewed by the heartbeat of every agent on ``queue``."""
    return f"{PREFIX}:reserve:{queue}"


#: Seconds an agent's published state outlives its last heartbeat.
AGENT_STATE_TTL = 10


def agent(hostname: str) -> str:
    """JSON of an agent's capacity, reservations and running jobs (:class:`tasks.records.AgentState`);
    TTL :data:`AGENT_STATE_TTL`, renewed by its heartbeat."""
    return f"{PREFIX}:agent:{hostname}"


#: Seconds a job's facts, logs and attempt counter are kept (matches the results' expiry).
JOB_TTL = 7 * DAY


def job_facts(task_id: str) -> str:
    """Hash of a job's container facts (:class:`tasks.records.JobFacts`); TTL :data:`JOB_TTL`."""
    return f"{PREFIX}:job:{task_id}"


def job_logs(task_id: str) -> str:
    """A job's captured output (capped), kept after its container is gone; TTL :data:`JOB_TTL`."""
    return f"{PREFIX}:logs:{task_id}"


def bell(queue: str) -> str:
    """A queue's doorbell: pushed with every message, popped by waiting agents (tasks.transport).
    Capped; deleted by any take that finds the queue empty, and its TTL
    (:data:`AGENTS_RETENTION`) is renewed by the heartbeat of every agent on ``queue``."""
    return f"{PREFIX}:bell:{queue}"


def delayed(list_key: str) -> str:
    """Sorted set of one queue list's delayed messages (kombu's list key, with its priority
    suffix): the message's exact text -> when it is due (unix seconds, its ``eta``). Written
    by the publish (tasks.transport) and by the take (an eta message that reached a list);
    emptied by the take, which moves due messages to the head of the list (a revoked
    one is dropped by the agent that takes it). No TTL: a member leaves only by being
    moved, so the set is in :data:`SWEPT`."""
    return f"{PREFIX}:delayed:{list_key}"


def delayed_sets(queue: str) -> list[str]:
    """The delayed sets of all of ``queue``'s priority lists, highest priority first."""
    return [delayed(key) for key in priority_lists(queue)]


#: Seconds a publish marker lives: a retried publish within it is a no-op.
PUBLISHED_TTL = 600


def published(task_id: str, retries: int) -> str:
    """Marks one publish of a job (its id and retry number) for a while: retries of it
    are no-ops; TTL :data:`PUBLISHED_TTL`."""
    return f"{PREFIX}:published:{task_id}:{retries}"


#: A wake ring is worth a look for this long: a consumer looks again within its
#: doorbell wait (1 s) anyway, so a ring left by a dead agent only has to go.
WAKE_TTL = 10


def wake(hostname: str) -> str:
    """An agent's own doorbell, rung when its capacity frees (tasks.transport); TTL
    :data:`WAKE_TTL` from each ring."""
    return f"{PREFIX}:wake:{hostname}"


def dead_job(task_id: str) -> str:
    """A dead-lettered job's message, reason and last error (:class:`tasks.records.DeadLetter`);
    TTL :data:`DEAD_TTL`."""
    return f"{PREFIX}:dead:{task_id}"


#: Seconds an unfit reason outlives the last autoscaler poll that saw the job.
UNFIT_TTL = 60


def unfit(task_id: str) -> str:
    """Why a waiting job fits no host right now; TTL :data:`UNFIT_TTL`, renewed while the
    autoscaler sees it."""
    return f"{PREFIX}:unfit:{task_id}"

#: JSON {"cpus", "memory", "queues"} (:class:`tasks.records.HostOffer`): the host shape the
#: autoscaler adds, so agents do not reject a job that fits a host the autoscaler could
#: start. TTL :func:`autoscaler_shape_ttl`, renewed every poll.
AUTOSCALER_SHAPE = f"{PREFIX}:autoscaler:shape"


def autoscaler_shape_ttl(poll: float) -> int:
    """TTL of :data:`AUTOSCALER_SHAPE` for an autoscaler polling every ``poll`` seconds:
    3 polls + 10 s, so it goes soon after the autoscaler does."""
    return int(3 * poll + 10)


def attempts(task_id: str) -> str:
    """Counter of container starts for a job: its attempt number; TTL :data:`JOB_TTL`."""
    return f"{PREFIX}:attempts:{task_id}"


#: Seconds refused messages are kept after the latest refusal.
REJECTED_TTL = 14 * DAY
#: Refused messages kept, newest first.
REJECTED_KEPT = 1000


def rejected() -> str:
    """Capped list (:data:`REJECTED_KEPT`) of raw messages agents refused
    (:class:`tasks.records.RejectedMessage`), newest first; TTL :data:`REJECTED_TTL`,
    renewed with every refusal."""
    return f"{PREFIX}:rejected"


#: Seconds the per-job delivery counters (:func:`lost`, :func:`retried`) are kept.
DELIVERY_TTL = 14 * DAY


def lost(task_id: str) -> str:
    """Counter of a job's deliveries whose host died before it finished; TTL :data:`DELIVERY_TTL`."""
    return f"{PREFIX}:lost:{task_id}"


def retried(task_id: str) -> str:
    """The highest Celery retry number sent for a job: older deliveries are stale; TTL
    :data:`DELIVERY_TTL`."""
    return f"{PREFIX}:retried:{task_id}"


#: Seconds a pull lock lives unless its holder renews it: a dead agent's pull is taken
#: over by a waiter within this long.
PULL_LOCK_TTL = 30
#: Seconds a finished pull's outcome stays readable for the agents that waited on it.
PULL_RESULT_TTL = 10


def pull_lock(engine_id: str, ref_hash: str) -> str:
    """JSON of one image's pull on one Docker engine, shared by the agents on it
    (executor.pulls): {"state": "pulling", "token"} while a pull runs, TTL
    :data:`PULL_LOCK_TTL` renewed by the puller; then {"state": "done", "digest"} or
    {"state": "failed", "reason", "message"} for waiters to read, TTL :data:`PULL_RESULT_TTL`.
    ``ref_hash`` is the sha256 of the normalised reference."""
    return f"{PREFIX}:pull:{engine_id}:{ref_hash}"


def pull_slots(engine_id: str) -> str:
    """Sorted set of the pulls running on one Docker engine (executor.pulls): a token per
    pull -> when it lapses (Redis server time, ms) unless its puller renews it, every
    :data:`PULL_LOCK_TTL` / 3 s. An agent starts a pull only while fewer than its
    ``--max-pulls`` unlapsed tokens are here, so the agents of one engine share the bound.
    The key's TTL is :data:`PULL_LOCK_TTL`, renewed with every token."""
    return f"{PREFIX}:pull-slots:{engine_id}"


def images_in_use(engine_id: str) -> str:
    """Sorted set of the images the jobs held by the agents of one Docker engine use
    (executor.image_cache): ``"<task id> <normalised reference>"`` -> when it lapses
    (unix time) unless its agent renews it with its heartbeat. The cache of any agent
    on the engine never removes an image named here. TTL :data:`IMAGES_IN_USE_TTL`,
    renewed with every entry."""
    return f"{PREFIX}:images-in-use:{engine_id}"


#: Seconds an entry of :func:`images_in_use` lives unless its agent renews it.
IMAGES_IN_USE_TTL = 60

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
#: until the next heartbeat gives them one. Delayed sets never get one: a job waiting
#: its countdown must not expire; the take empties them as their jobs come due.
SWEPT = (DRAINING, SKIPPED, reservations("*"), bell("*"), delayed("*"))


# kombu's Redis transport, written once: jobyard reads its lists and hashes directly
# (status, the metric source) and takes from them in Lua (tasks.transport).

#: Between a queue's name and a priority step in the name of its priority sub-list.
PRIORITY_SEPARATOR = "\x06\x16"
#: The priority steps kombu keeps sub-lists for besides the bare queue (step 0).
PRIORITY_STEPS = (3, 6, 9)
#: Hash: delivery tag -> ``[message, exchange, routing_key]`` of delivered, unacked messages.
UNACKED = "unacked"
#: Sorted set: delivery tag -> when delivered (the lease: kombu requeues old entries).
UNACKED_INDEX = "unacked_index"
#: The lock kombu holds while it requeues expired unacked messages.
UNACKED_MUTEX = "unacked_mutex"
#: Prefix of the sets in which kombu records each exchange's queue bindings; members
#: are ``routing_key<separator>pattern<separator>queue``.
BINDING_PREFIX = "_kombu.binding."


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s ready messages, highest priority first."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def binding_queue(member: str) -> str:
    """The queue named by one member of a :data:`BINDING_PREFIX` set."""
    return member.split(PRIORITY_SEPARATOR)[-1]
