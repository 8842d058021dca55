"""Prometheus metrics of one agent, kept by an :class:`~executor.agent.AgentObserver`.

Served on a loopback port by ``jobyard agent --metrics-port P`` from a registry of
its own (so nothing else in the process leaks into the scrape)::

    jobyard_agent_capacity_cpus / _capacity_memory_bytes      what the host offers
    jobyard_agent_reserved_cpus / _reserved_memory_bytes      what admitted jobs hold
    jobyard_agent_running_containers                          admitted jobs right now
    jobyard_agent_container_start_seconds                     create+start latency
    jobyard_agent_admission_wait_seconds                      wait for a reservation
    jobyard_agent_jobs_finished_total{outcome="succeeded|oom_killed|timeout|..."}
    jobyard_agent_image_pulls_total{outcome="pulled|auth|not_found|..."}
    jobyard_agent_image_pull_seconds / _image_cache_bytes / _image_evictions_total
    jobyard_agent_durability_degraded                         1 while the broker has fewer replicas
                                                              than JOBYARD_BROKER_MIN_REPLICAS

Every series carries the agent's ``host`` label so a fleet's scrapes add up.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tasks.records import AgentState

from .agent import Agent, AgentObserver
from .container import JobCall, Outcome
from .pulls import ImageObserver

#: Outcomes pre-declared at zero, so rates work before the first of each happens.
KNOWN_OUTCOMES = ("succeeded", "oom_killed", "timeout", "failed", "rejected", "revoked",
                  "image_not_found", "image_pull_failed", "invalid_spec", "backend_error")
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
PULL_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PULL_OUTCOMES = ("pulled", "auth", "not_found", "timeout", "unreachable", "policy")
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


class AgentMetrics(AgentObserver):
    """Keeps an agent's Prometheus metrics up to date from its observer hooks."""

    def __init__(self, host: str, registry: CollectorRegistry | None = None):
        self.host = host
        self.registry = registry or CollectorRegistry()
        labels = ["host"]
        self.capacity_cpus = self._gauge("jobyard_agent_capacity_cpus", "CPUs this agent may allocate to jobs.")
        self.capacity_memory = self._gauge("jobyard_agent_capacity_memory_bytes",
                                           "Memory this agent may allocate to jobs.")
        self.reserved_cpus = self._gauge("jobyard_agent_reserved_cpus", "CPUs reserved by admitted jobs.")
        self.reserved_memory = self._gauge("jobyard_agent_reserved_memory_bytes", "Memory reserved by admitted jobs.")
        self.running = self._gauge("jobyard_agent_running_containers", "Jobs admitted and running right now.")
        self.degraded = self._gauge("jobyard_agent_durability_degraded",
                                    "1 while the broker's primary has fewer connected replicas than job writes "
                                    "must wait for (JOBYARD_BROKER_MIN_REPLICAS).")
        self.start_latency = Histogram("jobyard_agent_container_start_seconds",
                                       "Time to create and start a job's container.", labels,
                                       buckets=START_BUCKETS, registry=self.registry)
        self.admission_wait = Histogram("jobyard_agent_admission_wait_seconds",
                                        "Time a job waited for CPU and memory on this agent.", labels,
                                        buckets=WAIT_BUCKETS, registry=self.registry)
        self.finished = Counter("jobyard_agent_jobs_finished", "Jobs that ended on this agent, by outcome.",
                                ["host", "outcome"], registry=self.registry)
        for outcome in KNOWN_OUTCOMES:
            self.finished.labels(host, outcome)

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, ["host"], registry=self.registry)

    def job_admitted(self, agent: Agent, call: JobCall, waited: float) -> None:
        """Record how long the job waited for its reservation."""
        self.admission_wait.labels(self.host).observe(max(waited, 0.0))

    def job_started(self, agent: Agent, call: JobCall, start_latency: float) -> None:
        """Record the container's create+start latency."""
        self.start_latency.labels(self.host).observe(max(start_latency, 0.0))

    def job_finished(self, agent: Agent, call: JobCall, reason: str, outcome: Outcome | None) -> None:
        """Count the job's outcome."""
        self.finished.labels(self.host, reason).inc()

    def state_published(self, agent: Agent, state: AgentState | dict[str, Any]) -> None:
        """Refresh the capacity, reservation and running gauges from the published state
        (the record, or its JSON layout)."""
        if not isinstance(state, AgentState):
            state = AgentState.from_json(state)
        self.capacity_cpus.labels(self.host).set(state.capacity.cpus)
        self.capacity_memory.labels(self.host).set(state.capacity.memory)
        self.reserved_cpus.labels(self.host).set(state.reserved.cpus)
        self.reserved_memory.labels(self.host).set(state.reserved.memory)
        self.running.labels(self.host).set(len(state.running))

    def durability_checked(self, agent: Agent, degraded: bool) -> None:
        """Export whether durable writes are degraded."""
        self.degraded.labels(self.host).set(1 if degraded else 0)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)


class ImageMetrics(ImageObserver):
    """Pull and image cache metrics, fed by :class:`executor.pulls.PullCoordinator` and
    :class:`executor.image_cache.ImageCache`; shares an :class:`AgentMetrics` registry."""

    def __init__(self, host: str, registry: CollectorRegistry):
        self.host = host
        self.pulls = Counter("jobyard_agent_image_pulls", "Image pulls this agent ran, by outcome.",
                             ["host", "outcome"], registry=registry)
        for outcome in PULL_OUTCOMES:
            self.pulls.labels(host, outcome)
        self.pull_seconds = Histogram("jobyard_agent_image_pull_seconds", "Time one image pull took.", ["host"],
                                      buckets=PULL_BUCKETS, registry=registry)
        self.cache_bytes = Gauge("jobyard_agent_image_cache_bytes",
                                 "Bytes of the images jobyard pulled onto this engine "
                                 "(shared layers counted per image).", ["host"], registry=registry)
        self.evictions = Counter("jobyard_agent_image_evictions", "Image references the cache removed.", ["host"],
                                 registry=registry)

    def pull_finished(self, ref: str, seconds: float, outcome: str) -> None:
        """Count the pull and record its duration."""
        self.pulls.labels(self.host, outcome).inc()
        self.pull_seconds.labels(self.host).observe(max(seconds, 0.0))

    def cache_measured(self, total_bytes: int) -> None:
        """Set the cache's size."""
        self.cache_bytes.labels(self.host).set(total_bytes)

    def image_evicted(self, ref: str, size: int) -> None:
        """Count one eviction."""
        self.evictions.labels(self.host).inc()


def serve_metrics(agent: Agent, port: int) -> AgentMetrics:
    """Attach metrics to ``agent`` and serve them on 127.0.0.1:``port``."""
    metrics = AgentMetrics(agent.name)
    agent.observers.append(metrics)
    agent.watch_images(ImageMetrics(agent.name, metrics.registry))
    metrics.serve(port)
    return metrics
