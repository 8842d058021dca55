"""jobyard's Redis transport: a queued job is always in Redis, on a queue or recorded as taken.

kombu's Redis transport takes a message in two round trips: BRPOP pops it, then
the consumer records it in kombu's unacked hash and index (``unacked``,
``unacked_index``), which is what lets a lease requeue it if its taker dies. A
connection that dies between the two (Redis crashing after the pop, the reply
lost on the way, the consumer killed while reading it) loses the job, though no
container ever started it.

This transport closes that window:

* **Taking** is one Lua script (:data:`TAKE`): it pops the first message from the
  consumer's queue lists, in kombu's order (priority, then queue), and records it
  in kombu's unacked hash and index in the same atomic step. Whatever happens to
  the reply, the job is either still queued or recorded, and an unrenewed record
  is requeued by kombu's visibility sweep (the lease, :mod:`tasks.app`).
* The script never blocks, so a consumer **waits on doorbells**: one short list
  per queue (:func:`tasks.keys.bell`) that every publish pushes to, in the same
  MULTI as the message. A doorbell holds no job, so popping one loses nothing; a
  consumer woken by one runs the script. When the script finds its queues empty it
  deletes their doorbells, which leaves none behind for jobs already taken.
* A message pushed without ringing (a plain kombu publisher, a hand-edited list)
  is still taken: a doorbell wait times out after ``brpop_timeout`` (1 s) and the
  consumer looks again.

Publishers that use :func:`tasks.create_app` ring doorbells; kombu's visibility
sweep rings when it requeues; jobyard's own requeues call :func:`ring`.
"""

from __future__ import annotations

import logging
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ResponseError

from . import keys

log = logging.getLogger(__name__)

#: Doorbell entries kept per queue: enough to wake every consumer, never a backlog.
BELL_CAP = 256

#: KEYS: unacked hash, unacked index, the queue lists in order, then the queues'
#: doorbells. ARGV: now (kombu scores the index with the consumer's clock), the
#: number of queue lists. Returns {list key, raw item, delivery tag or false}, or
#: nil when every list is empty. An item that is not a kombu envelope is returned
#: unrecorded, for the consumer to refuse. The record is kombu's own
#: ``[payload, exchange, routing_key]``, with the payload's text kept byte for byte.
#: The record is written before the pop: Redis does not roll a failed script back,
#: and on a full ``noeviction`` server the record is what fails (RPOP frees memory).
TAKE = """
local lists = tonumber(ARGV[2])
for i = 3, 2 + lists do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local ok, message = pcall(cjson.decode, item)
    local tag = false
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      local properties = message.properties
      local info = properties.delivery_info
      if type(properties.delivery_tag) == 'string' and type(info) == 'table'
          and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
        tag = properties.delivery_tag
        redis.call('HSET', KEYS[1], tag,
          '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
        redis.call('ZADD', KEYS[2], ARGV[1], tag)
      end
    end
    redis.call('RPOP', KEYS[i])
    return {KEYS[i], item, tag}
  end
end
for i = 3 + lists, #KEYS do
  redis.call('DEL', KEYS[i])
end
return false
"""


def ring(pipe, queue: str) -> Any:
    """Queue a push to ``queue``'s doorbell on ``pipe`` (after the message's own push)."""
    return pipe.lpush(keys.bell(queue), 1).ltrim(keys.bell(queue), 0, BELL_CAP - 1)


def queue_of(list_key: str) -> str:
    """The queue a kombu list key belongs to (kombu suffixes priority lists)."""
    return list_key.rsplit(kombu_redis.Channel.sep, 1)[0]


class TakingQoS(kombu_redis.QoS):
    """kombu's unacked bookkeeping, without re-recording what :data:`TAKE` recorded."""

    def append(self, message, delivery_tag):
        if self.channel.taken.pop(delivery_tag, None) is not None:
            return virtual.QoS.append(self, message, delivery_tag)
        return super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel: publishes ring doorbells; consumers take atomically."""

    QoS = TakingQoS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Tags :data:`TAKE` recorded that kombu's QoS has not claimed yet.
        self.taken: dict[str, bool] = {}
        self._awaiting_bell = False  # what the pending command on the poll connection is
        self._bells_due = False      # the last take found nothing: wait on doorbells next

    # -- publishing ---------------------------------------------------------------

    def _put(self, queue, message, **kwargs):
        priority = self._get_message_priority(message, reverse=False)
        with self.conn_or_acquire() as client:
            with client.pipeline() as pipe:  # MULTI: no doorbell without its message
                pipe.lpush(self._q_for_pri(queue, priority), dumps(message))
                ring(pipe, queue).execute()

    def _do_restore_message(self, payload, exchange, routing_key, pipe, leftmost=False):
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            ring(pipe, queue)

    # -- consuming ----------------------------------------------------------------

    def _brpop_start(self, timeout=None):
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        prefix = self.global_keyprefix or ""
        bells = [prefix + keys.bell(queue) for queue in queues]
        if self._bells_due:
            command = ["BRPOP", *bells, timeout or 0]
        else:
            lists = [prefix + self._q_for_pri(queue, priority)
                     for priority in self.priority_steps for queue in queues]
            unacked = [prefix + self.unacked_key, prefix + self.unacked_index_key]
            command = ["EVAL", TAKE, 2 + len(lists) + len(bells), *unacked, *lists, *bells, time(), len(lists)]
        self._awaiting_bell = self._bells_due
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options):
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except ResponseError as exc:  # e.g. a full noeviction server refusing the record
                log.warning("could not take a message (retrying after a doorbell wait): %s", exc)
                self._bells_due = not self._awaiting_bell
                raise Empty() from exc
            if self._awaiting_bell:  # rung, or timed out: look at the queues either way
                self._bells_due = False
                raise Empty()
            if not reply:
                self._bells_due = True
                raise Empty()
            return self._took(*reply)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _took(self, list_key, item, tag) -> bool:
        list_key = bytes_to_str(list_key)[len(self.global_keyprefix or ""):]
        queue = queue_of(list_key)
        self._queue_cycle.rotate(queue)
        raw = item if isinstance(item, bytes) else str(item).encode()
        tag = bytes_to_str(tag) if tag else None
        if not self.accept(raw, queue):
            if tag:
                self.qos._remove_from_indices(tag).execute()
            raise Empty()
        if tag:
            self.taken[tag] = True
        try:
            self.connection._deliver(loads(bytes_to_str(raw)), queue)
        finally:
            if tag and self.taken.pop(tag, None) is not None:
                # Taken by a consumer that never acknowledges (no_ack): nothing to lease.
                self.qos._remove_from_indices(tag).execute()
        return True

    def accept(self, raw: bytes, queue: str) -> bool:
        """Whether to deliver a taken item; subclasses screen it (``executor.intake``)."""
        return True


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


#: Transport names by broker URL scheme; the name is what "Connected to ..." shows.
TRANSPORTS = {"redis": "redis-jobyard", "rediss": "rediss-jobyard"}
for _name in TRANSPORTS.values():
    TRANSPORT_ALIASES[_name] = f"{__name__}:Transport"
