"""Telling people and agents what the autoscaler does: the log, and Redis.

``jobyard status`` reads :data:`tasks.keys.DECISIONS` (newest first, JSON per entry);
a job that fits no host gets a TTL'd reason at :func:`tasks.keys.unfit`; agents read
the host shape at :data:`tasks.keys.AUTOSCALER_SHAPE`, so they do not reject a job
that fits a host the autoscaler could add.
"""

from __future__ import annotations

import logging

import redis

from tasks import keys
from tasks.records import Decision, HostOffer, Resources
from tasks.units import format_memory

from .action import HOLD
from .loop import Tick

log = logging.getLogger("autoscaler")


class DecisionLog:
    """Logs every action, and a hold whenever its reason changes."""

    def __init__(self, logger: logging.Logger = log):
        self.logger = logger
        self._last_hold = ""

    def observe(self, tick: Tick) -> None:
        """Log ``tick``'s decision with its backlog."""
        action = tick.action
        summary = (f"ready={tick.observation.ready} delayed={tick.observation.delayed} "
                   f"in_flight={tick.observation.in_flight} "
                   f"running={tick.observation.running} hosts={tick.current}/{tick.desired}")
        if tick.removed:
            self.logger.info("removed drained host(s) %s", ", ".join(tick.removed))
        if action.direction != HOLD:
            self.logger.info("%s (%s)", action.describe(), summary)
            self._last_hold = ""
        elif _kind(action.reason) != self._last_hold:
            self._last_hold = _kind(action.reason)
            self.logger.info("%s (%s)", action.describe(), summary)


def _kind(reason: str) -> str:
    # Holds whose reasons differ only in counts or seconds are the same hold.
    return "".join(c for c in reason.split(":")[0] if not c.isdigit())


class RedisReporter:
    """Pushes decisions to :data:`tasks.keys.DECISIONS`, marks unfit jobs and
    publishes the host shape (TTL'd, so it disappears with the autoscaler)."""

    def __init__(self, client: redis.Redis, shape: Resources, queues: tuple[str, ...], poll: float = 1.0):
        self.redis = client
        self.shape = HostOffer(shape, tuple(queues)).to_json()
        self.shape_ttl = keys.autoscaler_shape_ttl(poll)
        self._last = None

    def observe(self, tick: Tick) -> None:
        """Push actions, removals and changed holds; refresh unfit reasons and the shape."""
        try:
            self.redis.set(keys.AUTOSCALER_SHAPE, self.shape, ex=self.shape_ttl)
            self._push(tick)
            self._unfit(tick)
        except redis.RedisError as exc:
            log.warning("could not publish the decision: %s", exc)

    def _push(self, tick: Tick) -> None:
        key = (tick.action.direction, _kind(tick.action.reason), tick.removed)
        if tick.action.direction == HOLD and not tick.removed and key == self._last:
            return
        self._last = key
        entry = Decision(**{**tick.row(), "hosts": tuple(tick.action.hosts), "removed": tuple(tick.removed)})
        pipe = self.redis.pipeline()
        pipe.lpush(keys.DECISIONS, entry.to_json())
        pipe.ltrim(keys.DECISIONS, 0, keys.DECISIONS_KEPT - 1)
        pipe.expire(keys.DECISIONS, keys.DECISIONS_TTL)
        pipe.execute()

    def _unfit(self, tick: Tick) -> None:
        if not tick.unfit:
            return
        pipe = self.redis.pipeline()
        for request in tick.unfit:
            if request.task_id:
                pipe.set(keys.unfit(request.task_id),
                         f"requests cpus={request.cpus:g} memory={format_memory(request.memory)}, larger than "
                         f"any host the autoscaler can add; it will not scale for this job", ex=keys.UNFIT_TTL)
        pipe.execute()
