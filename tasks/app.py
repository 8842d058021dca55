"""The Celery app that carries jobyard jobs.

Every job travels as a message for the task ``jobyard.run``
(:data:`tasks.names.RUN_TASK`). The message's ``shadow`` name is the job's own name
(so worker logs, task events and Flower show ``reports.grade``, not ``jobyard.run``),
its args/kwargs are the job's own call arguments, and the job spec rides in the
``jobyard_spec`` message header. No task body is registered here: callers publish by
name, and each agent registers its own (:mod:`executor.task`), which supervises a
container and never runs job code.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery
from celery.app.amqp import AMQP
from celery.utils import uuid
from kombu import Connection
from kombu.connection import ConnectionPool, PooledConnection
from kombu.exceptions import OperationalError

from . import security
from .clients import SentinelURL, is_sentinel, sentinel_options
from .config import Settings
from .errors import BrokerUnavailable, PublishFailed
from .ids import check_task_id
from .names import RUN_TASK, SPEC_HEADER  # noqa: F401 - their import path before tasks.names
from .results import RESULT_BACKENDS
from .transport import TRANSPORTS


def create_app(settings: Settings | None = None) -> Celery:
    """Build a Celery app configured for container jobs from ``settings``."""
    # Not made Celery's "current app": an app built for another broker (a test, a
    # tool) must not capture AsyncResult()s created without an explicit app.
    celery_app = JobCelery("jobyard", set_as_current=False, amqp=JobAMQP)
    celery_app.loader.override_backends = RESULT_BACKENDS
    configure(celery_app, settings or Settings.from_env())
    return celery_app


class JobCelery(Celery):
    """Celery, whose failed publishes are jobyard's errors and name the task id to send again.

    Celery raises kombu's ``OperationalError`` once the publish retries are spent; here
    that is :class:`tasks.errors.BrokerUnavailable` (still an ``OperationalError``).
    Both it and :class:`~tasks.errors.PublishNotDurable` carry ``details["task_id"]``,
    the id Celery would have made up, so a caller can send the job again under it.
    """

    def send_task(self, name, args=None, kwargs=None, countdown=None, eta=None, task_id=None, **options):
        task_id = task_id or uuid()
        try:
            return super().send_task(name, args, kwargs, countdown, eta, task_id, **options)
        except PublishFailed as exc:
            exc.details.setdefault("task_id", task_id)
            raise
        except OperationalError as exc:
            raise BrokerUnavailable(
                f"sending {options.get('shadow') or name} ({task_id}): the broker did not take it within the "
                f"publish retries ({exc}); it may or may not be queued: send it again with task_id={task_id!r}",
                {"task_id": task_id}) from exc


def configure(celery_app: Celery, settings: Settings) -> Celery:
    """(Re)configure ``celery_app`` from ``settings``; call before it first connects."""
    celery_app.conf.update(
        broker_url=settings.broker_url,
        # Publishes ring the queue's doorbell; see tasks.transport.
        broker_transport=TRANSPORTS.get(urlsplit(settings.broker_url).scheme),
        broker_transport_options=_transport_options(settings),
        result_backend=settings.result_backend,
        # Storing an outcome rides out a Redis restart (reconnect, AOF loading) for
        # about 90 s instead of turning a finished job into a Redis error.
        result_backend_transport_options={
            "retry_policy": {"max_retries": 90, "interval_start": 0, "interval_step": 1, "interval_max": 1},
            "health_check_interval": 10,
            **sentinel_options(settings, settings.result_backend),
        },
        visibility_timeout=settings.lease_seconds,
        **JSON_ONLY, **DELIVERY, **EVENTS, **_sentinel_conf(settings),
    )
    security.apply(celery_app, settings)
    celery_app.jobyard_settings = settings
    return celery_app


#: JSON on the wire and in the result store, never pickle.
JSON_ONLY = {"task_serializer": "json", "result_serializer": "json", "accept_content": ["json"],
             "result_accept_content": ["json"], "event_serializer": "json"}
#: Late acks, one message at a time, and a broker connection that comes back on its own.
DELIVERY = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    # A job's container does not depend on the broker connection; its lease and the
    # agent's own ack after the result is stored handle a reconnect.
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "broker_connection_retry_on_startup": True,
    "broker_connection_retry": True,
    "broker_connection_max_retries": None,
    "broker_heartbeat": 0,
    "task_default_queue": "default",
    "task_create_missing_queues": True,
}
#: What Flower and the callers see: states, events and extended results.
EVENTS = {"task_track_started": True, "task_send_sent_event": True, "worker_send_task_events": True,
          "result_extended": True, "result_expires": 7 * 24 * 3600, "worker_hijack_root_logger": False}


def _transport_options(settings: Settings) -> dict:
    # The lease: kombu requeues an unacked message whose unacked_index score is
    # older than visibility_timeout; agents renew the score of every message they
    # hold (executor.messages.renew), and every live agent sweeps.
    return {
        "visibility_timeout": settings.lease_seconds,
        "unacked_restore_interval": max(1, settings.lease_seconds // 5),
        "unacked_restore_throttle": 1,
        # A sweeper killed mid-sweep must not stall every sweep for kombu's default 5 min.
        # A sweep takes milliseconds, and two overlapping sweeps are safe (kombu restores
        # each tag in a WATCH transaction), so the lock only has to outlive one sweep.
        "unacked_mutex_expire": 3,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 10,
        # Durable writes (tasks.durable): publishes and takes wait for this many replicas.
        "min_replicas": settings.broker_min_replicas,
        "wait_timeout": settings.broker_wait_timeout,
        **sentinel_options(settings, settings.broker_url),
        # A command to a primary that stopped answering (a partition) gives up and
        # reconnects, through Sentinel, to the new one.
        **({"socket_timeout": 10, "socket_connect_timeout": 5} if is_sentinel(settings.broker_url) else {}),
    }


#: A publish rides out a Sentinel failover (down-after-milliseconds plus the
#: election, a few seconds) by retrying for about 20 s; publishes are idempotent.
SENTINEL_PUBLISH_RETRY = {"max_retries": 40, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5}


def _sentinel_conf(settings: Settings) -> dict:
    """Celery settings a Sentinel broker or result backend adds: TLS to the primaries
    (options from the URL's query), the publish retry, and short socket timeouts so a
    caller's connection to a primary that stopped answering gives up and finds the new one."""
    conf: dict = {}
    if is_sentinel(settings.broker_url):
        conf["task_publish_retry_policy"] = SENTINEL_PUBLISH_RETRY
        tls = SentinelURL.parse(settings.broker_url, "JOBYARD_BROKER_URL").tls
        if tls:
            conf["broker_use_ssl"] = tls
    if is_sentinel(settings.result_backend):
        # Every backend operation retries a connection error for about 30 s, the read
        # an outcome's store begins with included (Celery retries only the write): a
        # job finishing during a failover stores its outcome on the new primary
        # instead of waiting for its lease and running again.
        conf.update(redis_socket_timeout=10, redis_socket_connect_timeout=5, result_backend_always_retry=True,
                    result_backend_max_retries=40, result_backend_max_sleep_between_retries_ms=1000)
        tls = SentinelURL.parse(settings.result_backend, "JOBYARD_RESULT_BACKEND").tls
        if tls:
            conf["redis_backend_use_ssl"] = tls
    return conf


class KeepTransport:
    """Connection mixin: keep the transport when switching to an alternate URL.

    kombu re-reads the transport from the scheme of the next URL of a ``;`` list on a
    connection error (``Connection.switch``): after the first failover of a Sentinel
    URL, callers and agents would go on with kombu's own Sentinel transport, without
    idempotent publishes, doorbells or the take. The alternates of a Sentinel URL are
    the other sentinels of the same set, so the transport stays.
    """

    def switch(self, conn_str):
        transport = self.transport_cls
        super().switch(conn_str)
        self.transport_cls = transport


class JobPooledConnection(KeepTransport, PooledConnection):
    """A producer pool's connection (kombu's), keeping its transport."""


class JobConnectionPool(ConnectionPool):
    """kombu's connection pool of :class:`JobPooledConnection`."""

    def new(self):
        return JobPooledConnection(self, **dict(self.connection._info(resolve=False)))


class JobConnection(KeepTransport, Connection):
    """kombu's connection, keeping its transport (:class:`KeepTransport`), also in its pools."""

    def Pool(self, limit=None, **kwargs):
        return JobConnectionPool(self, limit=limit, **kwargs)


class JobAMQP(AMQP):
    """Celery's message builder, checking task ids and naming the job in its sent event.

    Every publish of the app passes here (delay, apply_async, canvas, retries), so a
    bad task id, the message's own or one its chain, callbacks or chord will send
    later, is refused before anything is queued (:mod:`tasks.ids`). Celery names the
    sent event after the real task (``jobyard.run``); when it reaches Flower after
    the agent's received event, it would rename the job.
    """

    Connection = JobConnection

    def as_task_v2(self, task_id, *args, **kwargs):
        check_task_id(task_id)
        message = super().as_task_v2(task_id, *args, **kwargs)
        for later in canvas_task_ids(message.body[2].values()):
            check_task_id(later)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event:
            message.sent_event["name"] = shadow
        return message


def canvas_task_ids(signatures) -> list:
    """The task ids set in ``signatures`` (dicts, lists of them) and the canvas nested in them."""
    found, pending = [], list(signatures)
    while pending:
        item = pending.pop()
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        if not isinstance(item, dict):
            continue
        options = item.get("options") or {}
        if options.get("task_id") is not None:
            found.append(options["task_id"])
        pending += [options.get(name) for name in ("link", "link_error", "chain")]
        kwargs = item.get("kwargs") if item.get("subtask_type") else None
        if isinstance(kwargs, dict):
            pending += [kwargs.get(name) for name in ("tasks", "header", "body")]
    return found


app = create_app()
app.set_current()
