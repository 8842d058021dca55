"""The executor agent: one per host, a Celery worker that runs jobs in containers.

The agent owns the host's Docker client, its capacity ledger, its policy, its
state in Redis, the messages it holds and the jobs it must stop. It is handed to
what needs it: its task body (:mod:`executor.task`), the worker's bootsteps
(:mod:`executor.heartbeat`, :mod:`executor.gate`) and the intake consumer. The
Celery worker's threads only *supervise* containers (:mod:`executor.lifecycle`);
a job's code never runs in this process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests.exceptions

from tasks import keys, transport
from tasks.app import app as default_app
from tasks.config import Settings
from tasks.names import JOB_LABEL, node_name
from tasks.records import AgentState, HeldJob, Resources
from tasks.state import state_client

from .capacity import Capacity, Ledger
from .channel import server_time
from .container import DEFAULT_MAX_JOB_FILE, LABEL_AGENT, ContainerLauncher, JobCall, Outcome
from .errors import DockerUnavailable
from .credentials import DockerConfig
from .gate import IntakeGate
from .image_cache import ImageCache, ImagesInUse
from .messages import HeldMessages, TaskIds
from .placement import DEFAULT_MAX_WAIT, FleetView, Placement
from .policy import HostPolicy
from .pulls import ImageObserver, PullCoordinator, combined, engine_id
from .take import release_reservations

log = logging.getLogger(__name__)

#: Seconds between heartbeats that publish this agent's state and renew leases
#: (never more than a quarter of the lease).
HEARTBEAT_SECONDS = 2.0
#: Docker client timeout (seconds) for housekeeping: the reaper and engine pings.
HOUSEKEEPING_DOCKER_TIMEOUT = 10


def default_state_dir() -> str:
    """Where job input/output directories live (``JOBYARD_STATE_DIR``; see :mod:`tasks.config`)."""
    return Settings.from_env().state_dir


@dataclass
class AgentConfig:
    """How one agent runs: its identity, capacity, queues and policy."""

    hostname: str = field(default_factory=socket.gethostname)
    capacity: Capacity = field(default_factory=Capacity.detect)
    queues: tuple[str, ...] = ("default",)
    policy: HostPolicy = field(default_factory=HostPolicy)
    state_dir: str = field(default_factory=default_state_dir)
    max_jobs: int = 16
    max_wait: float = DEFAULT_MAX_WAIT
    max_job_file: int = DEFAULT_MAX_JOB_FILE
    #: Registry credentials (``--registry-config``); None pulls anonymously.
    registry_config: DockerConfig | None = None
    pull_timeout: float = 600.0
    max_pulls: int = 2
    #: Bytes of jobyard-pulled images kept on the engine (``--image-cache``); None never evicts.
    image_cache: int | None = None


class AgentObserver:
    """Hooks called as jobs move through an agent (metrics, tracing). All optional.

    Observers run in the supervising thread; they must be quick and must not raise.
    """

    def job_admitted(self, agent: "Agent", call: JobCall, waited: float) -> None:
        """``call`` got its reservation after waiting ``waited`` seconds."""

    def job_started(self, agent: "Agent", call: JobCall, start_latency: float) -> None:
        """``call``'s container is running; create+start took ``start_latency`` s."""

    def job_finished(self, agent: "Agent", call: JobCall, reason: str, outcome: Outcome | None) -> None:
        """``call`` ended; ``reason`` is "succeeded" or a JobError's ``reason``."""

    def state_published(self, agent: "Agent", state: AgentState) -> None:
        """The agent published ``state`` (see :meth:`Agent.state`)."""

    def durability_checked(self, agent: "Agent", degraded: bool) -> None:
        """The agent looked at the broker's replicas: ``degraded`` while fewer are connected
        than ``JOBYARD_BROKER_MIN_REPLICAS`` (:mod:`tasks.durable`)."""


class Agent:
    """Runs jobs on this host; see the module docstring."""

    def __init__(self, config: AgentConfig, celery_app=None, client: docker.DockerClient | None = None):
        self.config = config
        self.app = celery_app or default_app
        self.docker = client or connect_docker()
        # Short timeouts for the reaper and engine pings; job containers keep the long ones.
        self.housekeeping_docker = client or connect_docker(timeout=HOUSEKEEPING_DOCKER_TIMEOUT)
        self.ledger = self.make_ledger(config.capacity)
        self.launcher = ContainerLauncher(self.docker, config.state_dir, config.hostname, config.max_job_file,
                                          max_result=self.app.jobyard_settings.max_result)
        self.redis = state_client(self.app.jobyard_settings)
        self.observers: list[AgentObserver] = []
        self.fleet = FleetView(self.redis)
        self.placement = Placement(self.ledger, self.fleet, config.hostname, config.queues,
                                   max_wait=config.max_wait, max_jobs=config.max_jobs)
        self.gate = IntakeGate(lambda: self.placement.held() + self.placement.allowance())
        self.placement.on_change = self.gate.refresh
        #: The kombu messages this agent holds (:mod:`executor.messages`).
        self.held = HeldMessages()
        #: Task ids whose containers must be stopped (revoked with terminate).
        self.stopping = TaskIds()
        #: Task ids whose current delivery ended without its outcome stored.
        self.unstored = TaskIds()
        #: Seconds between heartbeats (never more than a quarter of the lease).
        self.beat_seconds = min(HEARTBEAT_SECONDS, self.app.jobyard_settings.lease_seconds / 4)
        engine = engine_id(self.housekeeping_docker)
        #: Normalised image references of the jobs this agent holds (pulling, waiting, running),
        #: shared with the caches of the other agents on the engine.
        self.job_images = ImagesInUse(self.redis, engine, self.name)
        self.pulls, self.image_cache = self.make_pulls(config, engine)

    def make_pulls(self, config: AgentConfig, engine: str) -> tuple[PullCoordinator, ImageCache | None]:
        """The engine's pull coordinator and, with a budget, its image cache."""
        cache = None
        if config.image_cache is not None:
            cache = ImageCache(self.docker, self.redis, engine, config.image_cache,
                               in_use=combined(self.job_images.refs, self.job_images.shared,
                                               lambda: self.pulls.pulling()))
        pulls = PullCoordinator(self.docker, self.redis, engine, max_pulls=config.max_pulls,
                                pull_timeout=config.pull_timeout, credentials=config.registry_config, cache=cache)
        return pulls, cache

    def watch_images(self, observer: ImageObserver) -> None:
        """Send pull and cache events (metrics) to ``observer``."""
        self.pulls.observer = observer
        if self.image_cache is not None:
            self.image_cache.observer = observer

    def make_ledger(self, capacity: Capacity) -> Ledger:
        """The capacity ledger admission reserves from (a bench may admit by other rules)."""
        return Ledger(capacity)

    @property
    def draining(self) -> bool:
        """Whether this agent has stopped taking new jobs."""
        return self.placement.draining

    @property
    def name(self) -> str:
        """The host identity this agent labels containers and publishes state with."""
        return self.config.hostname

    def engine_lost(self) -> None:
        """Take no new jobs until the engine answers again (:meth:`check_engine`)."""
        self.placement.engine_down = True
        self.gate.refresh()

    def check_engine(self) -> bool:
        """Ping the engine; pause or resume intake accordingly. True if it answers."""
        try:
            self.housekeeping_docker.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            if not self.placement.engine_down:
                log.warning("Docker Engine unreachable: taking no new jobs until it answers")
            self.engine_lost()
            return False
        if self.placement.engine_down:
            log.warning("Docker Engine answers again: taking jobs")
            self.placement.engine_down = False
            self.gate.refresh()
        return True

    def notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every observer with this agent and ``args``."""
        for observer in self.observers:
            try:
                getattr(observer, hook)(self, *args)
            except Exception:  # noqa: BLE001 - an observer must never break a job
                log.exception("observer %r failed in %s", observer, hook)

    def state(self) -> AgentState:
        """What this agent publishes at ``jobyard:agent:<hostname>`` (:class:`tasks.records.AgentState`)."""
        running = tuple(HeldJob(r.task_id, r.cpus, r.memory, r.started, r.timeout, r.name)
                        for r in self.ledger.running())
        return AgentState(hostname=self.name, worker=node_name(self.name), queues=tuple(self.config.queues),
                          capacity=self.config.capacity, running=running,
                          waiting=tuple(self.placement.waiting_jobs()), heartbeat=time.time(),
                          draining=self.draining, reserved=Resources(*self.ledger.reserved()),
                          max_jobs=self.config.max_jobs, pid=os.getpid())

    def _sweep_shared(self, pipe, now: float) -> None:
        """Queue the sweeps of shared keys on ``pipe``: hosts silent past the retention
        leave AGENTS, and the keys the take script writes without a TTL get one, renewed
        while any agent lives (see :mod:`tasks.keys`)."""
        pipe.zremrangebyscore(keys.AGENTS, "-inf", now - keys.AGENTS_RETENTION)
        pipe.expire(keys.AGENTS, keys.AGENTS_RETENTION)
        pipe.zremrangebyscore(keys.SKIPPED, "-inf", now - keys.SKIPPED_RETENTION)
        pipe.expire(keys.SKIPPED, keys.AGENTS_RETENTION)
        for queue in self.config.queues:
            pipe.expire(keys.reservations(queue), keys.AGENTS_RETENTION)
            pipe.expire(keys.bell(queue), keys.AGENTS_RETENTION)

    def publish(self, wake: bool = False) -> None:
        """Write this agent's state to Redis with a TTL (see :mod:`tasks.keys`).

        ``wake``: capacity freed, so also ring this agent's own doorbell: a job
        waiting in the queue may fit now (tasks.transport).
        """
        state = self.state()
        try:
            pipe = self.redis.pipeline()
            pipe.set(keys.agent(self.name), state.to_json(), ex=keys.AGENT_STATE_TTL)
            pipe.zadd(keys.AGENTS, {self.name: state.heartbeat})
            self.job_images.renew(pipe)
            self._sweep_shared(pipe, state.heartbeat)
            if wake:
                transport.ring_key(pipe, keys.wake(self.name))
                pipe.expire(keys.wake(self.name), keys.WAKE_TTL)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis may be restarting; next beat retries
            log.warning("heartbeat failed: %s", exc)
        self.notify("state_published", state)

    def check_durability(self) -> None:
        """With durable writes: read the broker's connected replicas (logged once per change
        of the degraded state, :mod:`tasks.durable`) and tell the observers."""
        durability = self.app.jobyard_settings.durability
        if not durability.enabled:
            return
        try:
            degraded = durability.check(self.redis)
        except Exception as exc:  # noqa: BLE001 - Redis may be failing over; next beat retries
            log.warning("could not read the broker's replicas: %s", exc)
            return
        self.notify("durability_checked", degraded)

    def follow_drain_mark(self) -> None:
        """Take no new work while the autoscaler has this host in its draining set."""
        try:
            draining = self.redis.zscore(keys.DRAINING, self.name) is not None
        except Exception as exc:  # noqa: BLE001 - keep the last known state
            log.debug("cannot read the draining set: %s", exc)
            return
        if draining != self.placement.draining:
            log.warning("agent %s %s", self.name, "is draining: taking no new jobs" if draining else
                        "is no longer draining")
            self.placement.draining = draining
            self.gate.refresh()
            if draining:
                self._release_reservations()

    def _release_reservations(self) -> None:
        """A draining host will take nothing: let another reserve for the jobs it held itself free for."""
        try:
            release_reservations(self.redis, list(self.config.queues), self.name)
        except Exception as exc:  # noqa: BLE001 - they lapse on their own (executor.take)
            log.debug("cannot release reservations: %s", exc)

    def renew_leases(self) -> None:
        """Renew the lease of every message this agent holds, scored by the server's clock."""
        try:
            self.held.renew(self.redis, server_time(self.redis))
        except Exception as exc:  # noqa: BLE001 - next beat retries; the lease has slack
            log.warning("lease renewal failed: %s", exc)

    def settle(self, task_id: str, tag: str | None = None) -> None:
        """After a job's outcome is stored: drop its message (delivery ``tag``) from the broker's unacked set."""
        try:
            self.held.settle(task_id, self.redis, tag, self.app.jobyard_settings.durability)
        except Exception as exc:  # noqa: BLE001 - Celery's own ack still applies
            log.warning("could not settle %s: %s", task_id, exc)

    def outcome_not_stored(self, task_id: str, tag: str | None = None) -> None:
        """Celery could not store the outcome of ``task_id``: leave its message for the lease.

        Its record stays in ``unacked`` and is no longer renewed, so the lease sweep
        delivers it again; its prefetch slot is freed for the next job.
        """
        self.unstored.add(task_id)
        self.held.let_go(task_id, tag)
        log.warning("the outcome of %s was not stored: its message stays for the lease to bring back", task_id)

    def finish_delivery(self, task_id: str, tag: str | None = None) -> bool:
        """When Celery acknowledges a delivery: settle it unless its outcome was not stored; True if settled."""
        if task_id in self.unstored:
            self.unstored.discard(task_id)
            return False
        self.settle(task_id, tag)
        return True

    def stop(self) -> None:
        """Withdraw this agent's published state (once its worker, and so its heartbeat, stopped)."""
        try:
            self.redis.delete(keys.agent(self.name), keys.wake(self.name))
            self.redis.zrem(keys.AGENTS, self.name)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not withdraw agent state: %s", exc)

    def reap(self, keep: frozenset[str] | set[str] = frozenset()) -> int:
        """Remove this agent's containers except those of jobs in ``keep``; return how many.

        At start ``keep`` is empty: everything labelled with this agent was left by
        an earlier run. While running, housekeeping reaps containers no held job
        owns (e.g. ones the engine could not remove while it was restarting).
        """
        removed = 0
        api = self.housekeeping_docker.api
        try:
            leftovers = api.containers(all=True, filters={"label": f"{LABEL_AGENT}={self.name}"})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("could not list leftover containers: %s", exc)
            return 0
        for container in leftovers:
            if container.get("Labels", {}).get(JOB_LABEL) in keep:
                continue
            try:
                api.remove_container(container["Id"], force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                log.warning("could not reap %s: %s", container["Id"][:12], exc)
        if removed:
            log.warning("reaped %d container(s) of agent %s that no running job owns", removed, self.name)
        return removed


def connect_docker(timeout: float = 120) -> docker.DockerClient:
    """A Docker client from the environment (DOCKER_HOST etc.), checked with a ping.

    ``timeout`` bounds every call of the client, in seconds.
    """
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailable(f"cannot reach the Docker Engine: {exc}") from exc
