"""One pull per image per Docker engine, at most ``max_pulls`` at once, under a pull policy.

:class:`PullCoordinator` is what the agent asks for a job's image. Callers waiting
for the same normalised reference share one pull: inside a process through one
:class:`_Flight` per reference, and across agents on one engine through a Redis key
per engine and reference (:func:`tasks.keys.pull_lock`): the agent that sets it
pulls and renews it, the others wait for it (woken by the puller's publish on a
channel named after the key, or at the latest by their poll) and then use the image
the engine now holds, or raise the puller's own typed failure. A dead puller's key expires and a waiter
takes over. Pull time is bounded by ``pull_timeout`` and is the caller's to charge.

The digest :meth:`PullCoordinator.ensure` returns (the job's ``image_digest`` fact) is
the registry digest the engine holds for the reference's repository (RepoDigests);
for an image with none, such as one built locally, it is the local image id
(``sha256:…`` of its config).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from typing import Callable, Iterable

import docker.errors
import redis.exceptions
import requests.exceptions

from tasks import keys
from tasks.errors import PULL_REASONS, BackendError, ImageNotFound, ImagePullFailed, InvalidJobSpec
from tasks.images import ImageRef, parse_image_ref

from .credentials import CredentialsError
from .pull import pull_image

PULL_POLICIES = ("missing", "always", "never")
POLL_INTERVAL = 0.2
_ENGINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}")

# KEYS[1] = the pull key; ARGV[1] = our "pulling" value; ARGV[2] = new TTL in ms.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
# KEYS[1] = the pull key; ARGV[1] = the value expected there; ARGV[2] = the new value; ARGV[3] = its TTL in ms.
_SWAP = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
           "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 0")
# KEYS[1] = the engine's pull slots; ARGV[1] = our token; ARGV[2] = the most pulls at once
# (0: only renew a slot we hold); ARGV[3] = a slot's TTL in ms. 1 when the token holds a slot.
_SLOT = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if not redis.call('zscore', KEYS[1], ARGV[1]) and redis.call('zcard', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[3])
return 1
"""
# As _SWAP, for our own pull's end; it also wakes the agents waiting for it (channel = the key).
_FINISH = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
           "redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) redis.call('publish', KEYS[1], '1') return 1 end "
           "return 0")
_ENGINE_DOWN = (requests.exceptions.RequestException, docker.errors.DockerException)


class ImageObserver:
    """Hooks for pull and cache metrics; every method is a no-op unless overridden."""

    def pull_started(self, ref: str) -> None:
        """This process began pulling ``ref`` (normalised)."""

    def pull_finished(self, ref: str, seconds: float, outcome: str) -> None:
        """A pull of ``ref`` ended: ``outcome`` is ``pulled`` or an ImagePullFailed reason."""

    def cache_measured(self, total_bytes: int) -> None:
        """The jobyard-pulled images on the engine add up to ``total_bytes``."""

    def image_evicted(self, ref: str, size: int) -> None:
        """The cache removed ``ref``, an image of ``size`` bytes."""


def engine_id(client) -> str:
    """The Docker engine's ``ID`` from ``client.info()``, checked to be safe in a Redis key."""
    return check_engine_id(client.info().get("ID"))


def check_engine_id(value: object) -> str:
    """``value`` if it is an engine id (letters, digits, ``:._-``, at most 128), else ValueError."""
    if not isinstance(value, str) or not _ENGINE_ID.fullmatch(value):
        raise ValueError(f"not a Docker engine id: {value!r}")
    return value


def check_policy(pull: object) -> str:
    """``pull`` if it is ``missing``, ``always`` or ``never``, else InvalidJobSpec(field="pull")."""
    if pull not in PULL_POLICIES:
        shown = repr(pull)[:40]
        raise InvalidJobSpec(f"invalid job spec: pull: {shown}: use one of {', '.join(PULL_POLICIES)}", field="pull")
    return pull


def local_digest(client, ref: ImageRef) -> str | None:
    """The digest of ``ref`` on the engine (see the module doc), or None when it is absent."""
    try:
        image = client.api.inspect_image(ref.normalised)
    except docker.errors.ImageNotFound:
        return None
    if ref.digest:
        return ref.digest
    for entry in image.get("RepoDigests") or []:
        try:
            named = parse_image_ref(entry)
        except InvalidJobSpec:
            continue
        if named.name == ref.name and named.digest:
            return named.digest
    return image["Id"]


def _parse(raw: str | None) -> dict | None:
    try:
        outcome = json.loads(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return outcome if isinstance(outcome, dict) else None


def ref_hash(ref: ImageRef) -> str:
    """The sha256 hex of the normalised reference: the per-image part of the pull key."""
    return hashlib.sha256(ref.normalised.encode()).hexdigest()


class _Flight:
    """One pull of one reference in this process, and everyone waiting for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.digest: str | None = None
        self.error: BaseException | None = None
        self.listeners: list[Callable[[str], None]] = []

    def progress(self, line: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(line)
            except Exception:  # a caller's progress sink must not break the shared pull
                pass

    def result(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.digest


class _Renewal:
    """Calls ``renew`` every ``period`` seconds from a daemon thread while in its block."""

    def __init__(self, renew: Callable[[], object], period: float):
        self.renew, self.period = renew, period
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pull-lock-renewal", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                self.renew()
            except redis.exceptions.RedisError:
                pass  # the next renewal tries again; the key outlives two misses

    def __enter__(self) -> "_Renewal":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


class _EngineSlot:
    """One of the engine's pull slots (:func:`tasks.keys.pull_slots`), held while we pull.

    The agents of one engine share them: a pull starts only while fewer than
    ``max_pulls`` unlapsed pulls are recorded; a dead agent's slot lapses after ``ttl``.
    """

    def __init__(self, redis, key: str, ref: ImageRef, max_pulls: int, ttl: float, poll_interval: float,
                 timeout: float):
        self.redis, self.key, self.ref, self.max_pulls = redis, key, ref, max_pulls
        self.ttl_ms, self.poll_interval, self.timeout = int(ttl * 1000), poll_interval, timeout
        self.token = secrets.token_hex(8)
        self.renewal = _Renewal(lambda: self.redis.eval(_SLOT, 1, self.key, self.token, 0, self.ttl_ms), ttl / 3)

    def __enter__(self) -> "_EngineSlot":
        deadline = time.monotonic() + self.timeout
        while not self.redis.eval(_SLOT, 1, self.key, self.token, self.max_pulls, self.ttl_ms):
            if time.monotonic() > deadline:
                raise ImagePullFailed(f"image pull failed (timeout): {self.ref.name}: no pull slot on the engine "
                                      f"within {self.timeout:g}s", {"image": self.ref.normalised}, reason="timeout",
                                      registry=self.ref.registry, repository=self.ref.repository)
            time.sleep(self.poll_interval)
        self.renewal.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.renewal.__exit__(*exc)
        self.redis.zrem(self.key, self.token)


class PullCoordinator:
    """Brings job images onto one Docker engine: one pull per image, ``max_pulls`` at once.

    ``credentials`` has ``auth_config(registry) -> dict`` (an
    :class:`executor.credentials.DockerConfig`); None pulls anonymously. ``cache``, an
    :class:`executor.image_cache.ImageCache`, learns of every image this coordinator
    pulled and every use of one. ``engine`` is the engine's id (:func:`engine_id`).
    """

    def __init__(self, client, redis, engine: str | None = None, max_pulls: int = 2, pull_timeout: float = 600.0,
                 credentials=None, cache=None, observer: ImageObserver | None = None,
                 lock_ttl: float = float(keys.PULL_LOCK_TTL), poll_interval: float = POLL_INTERVAL):
        if not (isinstance(max_pulls, int) and not isinstance(max_pulls, bool) and max_pulls >= 1):
            raise ValueError(f"max_pulls is a whole number of at least 1, not {max_pulls!r}")
        if not (isinstance(pull_timeout, (int, float)) and 0 < pull_timeout < float("inf")):
            raise ValueError(f"pull_timeout is a positive number of seconds, not {pull_timeout!r}")
        self.client, self.redis = client, redis
        self.engine = check_engine_id(engine) if engine is not None else engine_id(client)
        self.max_pulls, self.pull_timeout = max_pulls, float(pull_timeout)
        self.credentials, self.cache = credentials, cache
        self.observer = observer or ImageObserver()
        self.lock_ttl, self.poll_interval = lock_ttl, poll_interval
        self.slots = threading.BoundedSemaphore(max_pulls)
        self.flights: dict[str, _Flight] = {}
        self.guard = threading.Lock()

    def pulling(self) -> set[str]:
        """Normalised references this process is pulling or waiting on right now."""
        with self.guard:
            return set(self.flights)

    def ensure(self, ref: ImageRef | str, pull: str = "missing",
               on_progress: Callable[[str], None] | None = None,
               on_pull: Callable[[], None] | None = None) -> str:
        """Make ``ref`` present on the engine under the policy ``pull`` and return its digest.

        ``missing`` pulls only when the image is absent, ``always`` asks the registry
        every time, ``never`` raises :class:`ImageNotFound` when it is absent. ``on_pull``
        is called once, before this call waits on a pull (its own or a shared one): an
        image that is present costs one inspect and nothing in Redis but the cache's
        use mark. Raises :class:`ImagePullFailed`, or :class:`BackendError` when the
        engine or Redis is down.
        """
        ref = parse_image_ref(ref) if isinstance(ref, str) else ref
        check_policy(pull)
        looked = None
        if pull != "always":
            looked = time.monotonic()
            digest = self._present(ref)
            if digest is not None:
                self._touch(ref)
                return digest
            if pull == "never":
                raise ImageNotFound(f"image {ref.normalised} is not on this host and its pull policy is never",
                                    {"image": ref.normalised})
        if on_pull is not None:
            on_pull()
        return self._join(ref, pull, on_progress, looked)

    def _present(self, ref: ImageRef) -> str | None:
        try:
            return local_digest(self.client, ref)
        except _ENGINE_DOWN as exc:
            raise BackendError(f"cannot reach the Docker Engine to inspect {ref.name}: {type(exc).__name__}",
                               {"image": ref.normalised}) from exc

    def _touch(self, ref: ImageRef) -> None:
        if self.cache is not None:
            self.cache.touch(ref)

    def _join(self, ref: ImageRef, pull: str, on_progress: Callable[[str], None] | None,
              looked: float | None = None) -> str:
        """Pull ``ref``, or wait for the pull of it this process or another agent runs.

        ``looked``: when (monotonic) the caller saw the image absent, if it did."""
        with self.guard:
            flight = self.flights.get(ref.normalised)
            leader = flight is None
            if leader:
                flight = self.flights[ref.normalised] = _Flight()
            if on_progress is not None:
                flight.listeners.append(on_progress)
        if not leader:
            return flight.result()
        try:
            flight.digest = self._across_agents(ref, pull, flight.progress, looked)
        except BaseException as exc:
            flight.error = exc
        finally:
            with self.guard:
                del self.flights[ref.normalised]
            flight.done.set()
        return flight.result()

    def _across_agents(self, ref: ImageRef, pull: str, on_progress: Callable[[str], None],
                       looked: float | None) -> str:
        key = keys.pull_lock(self.engine, ref_hash(ref))
        mine = json.dumps({"state": "pulling", "token": secrets.token_hex(8)})
        ttl = int(self.lock_ttl * 1000)
        deadline = time.monotonic() + 3 * self.pull_timeout + self.lock_ttl
        waited = False
        waiting = None  # once another agent's pull is seen: our subscription to its end
        try:
            while True:
                if self.redis.set(key, mine, nx=True, px=ttl):
                    # A pull another agent finished after our look would still hold its key
                    # (its outcome lives PULL_RESULT_TTL s): taken at once, it needs no second look.
                    fresh = not waited and looked is not None and time.monotonic() - looked < keys.PULL_RESULT_TTL / 2
                    return self._lead(ref, pull, key, mine, on_progress, recheck=not fresh)
                raw = self.redis.get(key)
                outcome = _parse(raw)
                if raw is not None and (outcome is None or outcome.get("state") != "pulling"):
                    # A pull we waited for ended; one that ended before we came is no answer.
                    if waited and outcome is not None:
                        return self._followed(ref, outcome)
                    if self.redis.eval(_SWAP, 1, key, raw, mine, ttl):
                        return self._lead(ref, pull, key, mine, on_progress)
                    continue
                waited = waited or raw is not None
                if time.monotonic() > deadline:
                    raise ImagePullFailed(f"image pull failed (timeout): {ref.name}: another agent's pull "
                                          f"did not finish", {"image": ref.normalised}, reason="timeout",
                                          registry=ref.registry, repository=ref.repository)
                if waiting is None:
                    # Subscribed before the next look, so the end of the pull wakes us at once;
                    # the poll interval stays as the bound (a dead puller's key just expires).
                    waiting = self.redis.pubsub(ignore_subscribe_messages=True)
                    waiting.subscribe(key)
                    continue
                waiting.get_message(timeout=self.poll_interval)
        except redis.exceptions.RedisError as exc:
            raise BackendError(f"cannot reach Redis to coordinate the pull of {ref.name}: {type(exc).__name__}",
                               {"image": ref.normalised}) from exc
        finally:
            if waiting is not None:
                waiting.close()

    def _followed(self, ref: ImageRef, outcome: dict) -> str:
        """Another agent's finished pull: its image, now on the engine, or its failure."""
        if outcome.get("state") == "failed":
            reason = outcome.get("reason")
            message = outcome.get("message")
            if reason in PULL_REASONS and isinstance(message, str):
                raise ImagePullFailed(message[:1000], {"image": ref.normalised}, reason=reason,
                                      registry=ref.registry, repository=ref.repository)
        digest = self._present(ref)
        if digest is None:
            raise ImagePullFailed(f"image pull failed (not_found): {ref.name}: another agent pulled it, "
                                  "but the engine does not hold it", {"image": ref.normalised},
                                  reason="not_found", registry=ref.registry, repository=ref.repository)
        self._touch(ref)
        return digest

    def _lead(self, ref: ImageRef, pull: str, key: str, mine: str, on_progress: Callable[[str], None],
              recheck: bool = True) -> str:
        outcome: dict = {"state": "failed", "reason": "unreachable", "message": f"pull of {ref.name} stopped"}
        renew = lambda: self.redis.eval(_RENEW, 1, key, mine, int(self.lock_ttl * 1000))  # noqa: E731
        with _Renewal(renew, self.lock_ttl / 3):
            try:
                # Another agent may have pulled it between our look and our lock.
                digest = self._present(ref) if pull == "missing" and recheck else None
                if digest is None:
                    with self.slots, self._engine_slot(ref):
                        digest = self._pull(ref, on_progress, absent=pull == "missing")
                outcome = {"state": "done", "digest": digest}
                return digest
            except ImagePullFailed as exc:
                outcome = {"state": "failed", "reason": exc.reason, "message": exc.message}
                raise
            finally:
                self.redis.eval(_FINISH, 1, key, mine, json.dumps(outcome), keys.PULL_RESULT_TTL * 1000)

    def _engine_slot(self, ref: ImageRef) -> _EngineSlot:
        """One of the engine's ``max_pulls`` slots, shared with the other agents on it."""
        return _EngineSlot(self.redis, keys.pull_slots(self.engine), ref, self.max_pulls, self.lock_ttl,
                           self.poll_interval, self.pull_timeout)

    def _pull(self, ref: ImageRef, on_progress: Callable[[str], None], absent: bool = False) -> str:
        """Pull ``ref``; ``absent``: the caller just saw it absent (no need to look again)."""
        absent_before = absent or self.cache is None or self._present(ref) is None
        auth = self._auth(ref)
        self.observer.pull_started(ref.normalised)
        started = time.monotonic()
        result = "unreachable"
        try:
            digest = pull_image(self.client, ref, auth, timeout=self.pull_timeout, on_progress=on_progress)
            result = "pulled"
        except ImagePullFailed as exc:
            result = exc.reason
            raise
        finally:
            self.observer.pull_finished(ref.normalised, time.monotonic() - started, result)
        # An image the operator had before an 'always' pull stays theirs: never ours to evict.
        if self.cache is not None and (absent_before or self.cache.recorded(ref)):
            self.cache.record(ref)
        return digest


    def _auth(self, ref: ImageRef) -> dict:
        """The credentials for ``ref``'s registry; a broken config or helper is an ``auth`` failure,
        published as such to every agent waiting on the pull."""
        if self.credentials is None:
            return {}
        try:
            return self.credentials.auth_config(ref.registry)
        except CredentialsError as exc:
            raise ImagePullFailed(f"image pull failed (auth): {ref.name}: {exc}", {"image": ref.normalised},
                                  reason="auth", registry=ref.registry, repository=ref.repository) from None


def combined(*sources: Callable[[], Iterable[str]]) -> Callable[[], set[str]]:
    """One in-use callable for :class:`executor.image_cache.ImageCache` from several."""
    def in_use() -> set[str]:
        found: set[str] = set()
        for source in sources:
            found.update(source())
        return found
    return in_use
