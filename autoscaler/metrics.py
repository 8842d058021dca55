"""The metric source: backlog and resource demand, read from Redis without consuming.

Where kombu's Redis transport keeps messages: a queue is a list, with priority
sub-lists ``f"{queue}\\x06\\x16{step}"`` for steps 3, 6 and 9; a delivered but not yet
acknowledged message sits in the hash ``unacked`` (tag -> ``[message, exchange,
routing_key]``). A job's spec rides in the message header ``jobyard_spec``. Running
jobs and their requests come from the state each agent publishes
(:class:`tasks.records.AgentState`). The layout is written once in :mod:`tasks.keys`.
A job waiting its eta (a countdown, a retry's) sits in its list's delayed set
(:func:`tasks.keys.delayed`): it is counted as *delayed*, and as waiting demand only
once it is due within :data:`DUE_LOOK_AHEAD` seconds by the server's clock (a due
one still in the set only waits for a taking agent, which there may be none of).
Only TIME, LLEN, LRANGE, HGETALL, ZCARD, ZRANGE and MGET are used; nothing is consumed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import redis

from tasks import keys
from tasks.names import SPEC_HEADER
from tasks.records import AgentState
from tasks.spec import JobSpec

from .errors import MetricError
from .shape import Request
from .strategy import Demand

#: Messages read per list per poll; the rest of a longer list is assumed to ask
#: for the mean of those read.
MAX_SCAN = 10_000
_DEFAULT = JobSpec.__dataclass_fields__
#: Seconds ahead of the server's clock within which a delayed job counts as demand.
DUE_LOOK_AHEAD = 10.0


def default_request(task_id: str = "") -> Request:
    """What a message without a jobyard spec is assumed to ask for (the spec defaults)."""
    return Request(task_id, _DEFAULT["cpus"].default, _DEFAULT["memory"].default)


def message_request(message: dict[str, Any]) -> Request:
    """The resource request of one kombu message (its ``jobyard_spec`` header)."""
    headers = message.get("headers") or {}
    spec = headers.get(SPEC_HEADER) or {}
    fallback = default_request(str(headers.get("id", "")))
    try:
        return Request(fallback.task_id, float(spec.get("cpus", fallback.cpus)),
                       int(spec.get("memory", fallback.memory)))
    except (TypeError, ValueError):
        return fallback


@dataclass(frozen=True)
class QueueDepth:
    """One queue's backlog: ready (all priority lists), reserved by a worker but not
    running, and running."""

    queue: str
    ready: int = 0
    reserved: int = 0
    running: int = 0
    #: Waiting their eta in the queue's delayed sets (not ready, held by no agent).
    delayed: int = 0

    @property
    def in_flight(self) -> int:
        """Delivered and not yet acknowledged (reserved + running)."""
        return self.reserved + self.running


@dataclass(frozen=True)
class Observation:
    """One poll of the broker and the agents."""

    time: float
    queues: tuple[QueueDepth, ...]
    demand: Demand
    agents: dict[str, AgentState] = field(default_factory=dict)
    #: Every host that has heartbeated and not stopped cleanly, live or not.
    registered: frozenset[str] = frozenset()

    @property
    def ready(self) -> int:
        """Ready messages in all watched queues."""
        return sum(q.ready for q in self.queues)

    @property
    def in_flight(self) -> int:
        """Delivered, unacknowledged messages of the watched queues."""
        return sum(q.in_flight for q in self.queues)

    @property
    def delayed(self) -> int:
        """Jobs of the watched queues waiting their eta in Redis."""
        return sum(q.delayed for q in self.queues)

    @property
    def running(self) -> int:
        """Jobs admitted on any agent."""
        return len(self.demand.running)


class BrokerMetrics:
    """Reads the full backlog signal: ready + reserved + running, and resource demand."""

    def __init__(self, client: redis.Redis, queues: Iterable[str] = ("default",),
                 due_look_ahead: float = DUE_LOOK_AHEAD):
        self.redis = client
        self.queues = tuple(queues)
        self.due_look_ahead = due_look_ahead

    def read(self) -> Observation:
        """Take one observation; raise :class:`MetricError` if Redis cannot be read."""
        try:
            return self._read()
        except redis.RedisError as exc:
            raise MetricError(f"cannot read the broker: {exc}") from exc

    def _read(self) -> Observation:
        registered, agents = read_agents(self.redis)
        running = {job.task_id: job for a in agents.values() for job in a.running}
        ready, in_flight, delayed = self._snapshot()
        queues, waiting = [], [r for requests in ready.values() for r in requests]
        for queue in self.queues:
            held = in_flight.get(queue, [])
            running_here = sum(1 for r in held if r.task_id in running)
            waiting.extend(r for r in held if r.task_id not in running)
            count, due = delayed[queue]
            waiting.extend(due)
            queues.append(QueueDepth(queue, len(ready[queue]), len(held) - running_here, running_here, count))
        running_requests = tuple(Request(j.task_id, j.cpus, j.memory) for j in running.values())
        return Observation(time.time(), tuple(queues), Demand(tuple(waiting), running_requests), agents, registered)

    def _snapshot(self) -> tuple[dict[str, list[Request]], dict[str, list[Request]],
                                 dict[str, tuple[int, list[Request]]]]:
        """Ready requests by queue, unacked requests by routing key, and per queue the
        delayed count and the requests of those due within the look-ahead, read atomically
        (MULTI), so a message moving between a list, a delayed set and ``unacked`` is seen once."""
        seconds, micros = self.redis.time()
        horizon = seconds + micros / 1e6 + self.due_look_ahead
        pipe = self.redis.pipeline(transaction=True)
        lists = [(queue, key) for queue in self.queues for key in keys.priority_lists(queue)]
        for _queue, key in lists:
            pipe.llen(key)
            pipe.lrange(key, 0, MAX_SCAN - 1)
        for _queue, key in lists:
            pipe.zcard(keys.delayed(key))
            pipe.zrange(keys.delayed(key), "-inf", horizon, byscore=True, offset=0, num=MAX_SCAN)
        pipe.hgetall(keys.UNACKED)
        replies = pipe.execute()
        ready: dict[str, list[Request]] = {queue: [] for queue in self.queues}
        delayed: dict[str, tuple[int, list[Request]]] = {queue: (0, []) for queue in self.queues}
        for index, (queue, _key) in enumerate(lists):
            ready[queue].extend(_requests(replies[2 * index], replies[2 * index + 1]))
            count, due = replies[2 * (len(lists) + index)], replies[2 * (len(lists) + index) + 1]
            delayed[queue] = (delayed[queue][0] + count, delayed[queue][1] + [message_request(_load(m)) for m in due])
        return ready, _unacked(replies[-1].values()), delayed


def _requests(length: int, raws: list[str]) -> list[Request]:
    """Requests of a list's messages; those past MAX_SCAN ask for the mean of the rest."""
    read = [message_request(_load(raw)) for raw in raws]
    if length > len(read) and read:
        mean = Request("", sum(r.cpus for r in read) / len(read), sum(r.memory for r in read) // len(read))
        read.extend([mean] * (length - len(read)))
    return read


def _unacked(raws: Iterable[str]) -> dict[str, list[Request]]:
    by_queue: dict[str, list[Request]] = {}
    for raw in raws:
        entry = _load(raw)
        if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], dict):
            message, _exchange, routing_key = entry
            by_queue.setdefault(routing_key, []).append(message_request(message))
    return by_queue


def read_agents(client: redis.Redis) -> tuple[frozenset[str], dict[str, AgentState]]:
    """Every registered hostname, and the agents whose published state has not expired."""
    names = client.zrange(keys.AGENTS, 0, -1)
    if not names:
        return frozenset(), {}
    states = {}
    for raw in client.mget([keys.agent(name) for name in names]):
        state = AgentState.parse(raw) if raw else None
        if state is not None:
            states[state.hostname] = state
    return frozenset(names), states


def _load(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise MetricError(f"not a kombu message: {raw[:80]!r}") from exc
