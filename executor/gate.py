"""The intake gate: the worker takes a message only when it can probably run it.

Celery's consumer holds at most ``prefetch_count`` unacknowledged messages. The gate
sets that limit from the placement's allowance — (jobs held here) + 0 or 1 — and
wakes the worker's event loop through a pipe, so a freed slot is used at once
instead of at the loop's next one-second tick.
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

    def refresh(self) -> None:
        """Recompute the limit and apply it if it changed."""
        with self._lock:
            qos = self._qos
            if qos is None:
                return
            limit = max(1, int(self.compute_limit()))
            with qos._mutex:  # kombu's QoS guards value with this lock
                if qos.value == limit and qos.prev == limit:
                    return
                qos.value = limit
                qos.set(limit)
            if self._wake_w is not None:
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
