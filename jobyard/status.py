"""The fleet at a glance: queues, hosts, lost hosts, jobs that fit no host, autoscaler decisions.

Everything is read from the broker's Redis without consuming anything: queue
backlogs and demand through the autoscaler's metric source
(:class:`autoscaler.metrics.BrokerMetrics`), hosts from the state every agent
publishes (a host still registered whose state expired is lost), unfit jobs from what the autoscaler records plus what this module
works out itself, and the autoscaler's latest decisions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import redis

from tasks import keys
from tasks.durable import Durability
from tasks.records import AgentState, Decision, HostOffer
from tasks.transport import reservation_holders
from tasks.units import format_memory

from .table import render_table

#: Decisions shown by default.
DECISIONS_SHOWN = 10


@dataclass
class QueueRow:
    """One queue's backlog: ready messages, delayed ones, delivered-not-acked ones, and their requests."""

    queue: str
    ready: int
    in_flight: int
    running: int
    waiting: int
    demand_cpus: float
    demand_memory: int
    #: Waiting their eta (countdowns, retry countdowns) in Redis, held by no agent.
    delayed: int = 0


@dataclass
class HostRow:
    """What one live agent last published."""

    hostname: str
    queues: list[str]
    capacity_cpus: float
    capacity_memory: int
    reserved_cpus: float
    reserved_memory: int
    running: int
    waiting: int
    draining: bool
    heartbeat_age: float
    #: Jobs passed over past the fairness bound this host holds itself free for.
    holding: int = 0


@dataclass
class LostHostRow:
    """A host that stopped heartbeating: registered, but its published state expired."""

    hostname: str
    last_heartbeat: float
    heartbeat_age: float


@dataclass
class UnfitRow:
    """A waiting job no host can hold, and why; ``source`` says who found out."""

    task_id: str
    reason: str
    source: str
    queue: str = ""
    cpus: float | None = None
    memory: int | None = None


@dataclass
class DurabilityRow:
    """Durable writes (:mod:`tasks.durable`): replicas each job write waits for, and the broker's now."""

    min_replicas: int
    connected: int
    degraded: bool


def durability_row(client: redis.Redis, durability: Durability) -> DurabilityRow | None:
    """The broker's connected replicas against ``durability``; None when writes do not wait."""
    if not durability.enabled:
        return None
    connected = int(client.info("replication").get("connected_slaves", 0))
    return DurabilityRow(durability.min_replicas, connected, connected < durability.min_replicas)


@dataclass
class FleetStatus:
    """Everything ``jobyard status`` shows."""

    broker: str
    queues: list[QueueRow] = field(default_factory=list)
    hosts: list[HostRow] = field(default_factory=list)
    lost: list[LostHostRow] = field(default_factory=list)
    unfit: list[UnfitRow] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: Durable writes: replicas wanted and connected, and whether that is degraded (None: off).
    durability: DurabilityRow | None = None

    def to_json(self) -> dict[str, Any]:
        """The status as plain JSON data, for scripts."""
        return asdict(self)


def collect(client: redis.Redis, broker: str, queues: Iterable[str] = (),
            decisions: int = DECISIONS_SHOWN, durability: Durability = Durability()) -> FleetStatus:
    """Read the fleet's status from Redis (``broker`` is shown, already redacted)."""
    from autoscaler.metrics import BrokerMetrics

    hosts, lost = read_fleet(client)
    names = known_queues(client, hosts, queues)
    status = FleetStatus(broker, hosts=hosts, lost=lost, decisions=read_decisions(client, decisions))
    computed: list[UnfitRow] = []
    raw_shape = client.get(keys.AUTOSCALER_SHAPE)
    shape = HostOffer.parse(raw_shape) if raw_shape else None
    for queue in names:
        observation = BrokerMetrics(client, [queue]).read()
        depth = observation.queues[0]
        demand = observation.demand
        status.queues.append(QueueRow(queue, depth.ready, depth.in_flight, depth.running, len(demand.waiting),
                                      demand.cpus, demand.memory, depth.delayed))
        computed.extend(unfit_requests(queue, demand.waiting, hosts, shape))
    status.unfit = merge_unfit(read_recorded_unfit(client), computed)
    status.durability = durability_row(client, durability)
    return status


def known_queues(client: redis.Redis, hosts: list[HostRow], extra: Iterable[str] = ()) -> list[str]:
    """Queues worth showing: declared in the broker, consumed by an agent, or asked for."""
    names = {"default", *extra}
    for host in hosts:
        names.update(host.queues)
    for key in client.scan_iter(f"{keys.BINDING_PREFIX}*", count=500):
        names.update(keys.binding_queue(member) for member in client.smembers(key))
    return sorted(n for n in names if n and not n.startswith("celeryev") and not n.endswith(".pidbox"))


def read_hosts(client: redis.Redis, now: float | None = None) -> list[HostRow]:
    """Every agent whose published state has not expired, by hostname."""
    return read_fleet(client, now)[0]


def read_fleet(client: redis.Redis, now: float | None = None) -> tuple[list[HostRow], list[LostHostRow]]:
    """Live agents (published state not expired) and lost ones (registered in
    :data:`tasks.keys.AGENTS`, state expired), each by hostname."""
    now = time.time() if now is None else now
    registered = client.zrange(keys.AGENTS, 0, -1, withscores=True)
    draining = set(client.zrange(keys.DRAINING, 0, -1))
    rows, lost = [], []
    states = client.mget([keys.agent(name) for name, _ in registered]) if registered else []
    for (name, beat), raw in zip(registered, states):
        state = AgentState.parse(raw) if raw else None
        if state is not None:
            rows.append(_host_row(state, draining, now))
        else:
            lost.append(LostHostRow(name, beat, max(0.0, now - beat)))
    holding = reservation_holders(client, sorted({q for row in rows for q in row.queues}), now)
    for row in rows:
        row.holding = holding.get(row.hostname, 0)
    return sorted(rows, key=lambda row: row.hostname), sorted(lost, key=lambda row: row.hostname)


def _host_row(state: AgentState, draining: set[str], now: float) -> HostRow:
    return HostRow(
        hostname=state.hostname, queues=list(state.queues),
        capacity_cpus=state.capacity.cpus, capacity_memory=state.capacity.memory,
        reserved_cpus=state.reserved.cpus, reserved_memory=state.reserved.memory,
        running=len(state.running), waiting=len(state.waiting),
        draining=state.draining or state.hostname in draining,
        heartbeat_age=max(0.0, now - (state.heartbeat or now)))


def unfit_requests(queue: str, waiting: Iterable[Any], hosts: list[HostRow],
                   shape: HostOffer | None = None) -> list[UnfitRow]:
    """Waiting requests larger than every live host that consumes ``queue``.

    ``shape`` is the host the autoscaler adds; a job that fits it is still listed,
    with the note that it waits for a scale-out.
    """
    consumers = [h for h in hosts if queue in h.queues and not h.draining]
    if not consumers:
        return []
    largest_cpus = max(h.capacity_cpus for h in consumers)
    largest_memory = max(h.capacity_memory for h in consumers)
    rows = []
    for request in waiting:
        if not request.task_id:
            continue  # beyond the scanned part of a long list: an estimate, not a job
        fits = any(request.cpus <= h.capacity_cpus + 1e-9 and request.memory <= h.capacity_memory
                   for h in consumers)
        if not fits:
            reason = (f"asks for {request.cpus:g} cpus, {format_memory(request.memory)}; the largest host on "
                      f"queue {queue} has {largest_cpus:g} cpus, {format_memory(largest_memory)}")
            if shape and shape.serves(queue) and shape.resources.holds(request):
                reason += (f"; fits the hosts the autoscaler adds ({shape.resources.describe()}): "
                           f"waiting for a scale-out")
            rows.append(UnfitRow(request.task_id, reason, "status", queue, request.cpus, request.memory))
    return rows


def read_recorded_unfit(client: redis.Redis) -> list[UnfitRow]:
    """What the autoscaler recorded at ``jobyard:unfit:<task_id>`` (text or JSON)."""
    prefix = keys.unfit("")
    names = sorted(client.scan_iter(f"{prefix}*", count=500))
    rows = []
    for name, raw in zip(names, client.mget(names) if names else []):
        if raw is None:
            continue
        data = _json(raw)
        if isinstance(data, dict):
            rows.append(UnfitRow(name[len(prefix):], str(data.get("reason") or raw), "autoscaler",
                                 str(data.get("queue") or ""), data.get("cpus"), data.get("memory")))
        else:
            rows.append(UnfitRow(name[len(prefix):], str(data if data is not None else raw), "autoscaler"))
    return rows


def merge_unfit(recorded: list[UnfitRow], computed: list[UnfitRow]) -> list[UnfitRow]:
    """Recorded reasons first; computed ones only for jobs nobody recorded."""
    seen = {row.task_id for row in recorded}
    return recorded + [row for row in computed if row.task_id not in seen]


def read_decisions(client: redis.Redis, count: int = DECISIONS_SHOWN) -> list[Decision]:
    """The autoscaler's latest decisions, newest first (malformed entries are skipped)."""
    entries = [Decision.parse(raw) for raw in client.lrange(keys.DECISIONS, 0, max(count, 1) - 1)]
    return [entry for entry in entries if entry is not None]


def _durability_text(row: DurabilityRow | None) -> str:
    if row is None:
        return ""
    text = f"\ndurable writes: {row.min_replicas} replica(s) wanted, {row.connected} connected"
    if row.degraded:
        text += f" (DURABILITY DEGRADED: writes wait for {row.connected})"
    return text


def render(status: FleetStatus, now: float | None = None) -> str:
    """The status as readable text tables."""
    now = time.time() if now is None else now
    sections = [
        f"broker {status.broker}" + _durability_text(status.durability),
        "QUEUES\n" + render_table(
            ["queue", "ready", "delayed", "in flight", "running", "waiting", "demand cpus", "demand memory"],
            [(q.queue, q.ready, q.delayed, q.in_flight, q.running, q.waiting, f"{q.demand_cpus:g}",
              format_memory(q.demand_memory)) for q in status.queues]),
        "HOSTS\n" + render_table(
            ["host", "queues", "cpus", "memory", "running", "waiting", "held free for", "draining",
             "heartbeat"],
            [(h.hostname, ",".join(h.queues), f"{h.reserved_cpus:g}/{h.capacity_cpus:g}",
              f"{format_memory(h.reserved_memory)}/{format_memory(h.capacity_memory)}", h.running, h.waiting,
              f"{h.holding} passed-over job{'s' if h.holding > 1 else ''}" if h.holding else "-",
              "yes" if h.draining else "no", f"{h.heartbeat_age:.0f}s ago") for h in status.hosts],
            empty="(no live agent)"),
        "LOST HOSTS (stopped heartbeating)\n" + render_table(
            ["host", "last heartbeat", "ago"],
            [(h.hostname, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h.last_heartbeat)) + " UTC",
              f"{h.heartbeat_age:.0f}s") for h in status.lost]),
        "JOBS THAT FIT NO HOST\n" + render_table(
            ["task id", "queue", "reason", "source"],
            [(u.task_id, u.queue, u.reason, u.source) for u in status.unfit]),
        "AUTOSCALER DECISIONS (newest first)\n" + render_table(
            ["when", "direction", "hosts", "reason"],
            [_decision_row(d, now) for d in status.decisions], empty="(no decisions recorded)"),
    ]
    return "\n\n".join(sections)


def _decision_row(decision: Decision, now: float) -> tuple[str, str, str, str]:
    age = f"{now - decision.time:.0f}s ago" if decision.time else ""
    direction = decision.decision + (f" {decision.count}" if decision.count else "")
    hosts = f"{decision.hosts_current} -> {decision.hosts_desired}"
    if decision.hosts:
        hosts += f" [{', '.join(decision.hosts)}]"
    return age, direction, hosts, decision.reason


def _json(raw: Any) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw
