"""A Celery request that knows its job's container and its broker message.

Celery's thread pool cannot terminate a task (celery#8147), and the job is not a
thread of ours anyway: ``revoke(terminate=True)`` adds the job to its agent's
``stopping`` set, and its supervisor kills the container and reports
:class:`tasks.errors.Revoked`. The request also holds its kombu message in its
agent's ``held`` messages (:mod:`executor.messages`), so the agent renews its lease
and can hand the job back to the head of its queue, until the job's outcome is
stored or Celery ends the request unrun (revoked, expired). The agent is its task's
(:mod:`executor.task`).
"""

from __future__ import annotations

from billiard.einfo import ExceptionWithTraceback
from celery.worker.request import Request

from tasks.failure import failure_text

from .messages import DELIVERY_TAG, free_slot


class ContainerRequest(Request):
    """Request whose terminate stops the job's container instead of a process."""

    def __init__(self, message, *args, **kwargs):
        # Celery's strategy subclasses this class and replaces execute_using_pool,
        # so the message is recorded here.
        super().__init__(message, *args, **kwargs)
        self._request_dict[DELIVERY_TAG] = message.delivery_tag  # which delivery the task body runs
        self.task.agent.held.add(self.id, message)
        self.task.agent.unstored.discard(self.id)  # a new delivery: nothing is known of it yet

    def terminate(self, pool, signal=None):
        self.task.agent.stopping.add(self.id)

    def _announce_revoked(self, reason, terminated, signum, expired):
        # Every way Celery ends a request without running it (revoked by id or
        # header, expired) comes here: its message must not stay held and renewed.
        try:
            super()._announce_revoked(reason, terminated, signum, expired)
        except BaseException:
            self.task.agent.held.discard(self.id, self.message.delivery_tag)  # REVOKED not stored: the lease's
            raise
        self.task.agent.settle(self.id, self.message.delivery_tag)

    def acknowledge(self):
        """Settle the message, unless its outcome was not stored: then the lease brings it back."""
        if not self.acknowledged and not self.task.agent.finish_delivery(self.id, self.message.delivery_tag):
            free_slot(self.message)  # its record stays in unacked for the lease
            self.acknowledged = True
        super().acknowledge()

    def send_event(self, type, **fields):
        """Celery's event, naming the job and its arguments again: a monitor that missed
        ``task-received`` (Flower started while the job ran, or its event receiver
        reconnecting after a broker failover) still shows what ran."""
        super().send_event(type, **{"name": self.name, "args": self.argsrepr, "kwargs": self.kwargsrepr,
                                    **fields})

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        """Celery's failure handling, with the job's own traceback in the task-failed event."""
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        text = failure_text(error)
        if text is not None:
            exc_info.traceback = text
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
