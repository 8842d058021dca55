"""Prometheus metrics of the autoscaler, served on a loopback port."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from .action import HOLD, IN, OUT
from .loop import Tick


class DurabilityWatch:
    """Listener: each tick, looks at the broker's replicas (:mod:`tasks.durable`; a change of
    the degraded state is logged once) and keeps the answer in ``degraded``."""

    def __init__(self, client, durability):
        self.client = client
        self.durability = durability
        self.degraded = False

    def observe(self, tick: Tick) -> None:
        """Refresh ``degraded``; a failing read keeps the last answer."""
        try:
            self.degraded = self.durability.check(self.client)
        except Exception:  # noqa: BLE001 - the broker may be failing over; the next tick reads again
            pass


class Telemetry:
    """Gauges for backlog, demand and hosts; a counter of decisions by direction."""

    def __init__(self, registry: CollectorRegistry | None = None, degraded: Callable[[], bool] | None = None):
        self.registry = registry or CollectorRegistry()
        #: Whether durable writes are degraded now (a :class:`DurabilityWatch`'s), when exported.
        self.degraded_now = degraded
        self.degraded = Gauge("jobyard_autoscaler_durability_degraded",
                              "1 while the broker's primary has fewer connected replicas than job writes "
                              "must wait for (JOBYARD_BROKER_MIN_REPLICAS).", registry=self.registry)
        label = ("queue",)
        self.ready = Gauge("jobyard_autoscaler_queue_ready_jobs", "Ready messages, all priority lists.", label,
                           registry=self.registry)
        self.reserved = Gauge("jobyard_autoscaler_queue_reserved_jobs",
                              "Messages delivered to an agent but not running yet.", label, registry=self.registry)
        self.delayed = Gauge("jobyard_autoscaler_queue_delayed_jobs",
                             "Jobs waiting their countdown or eta in Redis (held by no agent).", label,
                             registry=self.registry)
        self.running = Gauge("jobyard_autoscaler_queue_running_jobs", "Jobs of the queue running on agents.", label,
                             registry=self.registry)
        self.demand_cpus = Gauge("jobyard_autoscaler_demand_cpus", "Summed CPU requests of waiting jobs.",
                                 registry=self.registry)
        self.demand_memory = Gauge("jobyard_autoscaler_demand_memory_bytes",
                                   "Summed memory requests of waiting jobs.", registry=self.registry)
        self.hosts = Gauge("jobyard_autoscaler_hosts", "Hosts by state.", ("state",), registry=self.registry)
        self.unfit = Gauge("jobyard_autoscaler_unfit_jobs", "Jobs larger than any host the provider adds.",
                           registry=self.registry)
        self.decisions = Counter("jobyard_autoscaler_decisions", "Scaling decisions by direction.", ("direction",),
                                 registry=self.registry)
        for direction in (OUT, IN, HOLD):
            self.decisions.labels(direction)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``address:port`` (loopback by default)."""
        start_http_server(port, addr=address, registry=self.registry)

    def observe(self, tick: Tick) -> None:
        """Update every metric from ``tick``."""
        for depth in tick.observation.queues:
            self.ready.labels(depth.queue).set(depth.ready)
            self.reserved.labels(depth.queue).set(depth.reserved)
            self.delayed.labels(depth.queue).set(depth.delayed)
            self.running.labels(depth.queue).set(depth.running)
        self.demand_cpus.set(tick.observation.demand.cpus)
        self.demand_memory.set(tick.observation.demand.memory)
        self.hosts.labels("current").set(tick.current)
        self.hosts.labels("desired").set(tick.desired)
        self.hosts.labels("draining").set(len(tick.draining))
        self.unfit.set(len(tick.unfit))
        self.decisions.labels(tick.action.direction).inc()
        if self.degraded_now is not None:
            self.degraded.set(1 if self.degraded_now() else 0)
