"""Placement on one agent: what it takes, and admitting, holding or handing back what it got.

Most placement happens before a message leaves its queue: the intake takes only the
oldest message that fits this agent's free capacity now (:meth:`Placement.take_limits`
feeds :data:`executor.take.TAKE`), leaves jobs for bigger hosts to them, takes jobs
no host can hold so they are rejected, and reserves this host for a job it could
run once that job has been passed over for ``max_wait`` seconds: it then takes
nothing until that job fits here, while other hosts keep backfilling. At most
:data:`RESERVING_SHARE` of a queue's hosts (at least one) hold reservations at once.

A job can still reach this agent when it cannot start here now: capacity changed
between the take and the admission, fixed slots, or a message the intake could not
size. Rules, in order, for a job this agent has received:

1. **Impossible**: its requests exceed the capacity of every known host serving its
   queue (live agents, plus the autoscaler's host shape if one is published) →
   :class:`~tasks.errors.JobRejected` naming the resource, the request and the
   largest host. It never sits in a queue forever.
2. **Fits now** and no waiting job has passed the starvation bound → admitted.
3. **Another host has room now** (from the agents' published state) → handed back
   to the *head* of its queue, keeping its turn, for that host to take. A job too
   big for this host but not for another is *parked* here (this agent keeps taking
   other work) until a host that can hold it has room, then handed back.
4. Otherwise it **waits here**. Smaller jobs keep flowing around it (backfill) until
   it has waited ``max_wait`` seconds; from then on this agent admits nothing else
   and takes no new messages, so it starts as soon as running jobs release enough
   capacity. A waiting job therefore starts within ``max_wait`` plus the longest
   remaining run time (at most the timeout) of the jobs running when the bound hits.

The intake gate keeps the worker from taking messages at all without free capacity:
the consumer's prefetch limit is kept at (jobs held here) + 1 while there is free
capacity and room for a waiter, and at (jobs held here) otherwise, which is zero for
an idle agent that is draining, stopping or without its engine. A job that reaches
such an agent anyway (taken just before) is handed back, never started.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from tasks import keys
from tasks.errors import JobRejected, Revoked
from tasks.records import AgentState, HeldJob, HostOffer, Resources
from tasks.spec import CPU_EPSILON, MIN_MEMORY
from tasks.units import format_memory

from .capacity import Ledger
from .container import JobCall
from .take import TakeLimits

log = logging.getLogger(__name__)

#: Seconds a job may be passed over for smaller ones before a host reserves itself
#: for it (and a job held here may wait while smaller ones are admitted around it).
DEFAULT_MAX_WAIT = 10.0
#: Of the live hosts serving a queue, the share that may each hold themselves free
#: for a job passed over past the bound at one time (at least one host).
RESERVING_SHARE = 0.25
#: Jobs one agent holds without admitting them.
DEFAULT_MAX_WAITING = 2
#: After handing a job back, this agent takes nothing new for this long, so
#: another host gets the chance to take it.
HAND_BACK_PAUSE = 1.0
#: How often a waiting job re-checks whether another host has room for it.
RECHECK_SECONDS = 2.0
#: How often a job parked here (too big for this host) looks for a host with room.
PARK_POLL_SECONDS = 0.5
#: The smallest job worth taking a message for.
MIN_CPUS = 0.01


class HandBack(Exception):
    """Internal: give this job back to its queue for another host."""


@dataclass
class Waiter:
    """A job held here until capacity frees up."""

    call: JobCall
    since: float


class Placement:
    """Admission with fairness and a starvation bound for one agent."""

    def __init__(self, ledger: Ledger, fleet: "FleetView", hostname: str, queues: tuple[str, ...],
                 max_wait: float = DEFAULT_MAX_WAIT, max_waiting: int = DEFAULT_MAX_WAITING,
                 max_jobs: int = 16):
        self.ledger = ledger
        self.fleet = fleet
        self.hostname = hostname
        self.queues = queues
        self.max_wait = max_wait
        self.max_waiting = max_waiting
        self.max_jobs = max_jobs
        self.waiters: dict[str, Waiter] = {}
        self.parked: dict[str, JobCall] = {}
        #: Jobs held here while their image pulls (task id -> waiter): no reservation, no --max-jobs slot.
        self.pulling: dict[str, Waiter] = {}
        self.draining = False
        self.stopping = False
        #: Set while the container engine is unreachable: take no new work.
        self.engine_down = False
        self._paused_until = 0.0
        self.on_change: Callable[[], None] = lambda: None

    def admit(self, call: JobCall, stop_requested: Callable[[], bool]) -> float:
        """Block until ``call`` is admitted; return the seconds it waited.

        Raises JobRejected (impossible anywhere), HandBack (another host has room
        now) or Revoked (terminated while waiting).
        """
        self._reject_if_impossible(call)
        if self.refusing():
            raise HandBack()
        if self.ledger.sizes_jobs and not self.ledger.capacity.holds(call.spec):
            self._park(call, stop_requested)
        started = time.monotonic()
        with self.ledger.changed:
            if self._try_admit(call, waiting=False):
                return 0.0
        if self.fleet.other_host_has_room(call, self.hostname):
            self._hand_back_pause()
            raise HandBack()
        with self.ledger.changed:
            self.waiters[call.task_id] = Waiter(call, time.monotonic())
        self.on_change()
        try:
            return self._wait(call, stop_requested, started)
        finally:
            with self.ledger.changed:
                self.waiters.pop(call.task_id, None)
            self.on_change()

    def pull_started(self, call: JobCall) -> None:
        """``call``'s image is being pulled: it is held, published as waiting for its image,
        but reserves nothing yet."""
        with self.ledger.changed:
            self.pulling[call.task_id] = Waiter(call, time.monotonic())
        self.on_change()

    def pull_ended(self, task_id: str) -> None:
        """``task_id``'s pull ended (it goes on to admission, or fails)."""
        with self.ledger.changed:
            self.pulling.pop(task_id, None)
        self.on_change()

    def _park(self, call: JobCall, stop_requested: Callable[[], bool]) -> None:
        """Hold a job that can never run here until a host that can has room.

        It does not count as a waiter, so this agent keeps taking other work; it
        always ends by being handed back (or revoked, or rejected).
        """
        with self.ledger.changed:
            self.parked[call.task_id] = call
        self.on_change()
        try:
            while not self.stopping and not self.fleet.other_host_has_room(call, self.hostname):
                if stop_requested():
                    raise Revoked(f"{call.spec.name} was revoked while waiting for a host")
                self._reject_if_impossible(call)
                time.sleep(PARK_POLL_SECONDS)
        finally:
            with self.ledger.changed:
                self.parked.pop(call.task_id, None)
        self._hand_back_pause()
        raise HandBack()

    def _wait(self, call: JobCall, stop_requested: Callable[[], bool], started: float) -> float:
        next_check = time.monotonic() + RECHECK_SECONDS
        while True:
            with self.ledger.changed:
                if self._try_admit(call, waiting=True):
                    return time.monotonic() - started
                self.ledger.changed.wait(timeout=0.25)
            if stop_requested():
                raise Revoked(f"{call.spec.name} was revoked while waiting for capacity")
            if self.refusing():
                raise HandBack()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RECHECK_SECONDS
                self._reject_if_impossible(call)
                if self.fleet.other_host_has_room(call, self.hostname):
                    self._hand_back_pause()
                    raise HandBack()

    def _try_admit(self, call: JobCall, waiting: bool) -> bool:
        """Admit ``call`` if it fits and admitting it does not starve an older waiter."""
        if len(self.ledger.running()) >= self.max_jobs:
            return False  # the intake keeps to --max-jobs, but pulls end while others run
        oldest = self._oldest_waiter()
        if oldest is not None and oldest.call.task_id != call.task_id:
            if time.monotonic() - oldest.since >= self.max_wait:
                return False  # past the bound: capacity drains to the oldest waiter
            if waiting and self.ledger.fits(oldest.call.spec):
                return False  # let the older waiter go first when it fits too
        return self.ledger.admit(call.task_id, call.spec) is not None

    def _oldest_waiter(self) -> Waiter | None:
        return min(self.waiters.values(), key=lambda w: w.since, default=None)

    def _reject_if_impossible(self, call: JobCall) -> None:
        problem = self._impossible(call, fresh=False)
        if problem is not None:
            try:
                problem = self._impossible(call, fresh=True)  # final: never from a stale view
            except Exception as exc:  # noqa: BLE001 - without the fleet's state, do not reject
                log.warning("cannot read the fleet's state to confirm %s is impossible: %s", call.task_id, exc)
                return
        if problem is not None:
            raise problem

    def _impossible(self, call: JobCall, fresh: bool) -> JobRejected | None:
        spec = call.spec
        hosts = [self.ledger.capacity, *self.fleet.host_capacities(spec.queue, fresh=fresh)]
        for resource, request, largest in (
            ("memory", spec.memory, max(h.memory for h in hosts)),
            ("cpus", spec.cpus, max(h.cpus for h in hosts)),
        ):
            if request > largest + (CPU_EPSILON if resource == "cpus" else 0):
                shown = format_memory if resource == "memory" else (lambda v: f"{v:g}")
                return JobRejected(
                    f"{spec.name}: requests {resource}={shown(request)}, more than the largest host "
                    f"serving queue {spec.queue!r} has ({shown(largest)}); it can never run",
                    {"resource": resource, "request": request, "largest_host": largest, "queue": spec.queue})
        return None

    def stop(self) -> None:
        """The agent is shutting down: hand back every job not started yet."""
        self.stopping = True
        with self.ledger.changed:
            self.ledger.changed.notify_all()

    def _hand_back_pause(self) -> None:
        self._paused_until = time.monotonic() + HAND_BACK_PAUSE
        self.on_change()
        timer = threading.Timer(HAND_BACK_PAUSE + 0.05, self.on_change)
        timer.daemon = True
        timer.start()

    def refusing(self) -> bool:
        """Whether this agent starts no new job: it is draining, stopping or its engine is down."""
        return self.draining or self.stopping or self.engine_down

    def allowance(self) -> int:
        """How many more messages the worker should take now: 0 or 1."""
        if self.refusing() or time.monotonic() < self._paused_until:
            return 0
        with self.ledger.changed:
            held = len(self.ledger.running()) + len(self.waiters) + len(self.parked)
            if len(self.pulling) >= self.max_jobs:
                return 0
            oldest = self._oldest_waiter()
            if oldest is not None and time.monotonic() - oldest.since >= self.max_wait:
                return 0
            if len(self.waiters) >= self.max_waiting or len(self.parked) >= self.max_waiting:
                return 0
            if held + 1 > self.max_jobs:
                return 0
            cpus, memory = self.ledger.free()
        return 1 if cpus >= MIN_CPUS and memory >= MIN_MEMORY else 0

    def take_limits(self, queues: list[str]) -> TakeLimits | None:
        """What the intake should look for in ``queues``: a job that fits now (None: any job)."""
        if not self.ledger.sizes_jobs:
            return None
        with self.ledger.changed:
            cpus, memory = self.ledger.free()
        capacity = self.ledger.capacity
        largest, reserving = {}, {}
        for queue in queues:
            hosts = [capacity, *self.fleet.host_capacities(queue)]
            largest[queue] = (max(h.cpus for h in hosts), max(h.memory for h in hosts))
            reserving[queue] = max(1, int(self.fleet.serving(queue) * RESERVING_SHARE))
        return TakeLimits(free_cpus=cpus, free_memory=memory, host_cpus=capacity.cpus,
                          host_memory=capacity.memory, bound=self.max_wait, largest=largest,
                          holder=self.hostname, reserving=reserving)

    def held(self) -> int:
        """Jobs this agent holds: admitted, waiting, parked and pulling."""
        with self.ledger.changed:
            return len(self.ledger.running()) + len(self.waiters) + len(self.parked) + len(self.pulling)

    def waiting_state(self) -> list[dict[str, Any]]:
        """Published form of the waiting jobs."""
        return [job.to_dict() for job in self.waiting_jobs()]

    def waiting_jobs(self) -> list[HeldJob]:
        """The waiting jobs as the agent's state records them: for capacity, then for their image."""
        with self.ledger.changed:
            held = [(w, False) for w in self.waiters.values()] + [(w, True) for w in self.pulling.values()]
        return [HeldJob(w.call.task_id, w.call.spec.cpus, w.call.spec.memory,
                        time.time() - (time.monotonic() - w.since), w.call.spec.timeout, w.call.spec.name,
                        pulling=pulling)
                for w, pulling in held]


class FleetView:
    """What this agent knows of other hosts, from their published state in Redis.

    Agents' states and the autoscaler's host shape are read together and cached
    briefly: admission consults them for every job.
    """

    def __init__(self, redis_client, cache_seconds: float = 0.5):
        self.redis = redis_client
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, list[AgentState], HostOffer | None] = (0.0, [], None)
        self._lock = threading.Lock()

    def _snapshot(self, fresh: bool = False) -> tuple[list[AgentState], HostOffer | None]:
        with self._lock:
            fetched, states, shape = self._cached
            if not fresh and time.monotonic() - fetched < self.cache_seconds:
                return states, shape
        try:
            names, raw_shape = self.redis.pipeline().zrange(keys.AGENTS, 0, -1).get(keys.AUTOSCALER_SHAPE).execute()
            raw = self.redis.mget([keys.agent(name) for name in names]) if names else []
            states = [state for state in map(AgentState.parse, filter(None, raw)) if state is not None]
            shape = HostOffer.parse(raw_shape) if raw_shape else None
        except Exception as exc:  # noqa: BLE001 - without a view, decide locally
            if fresh:  # asked for the truth: an empty fleet would be a guess
                raise
            log.warning("cannot read the fleet's state: %s", exc)
            states, shape = [], None
        with self._lock:
            self._cached = (time.monotonic(), states, shape)
        return states, shape

    def agents(self) -> list[AgentState]:
        """Live agents' published states (cached briefly)."""
        return self._snapshot()[0]

    def host_capacities(self, queue: str, fresh: bool = False) -> list[Resources]:
        """Capacities of live hosts serving ``queue``, plus the autoscaler's host shape."""
        states, shape = self._snapshot(fresh)
        hosts = [s.capacity for s in states if s.serves(queue)]
        if shape and shape.serves(queue):
            hosts.append(shape.resources)
        return hosts

    def serving(self, queue: str) -> int:
        """How many live agents serve ``queue`` (cached briefly)."""
        return sum(1 for state in self.agents() if state.serves(queue))

    def other_host_has_room(self, call: JobCall, me: str) -> bool:
        """Whether another live, non-draining host serving the queue can run it now."""
        spec = call.spec
        return any(state.hostname != me and not state.draining and state.serves(spec.queue)
                   and state.has_room(spec) for state in self.agents())

