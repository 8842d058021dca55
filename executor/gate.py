"""The intake gate: the worker takes a message only when it can probably run it.

Celery's consumer holds at most ``prefetch_count`` unacknowledged messages. The gate
sets that limit from the placement's allowance — (jobs held here) + 0 or 1 — and
wakes the worker's event loop through a pipe, so a freed slot is used at once
instead of at the loop's next one-second tick. kombu reads a prefetch count of 0 as
"no limit", so a limit of zero (nothing held, nothing to take: draining, stopping,
engine down) is said by :meth:`IntakeGate.may_take`, which the channel's QoS
consults before every take (:class:`executor.channel.TakingQoS`).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


class IntakeGate:
    """Applies a prefetch limit to a running Celery consumer."""

    def __init__(self, compute_limit):
        self.compute_limit = compute_limit
        self._qos = None
        self._wake_w: int | None = None
        self._limit: int | None = None
        self._lock = threading.Lock()

    def attach(self, qos, hub) -> None:
        """Bind to the consumer's QoS and event loop (called by :class:`executor.steps.Gate`)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        if hub is not None:
            hub.add_reader(read_fd, _drain, read_fd)
        with self._lock:
            self._qos, self._wake_w = qos, write_fd
        self.refresh()

    def may_take(self) -> bool:
        """Whether the consumer may take a message at all (False: the limit is zero)."""
        return self._limit != 0

    def refresh(self) -> None:
        """Recompute the limit and apply it if it changed."""
        with self._lock:
            qos = self._qos
            if qos is None:
                return
            limit = max(0, int(self.compute_limit()))
            changed, self._limit = limit != self._limit, limit
            prefetch = max(1, limit)  # 0 would mean no limit to kombu: may_take says zero
            with qos._mutex:  # kombu's QoS guards value with this lock
                if qos.value != prefetch or qos.prev != prefetch:
                    qos.value = prefetch
                    qos.set(prefetch)
                    changed = True
            if changed and self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:  # the loop has plenty of wake-ups queued
                    pass


def _drain(read_fd: int) -> None:
    try:
        while os.read(read_fd, 4096):
            pass
    except BlockingIOError:
        pass
