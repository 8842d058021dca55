"""jobyard's result backends: Celery's Redis and Sentinel backends, storing a failed job's
own traceback, storing durably when asked (:mod:`tasks.durable`), riding out a Redis
restart on reads, and never missing an outcome a caller waits for.

:data:`RESULT_BACKENDS` puts them in place of Celery's own for their URL schemes
(``app.loader.override_backends``, :func:`tasks.app.create_app`).
"""

from __future__ import annotations

import logging
from time import monotonic

from celery import states
from celery.backends.redis import RedisBackend, ResultConsumer, SentinelBackend
from kombu.utils.encoding import bytes_to_str

from .clients import PrimaryConnection, follow_switches
from .durable import Durability
from .errors import WriteNotDurable
from .failure import failure_text

log = logging.getLogger(__name__)


class JobFailureText:
    """Result-backend mixin: a failed job's stored traceback is the job's own, not the agent's.

    Celery's tracer stores the stack of the agent's supervisor; this stores the
    job's remote traceback or a statement of the facts (:mod:`tasks.failure`),
    which is what ``AsyncResult.traceback`` and Flower's task pages show.
    """

    def mark_as_failure(self, task_id, exc, traceback=None, *args, **kwargs):
        """Store the failure as Celery does, with the job's own traceback text."""
        return super().mark_as_failure(task_id, exc, failure_text(exc) or traceback, *args, **kwargs)


class ReadsRideOutRestarts:
    """Result-backend mixin: a read rides out a Redis restart as Celery's writes do.

    Celery retries a backend write on connection errors (``retry_policy``, about 90 s
    here) but not the read that comes first when it stores an outcome (it never
    overwrites SUCCESS): a job that finished while Redis restarted raised
    ConnectionError there, and Celery's tracer stored that error as the job's FAILURE.
    """

    def get(self, key):
        return self.ensure(super().get, (key,))


class RereadingResultConsumer(ResultConsumer):
    """Celery's result subscription, re-reading stored outcomes it may have missed.

    A result reaches a waiting ``.get()`` as a pub/sub message. One published while
    the subscription was reconnecting (a failover, a dropped connection) is gone, and
    Celery reads the stored outcomes only before it subscribes again, so one stored
    in between, or on a primary the subscription reached late, would never arrive.
    This re-reads the outcomes of every task still waited on after each reconnect (once
    subscribed) and every :attr:`reread_interval` seconds of waiting: one MGET.
    """

    #: Seconds between re-reads while a caller waits.
    reread_interval = 2.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reread_at = monotonic() + self.reread_interval

    def consume_from(self, task_id):
        """Subscribe to a task's outcome; after a reconnect that failed, to every awaited one."""
        with self._locked():
            if self._pubsub is None and self.subscribed_to:
                self.subscribed_to.add(self._get_key_for_task(task_id))
                self._reconnect()
                return
        super().consume_from(task_id)

    def _reconnect(self):
        """One attempt, never fatal, where Celery retries for the backend's whole retry policy.

        Celery subscribes to a task's outcome before it publishes the task, and reconnects
        with the backend's retries (about 90 s here, meant for agents storing outcomes),
        then raises RuntimeError ("the Celery application must be restarted"): a caller
        whose Redis was down waited 89 s for that, instead of the publish's own error. Left
        without a subscription, the next send or wait (:meth:`drain_events`) tries again,
        and a waiting ``.get()`` re-reads the stored outcomes every :attr:`reread_interval`.
        """
        try:
            self._reconnect_pubsub()
        except self._connection_errors as exc:
            with self._locked():
                self._pubsub = None
            log.info("the result store cannot be reached (%s); subscribing again on the next send or wait", exc)

    def _reconnect_pubsub(self):
        super()._reconnect_pubsub()
        self.reread()

    def drain_events(self, timeout=None):
        if self._pubsub is None and self.subscribed_to:
            self._reconnect()
        super().drain_events(timeout)
        if monotonic() >= self._reread_at:
            self.reread()

    def reread(self) -> None:
        """Hand every stored finished outcome of a task still waited on to the waiters."""
        self._reread_at = monotonic() + self.reread_interval
        with self._locked():
            waited = list(self.subscribed_to)
        if not waited:
            return
        try:
            stored = self.backend.client.mget(waited)
        except self._connection_errors:
            return  # the subscription's own reconnect, or the next re-read, tries again
        for raw in stored:
            meta = self._decode_result(raw) if raw else None
            if meta and meta.get("status") in states.READY_STATES:
                self.on_state_change(meta, None)


class DurableResults:
    """Result-backend mixin: with durable writes (:mod:`tasks.durable`), storing a result
    counts as done only once replicas hold it; else it raises
    :class:`tasks.errors.WriteNotDurable`, and the agent leaves the job's delivery to its lease."""

    def mark_as_failure(self, task_id, exc, *args, **kwargs):
        """Store a failure, but never the error of a store replicas did not confirm.

        Celery stores the error a result store raised as the job's outcome (its internal
        error path); a :class:`~tasks.errors.WriteNotDurable` is no outcome of the job:
        its delivery is left to the lease, and a redelivery finds what was stored.
        """
        if isinstance(exc, WriteNotDurable):
            log.warning("%s: not stored as the outcome of %s; the job's delivery is left to its lease", exc, task_id)
            return None
        return super().mark_as_failure(task_id, exc, *args, **kwargs)

    def _set(self, key, value, expires=None):
        settings = getattr(self.app, "jobyard_settings", None)
        durability = settings.durability if settings is not None else Durability()
        if not durability.enabled:
            return super()._set(key, value, expires)
        expires = self.expires if expires is None else expires
        with durability.pipeline(self.client) as pipe:
            pipe.set(key, value, ex=expires or None)
            pipe.publish(key, value)
            durability.execute(pipe, self.client, f"storing the result {bytes_to_str(key)}")


class JobRedisBackend(JobFailureText, DurableResults, ReadsRideOutRestarts, RedisBackend):
    """Celery's Redis result backend, storing jobs' own tracebacks, durably when asked."""

    ResultConsumer = RereadingResultConsumer


class JobSentinelBackend(JobFailureText, DurableResults, ReadsRideOutRestarts, SentinelBackend):
    """Celery's Sentinel result backend, storing jobs' own tracebacks, durably when asked; its pool moves at
    once to a new primary on ``+switch-master`` (:func:`tasks.clients.follow_switches`)."""

    ResultConsumer = RereadingResultConsumer

    def _get_pool(self, **params):
        if "connection_class" not in params:  # not TLS: NOREPLICAS reconnects too
            params["connection_class"] = PrimaryConnection
        pool = super()._get_pool(**params)
        follow_switches(pool)
        return pool


#: Result-backend URL scheme -> class, in place of Celery's own for these schemes.
RESULT_BACKENDS = {
    "redis": f"{__name__}:JobRedisBackend",
    "rediss": f"{__name__}:JobRedisBackend",
    "sentinel": f"{__name__}:JobSentinelBackend",
}
