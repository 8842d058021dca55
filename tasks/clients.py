"""The one Redis client factory: every jobyard process reaches the broker's Redis here.

A broker or result-backend URL is a plain Redis URL (``redis://``, ``rediss://``,
``unix://``) or a **Sentinel URL** in Celery's form: one ``sentinel://`` URL per
sentinel, joined by ``;``::

    sentinel://:PASSWORD@10.0.0.1:26379/0;sentinel://:PASSWORD@10.0.0.2:26379/0;...

The password, user and database of the first part are the Redis primary's (as
Celery and kombu read them); the sentinels' own password, if they have one, is
``JOBYARD_SENTINEL_PASSWORD`` and the name of the master set ``JOBYARD_SENTINEL_MASTER``
(:class:`tasks.config.Settings`). A client for a Sentinel URL is redis-py's
``Sentinel(...).master_for(master)``: each new connection asks the sentinels where the
primary is, and a connection to a primary that was demoted (a ``READONLY`` reply) or
that dropped is closed and the next one finds the new primary (celery#7946).

:func:`broker_client` serves ``tasks.state``, the agent, the autoscaler and the CLI;
the transports (:mod:`tasks.transport`, :mod:`executor.channel`) and the result backend
(:mod:`tasks.app`) get the same Sentinel options from :func:`sentinel_options`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from .errors import SettingsError

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

SENTINEL_SCHEME = "sentinel"
#: Separates the sentinels of a Sentinel URL (Celery's and kombu's form).
SENTINEL_SEPARATOR = ";"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_SENTINEL_MASTER = "mymaster"
#: A master set's name: what ``sentinel monitor`` accepts without quoting.
MASTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The options every client of the broker's Redis gets unless told otherwise.
CLIENT_DEFAULTS = {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 10,
                   "retry_on_timeout": True}
#: TLS options a Sentinel URL's query may carry (the same names ``rediss://`` takes).
TLS_QUERY = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

#: Seconds between reconnects to a primary that refused a write with ``NOREPLICAS``.
#: A promoted replica refuses writes until a replica attaches (a second or two; up to
#: the sentinels' 10 s INFO period for one they reconfigure late): at this pace a
#: caller's publish retries (:data:`tasks.app.SENTINEL_PUBLISH_RETRY`) last about 10 s.
NOREPLICAS_PACE = 0.25
#: When each ``(host, port)`` last refused a write with ``NOREPLICAS``, in this process.
_refused: dict[tuple, float] = {}


def is_sentinel(url: str) -> bool:
    """Whether ``url`` is a Sentinel URL."""
    return url.split(":", 1)[0].lower() == SENTINEL_SCHEME


@dataclass(frozen=True)
class SentinelURL:
    """A Sentinel URL, read: the sentinels, and the primary's database and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: TLS options from the query (``ssl_cert_reqs`` ...): TLS to the primary and the sentinels.
    tls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str, variable: str) -> "SentinelURL":
        """Read ``url``; a :class:`SettingsError` naming ``variable`` (never the password) if it is not one."""
        sentinels, first = [], None
        for chunk in url.split(SENTINEL_SEPARATOR):
            chunk = chunk.strip()
            if not chunk:
                continue
            try:
                parts = urlsplit(chunk)
                host, port = parts.hostname, parts.port or DEFAULT_SENTINEL_PORT
            except ValueError:
                raise SettingsError(f"{variable}: a sentinel address is not host:port") from None
            if parts.scheme.lower() != SENTINEL_SCHEME or not host:
                raise SettingsError(f"{variable}: every part of a Sentinel URL must be sentinel://host:port "
                                    f"(joined by {SENTINEL_SEPARATOR!r})")
            sentinels.append((host, port))
            first = first or parts
        if first is None:
            raise SettingsError(f"{variable}: a Sentinel URL names no sentinel")
        path = first.path.strip("/") or "0"
        if not path.isdigit():
            raise SettingsError(f"{variable}: the database of a Sentinel URL must be a number")
        query = dict(parse_qsl(first.query))
        unknown = sorted(set(query) - set(TLS_QUERY))
        if unknown:
            raise SettingsError(f"{variable}: a Sentinel URL takes only TLS options, not {', '.join(unknown)}")
        return cls(tuple(sentinels), int(path), unquote(first.username) if first.username else None,
                   unquote(first.password) if first.password else None, query)


def with_db(url: str, db: int) -> str:
    """The same server(s) as ``url`` with database ``db`` (every part of a Sentinel URL)."""
    def one(chunk: str) -> str:
        parts = urlsplit(chunk)
        return parts._replace(path=f"/{db}").geturl()
    return SENTINEL_SEPARATOR.join(one(chunk) for chunk in url.split(SENTINEL_SEPARATOR) if chunk.strip())


def sentinel_kwargs(settings: "Settings", tls: dict[str, str] | None = None) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their own password and, with TLS, TLS."""
    options: dict[str, Any] = {"socket_timeout": CLIENT_DEFAULTS["socket_timeout"],
                               "socket_connect_timeout": CLIENT_DEFAULTS["socket_connect_timeout"]}
    if settings.sentinel_password:
        options["password"] = settings.sentinel_password
    if tls:
        options.update(ssl=True, **tls)
    return options


def sentinel_options(settings: "Settings", url: str) -> dict[str, Any]:
    """The kombu / Celery transport options for a Sentinel ``url`` ({} for any other URL)."""
    if not is_sentinel(url):
        return {}
    parsed = SentinelURL.parse(url, "JOBYARD_BROKER_URL")
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": sentinel_kwargs(settings, parsed.tls)}


def redis_client(url: str, settings: "Settings", variable: str = "JOBYARD_BROKER_URL", **options: Any) -> redis.Redis:
    """A client of the Redis ``url`` names: a plain one, or, for a Sentinel URL, one that
    always talks to the current primary of ``settings.sentinel_master``."""
    options = {**CLIENT_DEFAULTS, **options}
    if not is_sentinel(url):
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise SettingsError(f"{variable}: not a Redis URL ({exc.__class__.__name__})") from None
    parsed = SentinelURL.parse(url, variable)
    primary = dict(options, db=parsed.db, **parsed.tls)
    primary["connection_class"] = PrimarySSLConnection if parsed.tls else PrimaryConnection
    sentinel = JobSentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs(settings, parsed.tls),
                        **{k: v for k, v in primary.items() if k.startswith("socket_")})
    credentials = {"username": parsed.username, "password": parsed.password}
    client = sentinel.master_for(settings.sentinel_master, redis_class=redis.Redis,
                                 **{k: v for k, v in credentials.items() if v}, **primary)
    follow_switches(client.connection_pool)
    return client


class PrimaryConnection(SentinelManagedConnection):
    """redis-py's connection to a Sentinel set's primary, treating ``NOREPLICAS`` as
    redis-py treats ``READONLY``: a sign this server is no longer (or not yet) the
    primary to write to, so the connection closes and the retry asks the sentinels again.

    An old primary that comes back from a partition still believes it is the primary
    until the sentinels demote it; with ``min-replicas-to-write`` it refuses writes
    (its replicas have moved on), and this makes the refusal a reconnect to the new
    one instead of an error (or, without that setting, a write that is lost).
    """

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if self.connection_pool.is_master and str(exc).startswith("NOREPLICAS"):
                self.disconnect()
                _refused[(self.host, self.port)] = time.monotonic()
                raise redis.ConnectionError(
                    f"the primary {self.host}:{self.port} has too few replicas (NOREPLICAS)") from exc
            raise

    def connect_to(self, address):
        """Connect, first pausing while ``address`` refused a write for want of replicas
        less than :data:`NOREPLICAS_PACE` ago: the reconnects of kombu's and redis-py's
        retries would otherwise spend their every try within a second."""
        wait = _refused.get(tuple(address), -NOREPLICAS_PACE) + NOREPLICAS_PACE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        super().connect_to(address)


class PrimarySSLConnection(PrimaryConnection, redis.SSLConnection):
    """:class:`PrimaryConnection` over TLS (redis-py's ``SentinelManagedSSLConnection``, NOREPLICAS-aware)."""


class JobSentinel(Sentinel):
    """redis-py's Sentinel, asking for the primary the way a failover cannot fool.

    redis-py takes the first sentinel's word. During a failover the sentinels disagree
    for seconds: the one leading it keeps answering with the old primary (flagged
    ``failover_in_progress``) until it has reconfigured every replica, and one that has
    not heard of the switch yet answers with the old primary too. A client that
    reconnects there writes to a primary about to be demoted, and that is lost. Here
    answers in the middle of a failover are skipped, and of the others the one with the
    newest configuration epoch wins (a majority agreeing ends the search early).
    """

    def check_master_state(self, state, service_name):
        return "failover_in_progress" not in str(state.get("flags", "")) and \
            super().check_master_state(state, service_name)

    def discover_master(self, service_name):
        majority = len(self.sentinels) // 2 + 1
        answers: dict[tuple, int] = {}
        best = None
        for sentinel in self.sentinels:
            try:
                state = sentinel.sentinel_masters().get(service_name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if not state or not self.check_master_state(state, service_name):
                continue
            answer = (int(state.get("config-epoch") or 0), state["ip"], int(state["port"]))
            answers[answer] = answers.get(answer, 0) + 1
            best = max(best or answer, answer)
            if answers[answer] >= majority and answer == best:
                break
        if best is None:
            raise MasterNotFoundError(f"No master found for {service_name!r}")
        return best[1], best[2]


class SwitchWatch(threading.Thread):
    """Follows ``+switch-master`` of one master set on the sentinels and moves every
    registered connection pool to the new primary at once.

    redis-py asks the sentinels where the primary is only when it opens a connection.
    A planned ``SENTINEL FAILOVER`` leaves the old primary accepting writes until the
    sentinels demote it, about 10 s later (their INFO period); every write a process
    makes there meanwhile is lost when it resyncs as a replica. On the switch, this
    closes the idle connections of each pool and shuts down the sockets of the ones in
    use (a blocked read then fails as a dropped connection, which every caller of the
    pool already rides out), so the next command reaches the new primary.
    """

    def __init__(self, sentinels: list[redis.Redis], master: str):
        super().__init__(name=f"jobyard-sentinel-{master}", daemon=True)
        # Clients of its own: kombu closes a channel's sentinel clients with the channel,
        # which would close this thread's subscription under it.
        self.sentinels, self.master = [own_client(sentinel) for sentinel in sentinels], master
        self.pools: weakref.WeakSet = weakref.WeakSet()
        self.pid = os.getpid()
        self.switches = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        index = 0
        while not self.stopping.is_set():
            sentinel = self.sentinels[index % len(self.sentinels)]
            index += 1
            try:
                with sentinel.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe("+switch-master")
                    while not self.stopping.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message and message.get("type") == "message":
                            self.on_switch(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.debug("sentinel watch: %s; trying the next sentinel", exc)
            except Exception:  # noqa: BLE001 - the one thread that follows switches must not die
                log.exception("sentinel watch: unexpected error; trying the next sentinel")
            self.stopping.wait(0.5)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)

    def on_switch(self, data: Any) -> None:
        """``data``: ``<master> <old ip> <old port> <new ip> <new port>``."""
        fields = (data.decode() if isinstance(data, bytes) else str(data)).split()
        if len(fields) != 5 or fields[0] != self.master:
            return
        self.switches += 1
        log.warning("sentinel: master %s moved from %s:%s to %s:%s; reconnecting", *fields)
        for pool in list(self.pools):
            move_pool(pool)


def own_client(client: redis.Redis) -> redis.Redis:
    """A client of the same server with the same options as ``client``, on a pool of its own."""
    pool = client.connection_pool
    return redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class,
                                                  **pool.connection_kwargs))


def move_pool(pool) -> None:
    """Point a Sentinel pool at the primary the sentinels name now: its idle connections
    close; the sockets of those in use to another server are shut down."""
    in_use = list(getattr(pool, "_in_use_connections", ()))
    try:
        primary = pool.get_master_address()  # closes the idle connections when it moved
    except (redis.RedisError, OSError) as exc:
        log.warning("sentinel: cannot ask where the primary is: %s", exc)
        return
    for connection in in_use:
        sock = getattr(connection, "_sock", None)
        if sock is not None and (connection.host, connection.port) != tuple(primary):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_watches: dict[tuple, SwitchWatch] = {}
_watches_lock = threading.Lock()


def follow_switches(pool) -> None:
    """Make a redis-py Sentinel connection pool jobyard's: it skips sentinels in the middle
    of a failover (:class:`JobSentinel`) and moves on every ``+switch-master`` of its master
    set (:class:`SwitchWatch`, one thread per process, set of sentinels and master)."""
    manager = pool.sentinel_manager
    if type(manager) is Sentinel:  # built by kombu or Celery: the same, with jobyard's check
        manager.__class__ = JobSentinel
    sentinels, master = manager.sentinels, pool.service_name
    key = (tuple(sorted(f"{s.connection_pool.connection_kwargs.get('host')}:"
                        f"{s.connection_pool.connection_kwargs.get('port')}" for s in sentinels)), master)
    with _watches_lock:
        watch = _watches.get(key)
        if watch is None or watch.pid != os.getpid() or not watch.is_alive():
            watch = _watches[key] = SwitchWatch(list(sentinels), master)
            watch.start()
        watch.pools.add(pool)


def broker_client(settings: "Settings", **options: Any) -> redis.Redis:
    """A client of the broker's Redis (jobyard's own state lives there), text replies by default."""
    return redis_client(settings.broker_url, settings, **{"decode_responses": True, **options})
