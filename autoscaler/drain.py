"""Draining a host: mark it in Redis, stop it consuming, and tell when it is empty.

The mark (zset :data:`tasks.keys.DRAINING`, hostname -> start time) is what makes a
drain survive an autoscaler restart: the next autoscaler finds it and carries on.
"""

from __future__ import annotations

import functools
import logging
import time

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from tasks import keys
from tasks.names import node_name
from tasks.records import AgentState

from .errors import ControlError

log = logging.getLogger(__name__)


def _translated(method):
    """Turn Redis and broker errors of a drain step into :class:`ControlError`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.RedisError, OperationalError, OSError) as exc:
            raise ControlError(f"{method.__name__}: {exc}") from exc
    return wrapper


def worker_name(hostname: str) -> str:
    """The Celery nodename of the agent on ``hostname``."""
    return node_name(hostname)


class Drainer:
    """Drains hosts through Celery remote control and the Redis mark."""

    def __init__(self, app: Celery, client: redis.Redis, reply_timeout: float = 1.0):
        self.app = app
        self.redis = client
        self.reply_timeout = reply_timeout

    @_translated
    def draining(self) -> dict[str, float]:
        """Hosts being drained -> when their drain began."""
        return dict(self.redis.zrange(keys.DRAINING, 0, -1, withscores=True))

    @_translated
    def mark(self, hostname: str) -> None:
        """Record that ``hostname`` is being drained (kept if already marked)."""
        self.redis.zadd(keys.DRAINING, {hostname: time.time()}, nx=True)

    @_translated
    def unmark(self, hostname: str) -> None:
        """Forget ``hostname``'s drain (removed, gone, or resumed)."""
        self.redis.zrem(keys.DRAINING, hostname)

    @_translated
    def stop_consuming(self, hostname: str, queues: tuple[str, ...]) -> bool:
        """Cancel the host's consumers; True once its worker confirmed every queue."""
        worker = worker_name(hostname)
        for queue in queues:
            replies = self.app.control.cancel_consumer(queue, destination=[worker], reply=True,
                                                       timeout=self.reply_timeout)
            if not any(worker in reply for reply in replies or ()):
                return False
        return True

    @_translated
    def resume(self, hostname: str, queues: tuple[str, ...]) -> None:
        """Undo a drain: consume ``queues`` again and drop the mark."""
        worker = worker_name(hostname)
        for queue in queues:
            self.app.control.add_consumer(queue, destination=[worker], reply=True, timeout=self.reply_timeout)
        self.unmark(hostname)

    @_translated
    def is_empty(self, hostname: str, state: AgentState | None) -> bool:
        """Whether the host holds no job: its published state and its worker agree.

        A worker that does not answer is never taken as empty, nor one Celery holds an eta
        job for (``scheduled``: agents leave eta jobs in Redis, but an eta they cannot
        read is Celery's to hold).
        """
        if state is not None and state.busy:
            return False
        worker = worker_name(hostname)
        inspector = self.app.control.inspect(destination=[worker], timeout=self.reply_timeout)
        for held in (inspector.active(), inspector.reserved(), inspector.scheduled()):
            if not held or worker not in held or held[worker]:
                return False
        return True
