"""What an agent accepts from its queues, and where it puts what it refuses.

Celery and kombu trust the queue. A raw Redis list item that is not JSON, or whose
envelope is not kombu's, raises inside the worker's event loop and kills the agent;
a message that breaks Celery after kombu recorded it as unacked comes back after
the restart and kills it again. So the agent screens every message twice before
anything runs:

1. :class:`IntakeChannel` screens the raw item as it is taken from its queue
   (:mod:`executor.channel`): the size cap, JSON, kombu's envelope. What it
   refuses never reaches kombu.
2. :class:`IntakeConsumer` screens the decoded message: Celery's own refusals
   (undecodable body, a disallowed content type such as pickle, an unknown task or
   format) and jobyard's (a task id outside :mod:`tasks.ids`' rule, a ``jobyard.run``
   call without its spec header, arguments that are not a list, a Celery built-in
   task such as ``celery.map``, ...).

Each refused message is logged once, set aside with its reason in the capped list
:func:`tasks.keys.rejected`, and acknowledged, so it never comes back. A refused
call that names a task id gets a failed result, so a caller waiting on it sees a
terminal state. A well-formed call whose spec is invalid still reaches the task,
which ends it with ``InvalidJobSpec``.
"""

from __future__ import annotations

import functools
import base64
import binascii
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from celery.exceptions import NotRegistered
from celery.utils.collections import AttributeDict
from celery.worker.consumer import Consumer
from celery.worker.state import active_requests, reserved_requests, scheduled_requests
from kombu.exceptions import ContentDisallowed, DecodeError
from vine import promise

from tasks import keys
from tasks.names import RUN_TASK, SPEC_HEADER
from tasks.errors import InvalidJobSpec
from tasks.ids import task_id_problem
from tasks.records import RejectedMessage
from tasks.transport import register, sentinel_variant

from .retry import MEMORY_SCALE_HEADER
from .steps import AGENT_OPTION
from .channel import TakingChannel, TakingTransport

log = logging.getLogger(__name__)


def message_cap(app) -> int:
    """The largest raw message an agent accepts: ``JOBYARD_MAX_MESSAGE`` bytes (:mod:`tasks.config`)."""
    return app.jobyard_settings.max_message


def raw_problem(raw: bytes, cap: int) -> str | None:
    """Why a raw queue item is not a message kombu can take, or None."""
    if len(raw) > cap:
        return f"oversized: {len(raw)} bytes, over the {cap}-byte cap"
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as exc:
        return f"not JSON: {exc}"
    return envelope_problem(payload)


def envelope_problem(payload: Any) -> str | None:
    """Why a decoded item is not a kombu Redis envelope, or None."""
    if not isinstance(payload, dict):
        return f"envelope is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "envelope has no properties object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not 0 < len(tag) <= 200:
        return "envelope has no delivery_tag string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "envelope has no delivery_info with exchange and routing_key"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            return f"envelope {name} is not a string"
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        return "envelope headers are not an object"
    return body_problem(payload.get("body"), properties.get("body_encoding"))


def body_problem(body: Any, encoding: Any) -> str | None:
    """Why an envelope's body cannot be decoded, or None."""
    if body is None:
        return None
    if not isinstance(body, str):
        return "envelope body is not a string"
    if encoding not in (None, "base64"):
        return f"unknown body_encoding {encoding!r}"
    if encoding == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "envelope body is not base64"
    return None


def call_problem(headers: dict, body: Any) -> str | None:
    """Why a decoded ``jobyard.run`` message is not a job call, or None.

    The spec's own fields are not checked here: the task validates them and ends
    the job with ``InvalidJobSpec``, which its caller sees.
    """
    if not isinstance(headers.get(SPEC_HEADER), dict):
        return f"no {SPEC_HEADER} header object"
    if not (isinstance(body, (list, tuple)) and len(body) == 3):
        return "body is not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list):
        return f"args is a {type(args).__name__}, not a list"
    if not isinstance(kwargs, dict):
        return f"kwargs is a {type(kwargs).__name__}, not an object"
    if embed is not None and not isinstance(embed, dict):
        return "embed is not an object"
    retries = headers.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        return "retries is not a non-negative integer"
    return None


def headers_problem(headers: Any) -> str | None:
    """Why a message's headers cannot name a task, or None."""
    if not isinstance(headers, dict):
        return "no headers object"
    if not isinstance(headers.get("task"), str) or not isinstance(headers.get("id"), str):
        return "headers lack task and id strings"
    return None


def id_problem(headers: Any) -> str | None:
    """Why the task id a message's headers name breaks :mod:`tasks.ids`' rule, or None.

    Headers without an id string are :func:`headers_problem`'s to refuse.
    """
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        return None
    return task_id_problem(headers["id"])


#: Seconds an eta may lie ahead of this host's clock and still be run at once: the
#: take hands over only jobs due by the server's clock, so only clock skew puts one ahead.
ETA_SKEW = 60.0


def due_headers(headers: dict) -> dict:
    """``headers`` without their ``eta`` if it is due (within :data:`ETA_SKEW` of this host's clock).

    The take delivers an eta message only once the server's clock reached it
    (``tasks/lua/delayed.lib.lua``); Celery would still hold it on a timer until this
    host's clock does, taking a prefetch slot. The message itself (``_raw``, which
    hand-backs and dead letters copy, and the seal covers) keeps its eta. One further
    ahead (an eta the take could not read) is left to Celery.
    """
    eta = headers.get("eta")
    if not isinstance(eta, str):
        return headers
    try:
        due = datetime.fromisoformat(eta)
    except ValueError:
        return headers  # Celery's request refuses it as an invalid ETA
    if due.tzinfo is None:
        due = due.replace(tzinfo=timezone.utc)
    if due.timestamp() > time.time() + ETA_SKEW:
        log.warning("task %s has an eta %s ahead of this host's clock: Celery holds it", headers.get("id"), eta)
        return headers
    return {**headers, "eta": None}


def rejection(raw: bytes, reason: str, queue: str | None, host: str | None) -> str:
    """The JSON record set aside for one refused message (:class:`tasks.records.RejectedMessage`)."""
    return RejectedMessage.of(raw, reason, queue, host).to_json()


class IntakeChannel(TakingChannel):
    """jobyard's Redis channel, refusing taken items that are not messages kombu can take."""

    spec_header = SPEC_HEADER
    scale_header = MEMORY_SCALE_HEADER
    # Never restore this channel's unacked messages when it closes: after a broker
    # blip that would run a healthy running job a second time. Leases requeue what
    # a dead agent held; a warm shutdown hands unstarted jobs back itself.
    do_restore = False

    def accept(self, raw: bytes, queue: str, tag: str) -> bool:
        # The last point before kombu's json.loads and envelope code, either of
        # which would raise inside the worker's event loop. The take already set
        # aside what is not JSON or not an envelope; this is the rest of the screen.
        problem = raw_problem(raw, int(self.max_message))
        if problem is None:
            return True
        self.set_aside(raw, problem, queue, tag)
        return False

    def set_aside(self, raw: bytes, reason: str, queue: str | None, tag: str | None = None) -> None:
        """Log a refused message once and keep it, with ``reason``, in the rejected list;
        with ``tag``, remove the take's record of it in the same transaction."""
        log.warning("refused a message from queue %s (%d bytes): %s; set aside in %s",
                    queue, len(raw), reason, keys.rejected())
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline().lpush(keys.rejected(), rejection(raw, reason, queue, self.intake_host)) \
                    .ltrim(keys.rejected(), 0, keys.REJECTED_KEPT - 1) \
                    .expire(keys.rejected(), keys.REJECTED_TTL)
                if tag:
                    self.qos._remove_from_indices(tag, pipe)
                pipe.execute()
        except self.connection_errors as exc:
            log.warning("could not set the refused message aside: %s", exc)


class IntakeTransport(TakingTransport):
    """jobyard's Redis transport with :class:`IntakeChannel`."""

    Channel = IntakeChannel


SentinelIntakeTransport = sentinel_variant(IntakeTransport)

#: Transport names by broker URL scheme; the name is what the worker's
#: "Connected to ..." line shows.
TRANSPORTS = {"redis": "redis-screened", "rediss": "rediss-screened", "sentinel": "sentinel-screened"}
register(TRANSPORTS, __name__, "IntakeTransport", "SentinelIntakeTransport")


#: How fast the agent retries its broker connection. Celery's consumer leaves the pace to
#: kombu's defaults (2 s, then 4 s, 6 s ... up to 30 s between attempts), so an agent
#: sat idle for seconds after its Redis came back from a restart or a failover.
RECONNECT_PACE = {"interval_start": 0.1, "interval_step": 0.2, "interval_max": 1.0}


class IntakeConsumer(Consumer):
    """Celery's worker consumer, refusing bad messages once instead of crashing.

    Set as the agent's ``consumer_cls``; see the module docstring. The worker hands
    it its agent in ``worker_options`` (:data:`executor.steps.AGENT_OPTION`).
    """

    def __init__(self, *args, worker_options=None, **kwargs):
        self.jobyard_agent = (worker_options or {}).get(AGENT_OPTION)
        super().__init__(*args, worker_options=worker_options, **kwargs)

    def connection_for_read(self, heartbeat=None):
        options = {"max_message": message_cap(self.app), "intake_host": self.hostname}
        agent = self.jobyard_agent
        if agent is not None:  # take only jobs that fit, and wake when capacity frees
            options.update(take_limits=agent.placement.take_limits, wake_key=keys.wake(agent.name),
                           may_take=agent.gate.may_take)
        transport = TRANSPORTS[urlsplit(self.app.conf.broker_url).scheme]
        return self.ensure_connected(self.app.connection_for_read(
            heartbeat=heartbeat, transport=transport, transport_options=options))

    def ensure_connected(self, conn):
        """Celery's connection retry, at :data:`RECONNECT_PACE`."""
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_PACE)
        return super().ensure_connected(conn)

    def on_close(self):
        """Celery's clean-up of a lost connection; the agent lets go of the requests it drops.

        Celery cancels the timers of requests waiting for their eta (a countdown or a
        retry's delay) and forgets them, expecting the broker to deliver them again.
        Their messages are held by this agent, which would renew their leases for
        ever: the job would never run while the agent lives. Let go, the lease sweep
        brings them back.
        """
        dropped = [request for request in scheduled_requests
                   if request not in active_requests and request not in reserved_requests]
        super().on_close()
        agent = self.jobyard_agent
        for request in dropped if agent is not None else ():
            if agent.held.get(request.id, request.message.delivery_tag) is request.message:
                agent.held.let_go(request.id, request.message.delivery_tag)
                log.warning("job %s waited for its eta when the broker connection closed: its lease brings it back",
                            request.id)

    def on_decode_error(self, message, exc):
        self.refuse(message, f"undecodable body: {exc}")

    def on_unknown_message(self, body, message):
        self.refuse(message, "not a task message")

    def on_unknown_task(self, body, message, exc):
        name = (message.headers or {}).get("task")
        self.refuse(message, f"unknown task {name!r}", NotRegistered(name))

    def on_invalid_task(self, body, message, exc):
        reason = "content type refused" if isinstance(exc, ContentDisallowed) else "invalid task message"
        self.refuse(message, f"{reason}: {exc}")

    def create_task_handler(self, promise=promise):
        handle = super().create_task_handler(promise)

        def on_task_received(message):
            problem = id_problem(message.headers)
            if problem:  # before anything can name a directory or container after it
                return self.refuse(message, problem, InvalidJobSpec(problem, field="task_id"))
            try:
                problem = self._screen(message)
            except ContentDisallowed as exc:
                return self.on_invalid_task(None, message, exc)
            except DecodeError as exc:
                return self.on_decode_error(message, exc)
            if problem:
                return self.refuse(message, problem, InvalidJobSpec(problem, field="call"))
            name = message.headers["task"]
            if name != RUN_TASK and name in self.app.tasks:
                # Celery's built-ins (celery.map, celery.chunks, ...) would call
                # jobyard.run in-process, around these checks; jobs never need them.
                return self.refuse(message, f"task {name!r} is not run by agents", NotRegistered(name))
            problem = self._seal_problem(message)
            if problem:
                return self.refuse(message, problem)
            message.headers = due_headers(message.headers)
            try:
                return handle(message)
            except self.connection_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the agent
                if message.acknowledged:  # already settled: it cannot come back
                    return log.exception("consumer failed on an acknowledged message")
                return self.refuse(message, f"broke the consumer: {exc!r}")

        return on_task_received

    @staticmethod
    def _screen(message) -> str | None:
        problem = headers_problem(message.headers)
        if problem or message.headers["task"] != RUN_TASK:
            return problem
        return call_problem(message.headers, message.decode())

    def _seal_problem(self, message) -> str | None:
        # With signing on, a job's spec header must be sealed to its signed body
        # (tasks.security): Celery's signature covers the body only.
        sealer = getattr(self.app, "jobyard_sealer", None)
        if sealer is None or message.headers["task"] != RUN_TASK:
            return None
        return sealer.problem(message.headers, message.decode())

    def refuse(self, message, reason: str, error: Exception | None = None) -> None:
        """Set ``message`` aside with ``reason``, acknowledge it, and fail its task id."""
        raw = json.dumps(getattr(message, "_raw", None) or {"body": _text(message.body)}).encode()
        queue = (message.delivery_info or {}).get("routing_key")
        if isinstance(message.channel, IntakeChannel):
            message.channel.set_aside(raw, reason, queue)
        else:
            log.warning("refused a message from queue %s: %s", queue, reason)
        message.reject_log_error(log, self.connection_errors)
        if error is not None:
            self._fail(message.headers, error)

    def _fail(self, headers: Any, error: Exception) -> None:
        task_id = headers.get("id") if isinstance(headers, dict) else None
        if not isinstance(task_id, str):
            return
        request = AttributeDict(name=headers.get("task"), chord=None, root_id=headers.get("root_id"),
                                correlation_id=task_id, reply_to=None, errbacks=None)
        try:
            self.app.backend.mark_as_failure(task_id, error, request=request)
        except Exception as exc:  # noqa: BLE001 - the refusal stands even if the backend is down
            log.warning("could not record the failure of refused message %s: %s", task_id, exc)
        if self.event_dispatcher:
            self.event_dispatcher.send("task-failed", uuid=task_id, exception=repr(error))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
