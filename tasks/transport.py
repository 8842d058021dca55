"""jobyard's Redis transport, the caller's half: idempotent publishes that ring doorbells.

kombu's Redis transport queues a message with one LPUSH. jobyard's publish is one Lua
script (:data:`PUBLISH`, ``tasks/lua/publish.lua``) that pushes the message and rings
its queue's **doorbell** (a short list per queue, :func:`tasks.keys.bell`) in the same
step, at most once per task id and retry number, so Celery's retry of a publish whose
reply was lost does not queue the job twice; a retry (retry number > 0) raises the
job's retry mark (:func:`tasks.keys.retried`) in the same step. A doorbell holds no
job: consumers wait on them instead of polling (the consumer's half, with its atomic capacity-aware take
and reservations, is the agent's: :mod:`executor.take`, :mod:`executor.channel`).

A message whose ``eta`` is still to come by the server's clock (a ``countdown=`` or
``eta=`` call, a retry's countdown) goes, in the same step and byte for byte, to its
list's delayed set (:func:`tasks.keys.delayed`) instead of the list, so no agent holds
it while it waits; the take moves it to the head of its list once due
(``tasks/lua/delayed.lib.lua``).

Publishers that use :func:`tasks.create_app` ring doorbells; kombu's visibility
sweep rings when it requeues; jobyard's own requeues call :func:`ring`.
Reservations are written by the agents' take; :func:`reservation_holders` reads them
for ``jobyard status``.
"""

from __future__ import annotations

from importlib.resources import files
from time import time
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis.exceptions import ConnectionError as RedisConnectionError, ReadOnlyError

from . import keys
from .durable import DEFAULT_WAIT_TIMEOUT_MS, Durability
from .errors import PublishNotDurable
from .clients import SENTINEL_SCHEME, PrimaryConnection, follow_switches


def lua_script(package: str, name: str) -> str:
    """The text of the Lua script ``<package>/lua/<name>``.

    Scripts run by EVAL with their text, never by SHA alone: a server that lost its
    script cache (SCRIPT FLUSH, a restart, a failover to a replica) runs them all the
    same, on every path (the poll connection's raw take included).
    """
    return files(package).joinpath("lua", name).read_text(encoding="utf-8")


#: Doorbell entries kept per queue: enough to wake every consumer, never a backlog.
BELL_CAP = 256
#: Seconds a host's reservation for a passed-over message lives without the host
#: looking at that message again (executor.take).
RESERVATION_LIFETIME = 30.0


#: Lua functions for delayed jobs (reading an eta, moving due messages to their list)
#: that the publish and take scripts begin with: see ``tasks/lua/delayed.lib.lua``.
DELAYED_LIB = lua_script(__package__, "delayed.lib.lua")
#: Queue a message and ring its doorbell, at most once per task id and retry number; one
#: whose eta is to come goes to its list's delayed set: see ``tasks/lua/publish.lua``.
PUBLISH = DELAYED_LIB + lua_script(__package__, "publish.lua")


def ring(pipe, queue: str) -> Any:
    """Queue a push to ``queue``'s doorbell on ``pipe`` (after the message's own push)."""
    return pipe.lpush(keys.bell(queue), 1).ltrim(keys.bell(queue), 0, BELL_CAP - 1)


def ring_key(pipe, key: str) -> Any:
    """Queue a push to a consumer's own doorbell: one pending ring is enough."""
    return pipe.lpush(key, 1).ltrim(key, 0, 0)


def reservation(entry: Any) -> tuple[str, float]:
    """(holder, when it last saw the job) of a reservations hash value."""
    holder, _, seen = bytes_to_str(entry).rpartition(" ")
    try:
        return holder, float(seen)
    except ValueError:
        return holder, 0.0


def reservation_holders(client, queues: list[str], now: float | None = None) -> dict[str, int]:
    """Host -> how many passed-over jobs in ``queues`` it holds itself free for
    (reservations seen within :data:`RESERVATION_LIFETIME`)."""
    now = time() if now is None else now
    held: dict[str, int] = {}
    for queue in queues:
        for entry in client.hvals(keys.reservations(queue)):
            holder, seen = reservation(entry)
            if now - seen < RESERVATION_LIFETIME:
                held[holder] = held.get(holder, 0) + 1
    return held


def queue_of(list_key: str) -> str:
    """The queue a kombu list key belongs to (kombu suffixes priority lists)."""
    return list_key.rsplit(kombu_redis.Channel.sep, 1)[0]


class Channel(kombu_redis.Channel):
    """kombu's Redis channel whose publishes are idempotent and ring doorbells, and, with
    ``min_replicas``, return only once replicas hold them (:mod:`tasks.durable`)."""

    from_transport_options = kombu_redis.Channel.from_transport_options + ("min_replicas", "wait_timeout")
    #: Replicas that must confirm a publish (and the agent's take), and the wait's bound (ms).
    min_replicas = 0
    wait_timeout = DEFAULT_WAIT_TIMEOUT_MS

    @property
    def durability(self) -> Durability:
        """How this channel's writes wait for replicas."""
        return Durability(int(self.min_replicas), int(self.wait_timeout))

    def _put(self, queue, message, **kwargs):
        if self.connection is None:
            # Closed by a reconnect of the same publish (kombu's retried queue declare
            # revives the producer on a new channel, its publish still holds this one):
            # a connection error, so the publish's retry goes on with the new channel.
            raise RedisConnectionError("the channel was closed by a reconnect")
        priority = self._get_message_priority(message, reverse=False)
        prefix = self.global_keyprefix or ""
        list_key = self._q_for_pri(queue, priority)
        script_keys = [prefix + list_key, prefix + keys.bell(queue), prefix + keys.delayed(list_key)]
        headers = message.get("headers") or {}
        eta = headers.get("eta") if isinstance(headers.get("eta"), str) else ""
        task_id, retries = headers.get("id"), headers.get("retries") or 0
        mark = []
        if isinstance(task_id, str):
            script_keys.append(prefix + keys.published(task_id, retries))
            if isinstance(retries, int) and retries > 0:
                script_keys.append(prefix + keys.retried(task_id))
                mark = [retries, keys.DELIVERY_TTL]
        with self.conn_or_acquire() as client:
            # One pipeline: the script and its WAIT go on one connection (WAIT counts that connection's writes).
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("EVAL", PUBLISH, len(script_keys), *script_keys, dumps(message), BELL_CAP,
                                 keys.PUBLISHED_TTL, eta, *mark)
            # Only a job's message waits: a remote-control reply (no task id) is no job.
            durability = self.durability if isinstance(task_id, str) else Durability()
            durability.execute(pipe, client, f"publishing {task_id} to {queue}", PublishNotDurable)

    def _do_restore_message(self, payload, exchange, routing_key, pipe, leftmost=False):
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            ring(pipe, queue)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


#: kombu's Sentinel channel options (``master_name``, ``sentinel_kwargs``, ...).
SENTINEL_OPTIONS = ("master_name", "min_other_sentinels", "sentinel_kwargs", "sentinel_fanout_compat")


class FollowSwitches:
    """Channel mixin: the channel's Sentinel pools follow ``+switch-master`` (:func:`tasks.clients.follow_switches`)."""

    def _sentinel_managed_pool(self, asynchronous=False):
        pool = super()._sentinel_managed_pool(asynchronous)
        follow_switches(pool)
        return pool


def sentinel_variant(transport: type) -> type:
    """``transport`` whose channel reaches Redis through Sentinel, as kombu's ``SentinelChannel``:
    its connection pool is redis-py's Sentinel pool, so every new connection goes to the
    current primary, and a ``READONLY`` reply (a demoted primary) is a connection error
    that makes kombu and Celery reconnect there (celery#7946), and its pools move at
    once on a ``+switch-master`` (:class:`FollowSwitches`). Everything jobyard's
    channel does (idempotent publish, doorbells, the take) runs on that pool unchanged."""
    base = transport.Channel
    channel = type(f"Sentinel{base.__name__}", (base, FollowSwitches, kombu_redis.SentinelChannel), {
        "__module__": transport.__module__, "__doc__": f"{base.__name__} through Redis Sentinel.",
        "from_transport_options": base.from_transport_options + SENTINEL_OPTIONS,
        "connection_class": PrimaryConnection})
    return type(f"Sentinel{transport.__name__}", (transport,), {
        "__module__": transport.__module__, "__doc__": f"{transport.__name__} through Redis Sentinel.",
        "Channel": channel, "default_port": kombu_redis.SentinelTransport.default_port,
        # kombu retries a publish after a reconnect only once for a transport without
        # these: a second stale connection to a demoted primary would fail the publish.
        "recoverable_connection_errors": transport.connection_errors + (ReadOnlyError,),
        "recoverable_channel_errors": ()})


def register(transports: dict[str, str], module: str, plain: str, sentinel: str) -> None:
    """Name the transports of ``module``: ``transports`` maps a URL scheme to a transport
    name; a ``sentinel`` URL gets the class named ``sentinel``, the others ``plain``."""
    for scheme, name in transports.items():
        TRANSPORT_ALIASES[name] = f"{module}:{sentinel if scheme == SENTINEL_SCHEME else plain}"


SentinelTransport = sentinel_variant(Transport)

#: Transport names by broker URL scheme; the name is what "Connected to ..." shows.
TRANSPORTS = {"redis": "redis-jobyard", "rediss": "rediss-jobyard", SENTINEL_SCHEME: "sentinel-jobyard"}
register(TRANSPORTS, __name__, "Transport", "SentinelTransport")
