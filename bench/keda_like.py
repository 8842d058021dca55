"""A KEDA-like baseline for bench/autoscale.py: KEDA's Redis list scaler as a metric
source and a strategy, registered as ``list-length`` in the autoscaler's registry.

It sees LLEN of each bare queue and nothing else: no priority sub-lists, no message
delivered but unacknowledged, no running job, no resource request. Importing this
module registers both; the bench then picks them by name, as ``jobyard autoscale``
picks the built-in ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable

import redis

from autoscaler.errors import MetricError
from autoscaler.metrics import Observation, QueueDepth, default_request, read_agents
from autoscaler.registry import REGISTRY
from autoscaler.shape import HostShape
from autoscaler.strategy import Demand, Target

NAME = "list-length"
#: KEDA's default ``listLength`` target: messages per replica.
DEFAULT_JOBS_PER_HOST = 5


class ListLengthMetrics:
    """KEDA's signal: LLEN of each bare queue; every message asks for the spec defaults."""

    def __init__(self, client: redis.Redis, queues: Iterable[str] = ("default",)):
        self.redis = client
        self.queues = tuple(queues)

    def read(self) -> Observation:
        """Take one observation; raise :class:`MetricError` if Redis cannot be read."""
        try:
            queues, waiting = [], []
            for queue in self.queues:
                length = self.redis.llen(queue)
                queues.append(QueueDepth(queue, length))
                waiting.extend([default_request()] * length)
            registered, agents = read_agents(self.redis)
        except redis.RedisError as exc:
            raise MetricError(f"cannot read the broker: {exc}") from exc
        return Observation(time.time(), tuple(queues), Demand(tuple(waiting)), agents, registered)


@dataclass(frozen=True)
class ListLength:
    """KEDA's Redis list scaler: ``ceil(length / jobs_per_host)`` (sizes unknown)."""

    jobs_per_host: int = DEFAULT_JOBS_PER_HOST

    def desired(self, demand: Demand, shape: HostShape, fill: float = 1.0) -> Target:
        """Hosts for the listed messages alone; running jobs are invisible to it."""
        length = len(demand.waiting)
        hosts = math.ceil(length / (self.jobs_per_host * fill)) if length else 0
        return Target(hosts, f"list length {length} at {self.jobs_per_host}/host needs {hosts}")


def _metrics(config, client: redis.Redis) -> ListLengthMetrics:
    return ListLengthMetrics(client, config.queues)


def _strategy(config) -> ListLength:
    return ListLength(config.jobs_per_host or DEFAULT_JOBS_PER_HOST)


REGISTRY.sources.register(NAME, _metrics)
REGISTRY.strategies.register(NAME, _strategy)
