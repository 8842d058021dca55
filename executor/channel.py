"""The agent's kombu channel: it consumes through the take, waiting on doorbells in between.

:class:`TakingChannel` sends :data:`executor.take.TAKE` on the poll connection
instead of kombu's BRPOP, with the consumer's :class:`~executor.take.TakeLimits`;
after an empty take it waits on its queues' doorbells (no longer than until the
first delayed job of its queues is due, which the empty take reports), after a take
that found nothing fitting on its own (see :mod:`executor.take`). :class:`TakingQoS` does not
record again what the take recorded, and takes nothing while the consumer's gate
says zero (``may_take``). :mod:`executor.intake` extends the channel with its screening.
"""

from __future__ import annotations

import logging
from queue import Empty
from time import monotonic
from typing import Callable

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ResponseError

from tasks import keys, transport
from tasks.errors import WriteNotDurable
from tasks.transport import queue_of

from .take import DEFAULT_MAX_MESSAGE, LOOK_AHEAD, NOTHING_FITS_WAIT, TAKE, TakeLimits, take_arguments

log = logging.getLogger(__name__)

#: Seconds a doorbell wait outlasts the first delayed job's due time, so the next take sees it due.
DUE_MARGIN = 0.01


class TakingQoS(kombu_redis.QoS):
    """kombu's unacked bookkeeping, without re-recording what :data:`~executor.take.TAKE` recorded.

    Acknowledging or rejecting through a channel that closed with its connection (a
    broker restart while the job ran) does nothing: kombu would raise
    AttributeError from inside the worker's event loop, which Celery treats as
    unrecoverable and exits. The message's record stays in ``unacked``: the agent
    settles it itself once the outcome is stored (:meth:`executor.messages.HeldMessages.settle`),
    and a record nobody settles is requeued by the lease sweep.
    """

    def _closed(self, delivery_tag, doing: str) -> bool:
        if self.channel.closed or self.channel.connection is None:
            log.info("not %s %s through a closed channel: its record stays for the agent or the lease sweep",
                     doing, delivery_tag)
            return True
        return False

    def ack(self, delivery_tag):
        if not self._closed(delivery_tag, "acknowledging"):
            super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if not self._closed(delivery_tag, "rejecting"):
            super().reject(delivery_tag, requeue)

    def release(self, delivery_tag) -> None:
        """Free the delivery's prefetch slot, leaving its record in ``unacked`` for the lease sweep."""
        virtual.QoS.ack(self, delivery_tag)

    def can_consume(self):
        """Whether to take (or read a take's reply): never while the channel's gate says zero.

        A take already sent is always read: its message is recorded, and a reply left
        unread would hold it unleased until the lease sweep requeues it, then deliver
        it a second time. What arrives when it should not is handed back by admission.
        """
        channel = self.channel
        if channel._in_poll and channel._pending is None:
            return True
        # Only a channel that takes jobs obeys the gate. The remote-control channel
        # (Celery's pidbox: fanout queues only) must keep answering, since a draining
        # agent is asked what it still holds before its host is removed.
        if channel.may_take is not None and channel.active_queues and not channel.may_take():
            return False
        return super().can_consume()

    def restore_visible(self, start=0, num=10, interval=10):
        """kombu's lease sweep, with its cutoff from the server's clock.

        kombu takes the cutoff from this host's clock, but the take and the renewals
        score leases by the server's (:func:`server_time`): an agent whose clock ran
        behind would requeue every healthy job, one ahead would never requeue a dead
        host's.
        """
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            cutoff = server_time(client) - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    expired = client.zrange(self.unacked_index_key, cutoff, 0, desc=True, byscore=True,
                                            offset=num and start, num=num, withscores=True)
                    for tag, _ in expired or []:
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass

    def append(self, message, delivery_tag):
        if delivery_tag in self.channel.taken:
            self.channel.taken.discard(delivery_tag)
            return virtual.QoS.append(self, message, delivery_tag)
        return super().append(message, delivery_tag)


def server_time(client) -> float:
    """The Redis server's clock (TIME), in seconds: the one clock every lease is scored and swept by."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


class TakingChannel(transport.Channel):
    """jobyard's Redis channel whose consumers take atomically, and only what fits."""

    QoS = TakingQoS
    from_transport_options = transport.Channel.from_transport_options + (
        "take_limits", "wake_key", "may_take", "max_message", "intake_host")
    #: ``take_limits(queues) -> TakeLimits | None``: with limits, a consumer takes the
    #: oldest message that fits them (within :data:`LOOK_AHEAD`); without, the oldest.
    take_limits: Callable[[list[str]], TakeLimits | None] | None = None
    #: ``may_take() -> bool``: False while the consumer must take nothing (its gate says zero).
    may_take: Callable[[], bool] | None = None
    #: The consumer's own doorbell: ring it (:func:`tasks.transport.ring_key`) when its capacity frees.
    wake_key: str | None = None
    #: Header names :data:`TAKE` sizes a message by (set by consumers that size jobs).
    spec_header: str | None = None
    scale_header: str | None = None
    #: The largest raw item the take accepts; larger ones it sets aside (bytes).
    max_message = DEFAULT_MAX_MESSAGE
    #: Who the take names as having set an item aside (the worker's node name).
    intake_host = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Tags :data:`TAKE` recorded that kombu's QoS has not claimed yet.
        self.taken: set[str] = set()
        #: What to send next on the poll connection: a take (None), a wait on the
        #: queues' doorbells ("bells", after an empty take) or on this consumer's own
        #: ("own", after a take that found nothing fitting).
        self._next_wait: str | None = None
        self._pending: str | None = None  # what the command in flight is
        #: Seconds until the first delayed job of its lists is due, from the last empty take.
        self._due_in: float | None = None

    # -- consuming ----------------------------------------------------------------

    def _brpop_start(self, timeout=None):
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        prefix = self.global_keyprefix or ""
        bells = [prefix + keys.bell(queue) for queue in queues]
        own = [prefix + self.wake_key] if self.wake_key else []
        if self._next_wait == "bells" or (self._next_wait == "own" and not own):
            if self._due_in is not None:  # wake when the first delayed job comes due
                due = self._due_in + DUE_MARGIN
                timeout = min(timeout, due) if timeout else due
            command = ["BRPOP", *bells, *own, timeout or 0]
        elif self._next_wait == "own":
            command = ["BRPOP", *own, NOTHING_FITS_WAIT]
        elif self.may_take is not None and not self.may_take():
            return  # the gate closed since kombu looked: take nothing
        else:
            command = self._take_command(queues, bells, prefix)
        self._pending, self._next_wait, self._due_in = self._next_wait, None, None
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*command)

    def _take_command(self, queues: list[str], bells: list[str], prefix: str, sized: bool = True) -> list:
        pairs = [(queue, prefix + self._q_for_pri(queue, priority))
                 for priority in self.priority_steps for queue in queues]
        limits = self.take_limits(queues) if sized and self.take_limits and self.spec_header else None
        fixed = [prefix + self.unacked_key, prefix + self.unacked_index_key, prefix + keys.SKIPPED,
                 prefix + keys.rejected()]
        reservations = [prefix + keys.reservations(queue) for queue, _ in pairs]
        delayed = [prefix + keys.delayed(self._q_for_pri(queue, priority))
                   for priority in self.priority_steps for queue in queues]
        script_keys, argv = take_arguments(fixed, pairs, reservations, bells, limits, self.spec_header,
                                           self.scale_header, int(self.max_message), self.intake_host, delayed)
        return ["EVAL", TAKE, len(script_keys), *script_keys, *argv]

    def basic_get(self, queue, no_ack=False, **kwargs):
        """Take the oldest message of ``queue`` through :data:`TAKE`, recorded in the same step; or None."""
        command = self._take_command([queue], [], self.global_keyprefix or "", sized=False)
        for _ in range(LOOK_AHEAD):  # past items the take set aside, bounded
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                pipe.execute_command(*command)
                reply, = self.durability.execute(pipe, client, "recording a take")
            if reply is None or isinstance(reply, (bytes, str)):  # empty (a delayed job may wait)
                return None
            try:
                payload, _, tag = self._claim(*reply)
            except Empty:
                continue
            message = self.Message(payload, channel=self)
            if no_ack:
                self.qos._remove_from_indices(tag).execute()
            else:
                self.taken.add(tag)
                self.qos.append(message, tag)
            return message
        return None

    def _brpop_read(self, **options):
        pending, self._pending = self._pending, None
        try:
            try:
                # EVAL has no reply callback: a script's 0 must not read as BRPOP's "nothing".
                command = "EVAL" if pending is None else "BRPOP"
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except ResponseError as exc:  # e.g. a full noeviction server refusing the record
                log.warning("could not take a message (retrying after a doorbell wait): %s", exc)
                self._next_wait = "bells" if pending is None else None
                raise Empty() from exc
            if pending is not None:  # a doorbell rang, or the wait timed out: look again
                raise Empty()
            if reply is None or isinstance(reply, (bytes, str)):  # empty; text: seconds until one is due
                self._next_wait = "bells"
                self._due_in = float(reply) if reply is not None else None
                raise Empty()
            if isinstance(reply, int):
                self._next_wait = "own"
                raise Empty()
            if not self._take_confirmed():
                self._next_wait = "bells"  # look again after a doorbell wait, not at once
                raise Empty()
            return self._took(*reply)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _take_confirmed(self) -> bool:
        """With durable writes: whether replicas hold the take's record (WAIT, on the poll
        connection that sent the take). A take they do not hold is not delivered: no
        container starts for it, and its record is left to the lease, which requeues it."""
        durability = self.durability
        if not durability.enabled:
            return True
        connection = self.client.connection
        try:
            with self.conn_or_acquire() as client:
                needed = durability.needed(client)
                connection.send_command("WAIT", needed, durability.timeout_ms)
                acked = self.client.parse_response(connection, "WAIT")
                durability.confirm(int(acked), needed, client, "recording a take")
        except self.connection_errors:
            connection.disconnect()
            raise
        except (WriteNotDurable, ResponseError) as exc:  # ResponseError: e.g. a primary demoted meanwhile
            log.warning("could not confirm a take (%s): not delivering it; its lease brings it back", exc)
            return False
        return True

    def _took(self, list_key, item, tag, *aside) -> bool:
        payload, queue, tag = self._claim(list_key, item, tag, *aside)
        self._queue_cycle.rotate(queue)
        self.taken.add(tag)
        try:
            self.connection._deliver(payload, queue)
        finally:
            if tag in self.taken:
                self.taken.discard(tag)
                # Taken by a consumer that never acknowledges (no_ack): nothing to lease.
                self.qos._remove_from_indices(tag).execute()
        return True

    def _claim(self, list_key, item, tag, *aside) -> tuple[dict, str, str]:
        """The payload, queue and tag of one take's reply; Empty if the item was set aside."""
        queue = queue_of(bytes_to_str(list_key)[len(self.global_keyprefix or ""):])
        if item is None:  # the take set it aside itself
            reason, size = bytes_to_str(aside[0]), int(aside[1])
            log.warning("refused a message from queue %s (%d bytes): %s; set aside in %s",
                        queue, size, reason, keys.rejected())
            raise Empty()
        raw = item if isinstance(item, bytes) else str(item).encode()
        tag = bytes_to_str(tag)
        if not self.accept(raw, queue, tag):
            raise Empty()
        return loads(bytes_to_str(raw)), queue, tag

    def accept(self, raw: bytes, queue: str, tag: str) -> bool:
        """Whether to deliver a taken item recorded as ``tag``; subclasses screen it
        (``executor.intake``) and remove the record of what they refuse."""
        return True


class TakingTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`TakingChannel`."""

    Channel = TakingChannel


SentinelTakingTransport = transport.sentinel_variant(TakingTransport)

#: The transport's name: what a kombu connection that takes (a test, a tool) asks for.
TAKING_TRANSPORT = "redis-jobyard-taking"
TRANSPORT_ALIASES[TAKING_TRANSPORT] = f"{__name__}:TakingTransport"
TRANSPORT_ALIASES["sentinel-jobyard-taking"] = f"{__name__}:SentinelTakingTransport"
