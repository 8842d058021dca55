"""Durable writes: a write counts as done only once ``WAIT`` says replicas hold it.

Redis replicates asynchronously: a primary that dies right after a write may take
it with it, and a replica promoted in its place never saw it. With
``JOBYARD_BROKER_MIN_REPLICAS=N`` (:class:`Durability`), every write that makes a
job's state (a publish, the agent's take record, its settle, a result) is followed
by ``WAIT n timeout`` **on the connection that did the write**: WAIT waits until
replicas acknowledged the replication offset of that connection's own last write, so
sent on another pooled connection it would confirm some other, earlier write. Writes
and their WAIT therefore go in one pipeline (one connection, one round trip); the
agent's take, sent raw on its poll connection, sends its WAIT on that same connection
(:mod:`executor.channel`). The replication stream is one ordered stream, so a
confirmed write also confirms every write the primary applied before it, from any
connection (a job's facts and dead letter, written before its result, a handed-back
copy, pushed before the original is settled).

``n`` is ``N``, or the replicas the primary has connected when it has fewer
(``INFO replication``, read at most every :data:`REPLICAS_REFRESH` seconds per
server): right after a failover of a one-replica set there is no replica to wait
for, and the fleet must go on. That state is **degraded** (:class:`ReplicaWatch`):
it is logged once per transition and exported by the agents' and autoscaler's
metrics and ``jobyard status``.

When fewer than ``n`` replicas confirm within the timeout, the write raises
:class:`tasks.errors.WriteNotDurable` (a publish: :class:`~tasks.errors.PublishNotDurable`).
The write may still have been applied on the primary; every jobyard write is
idempotent or left to the lease, so doing it again is safe.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from time import monotonic
from typing import Any

from .errors import WriteNotDurable

log = logging.getLogger(__name__)

#: Milliseconds a write waits for its replicas by default (``JOBYARD_BROKER_WAIT_TIMEOUT``):
#: a replica on the same network acknowledges in about a millisecond; one that has not
#: in a second is stalled, and the caller should hear so.
DEFAULT_WAIT_TIMEOUT_MS = 1000
#: Seconds between two reads of a server's connected replicas (``INFO replication``).
REPLICAS_REFRESH = 1.0


class ReplicaWatch:
    """What this process knows of one primary's replicas, and whether durability is degraded there.

    Degraded means the primary has fewer connected replicas than the writes ask
    for, so they wait for the ones it has. Transitions are logged once each.
    """

    def __init__(self, server: str):
        self.server = server
        #: Replicas connected to the primary at the last read (None before the first).
        self.connected: int | None = None
        self.degraded = False
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def needed(self, client, min_replicas: int, fresh: bool = False) -> int:
        """How many replicas a write must wait for: ``min_replicas``, or what the primary has."""
        if min_replicas <= 0:
            return 0
        if fresh or monotonic() - self._read_at >= REPLICAS_REFRESH:
            self.read(client)
        connected = min_replicas if self.connected is None else self.connected
        self._mark(connected < min_replicas, connected, min_replicas)
        return min(min_replicas, connected)

    def read(self, client) -> None:
        """Read the primary's connected replicas now."""
        info = client.info("replication")
        with self._lock:
            self.connected = int(info.get("connected_slaves", 0))
            self._read_at = monotonic()

    def _mark(self, degraded: bool, connected: int, wanted: int) -> None:
        with self._lock:
            changed, self.degraded = degraded != self.degraded, degraded
        if changed and degraded:
            log.warning("durability degraded on %s: %d replica(s) connected, %d wanted; writes wait for %d",
                        self.server, connected, wanted, connected)
        elif changed:
            log.warning("durability restored on %s: %d replica(s) connected", self.server, connected)


_watches: dict[str, ReplicaWatch] = {}
_watches_lock = threading.Lock()


def server_of(client) -> str:
    """The address of the server ``client``'s pool connects to (the key of its :class:`ReplicaWatch`)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    if kwargs.get("host"):
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    return getattr(pool, "service_name", None) or repr(pool)


def watch(client) -> ReplicaWatch:
    """This process's :class:`ReplicaWatch` of the server ``client`` talks to."""
    server = server_of(client)
    with _watches_lock:
        found = _watches.get(server)
        if found is None:
            found = _watches[server] = ReplicaWatch(server)
        return found


@dataclass(frozen=True)
class Durability:
    """How many replicas must hold a write before it counts as done, and how long to wait for them."""

    min_replicas: int = 0
    #: Milliseconds one WAIT may block.
    timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS

    @property
    def enabled(self) -> bool:
        return self.min_replicas > 0

    def needed(self, client) -> int:
        """The replicas the next write through ``client``'s server waits for."""
        return watch(client).needed(client, self.min_replicas)

    def check(self, client) -> bool:
        """Refresh what this process knows of ``client``'s server; True while degraded there."""
        if not self.enabled:
            return False
        self.needed(client)
        return watch(client).degraded

    def pipeline(self, client):
        """A pipeline for writes that :meth:`execute` confirms: a MULTI transaction without
        durable writes, a plain one with them (a WAIT inside MULTI would not block)."""
        return client.pipeline(transaction=not self.enabled)

    def execute(self, pipe, client, what: str, error: type[WriteNotDurable] = WriteNotDurable) -> list[Any]:
        """Run ``pipe`` (built on ``client``) with a WAIT after its writes; its replies, less WAIT's.

        Raises ``error`` when fewer replicas than needed confirmed within the timeout.
        """
        if not self.enabled:
            return pipe.execute()
        needed = self.needed(client)
        pipe.execute_command("WAIT", needed, self.timeout_ms)
        *replies, acked = pipe.execute()
        self.confirm(int(acked), needed, client, what, error)
        return replies

    def confirm(self, acked: int, needed: int, client, what: str,
                error: type[WriteNotDurable] = WriteNotDurable) -> None:
        """Accept a WAIT's reply, or raise ``error``.

        A WAIT that fell short because replicas went away meanwhile (fewer connected
        now than it asked for) is the degraded case, and is accepted.
        """
        if acked >= needed:
            return
        if acked >= watch(client).needed(client, self.min_replicas, fresh=True):
            return
        raise error(f"{what}: {acked} of {needed} replica(s) confirmed it within {self.timeout_ms} ms",
                    {"acked": acked, "needed": needed, "timeout_ms": self.timeout_ms})
