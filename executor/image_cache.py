"""The images jobyard pulled onto one Docker engine, kept within a budget (``--image-cache SIZE``).

The record is a Redis sorted set per engine (:func:`tasks.keys.images`): normalised
reference -> last use, shared by every agent on that engine and kept across agent
restarts. Only references in it are ever removed, and never one in use: what the
``in_use`` callable names (references or image ids of running, admitted and pulling
jobs), what :class:`ImagesInUse` records for the jobs every agent on the engine holds,
and every image a container on the engine was created from.

Sizes are the engine's ``Size`` of each image, so layers that images share are
counted once per image: the total is an upper bound of the disk they take.
An image that also carries a tag jobyard did not pull is someone else's as well: it
is neither counted nor removed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import docker.errors

from tasks import keys
from tasks.errors import InvalidJobSpec
from tasks.images import ImageRef, parse_image_ref
from tasks.units import parse_memory

from .pulls import ImageObserver, check_engine_id

log = logging.getLogger(__name__)

_IMAGE_ID = re.compile(r"(?:sha256:)?([a-f0-9]{64})")


@dataclass(frozen=True)
class Evicted:
    """One image the cache removed: its references, image id and size in bytes."""

    refs: tuple[str, ...]
    image_id: str
    size: int


@dataclass
class _Image:
    image_id: str
    size: int
    tags: frozenset[str]
    refs: list[str]
    last_used: float


class ImagesInUse:
    """The images of the jobs this agent holds, in memory and in the engine's shared record.

    The record (:func:`tasks.keys.images_in_use`) is what the caches of the other
    agents on the engine keep: an entry is written when a job is taken on (before its
    image is looked at), renewed by :meth:`renew` with every heartbeat, and removed
    with the heartbeat that follows the job's end (or lapses with a dead agent).
    Thread-safe; a Redis failure only loses the other agents' view, never this one's.
    """

    def __init__(self, redis, engine: str, agent: str, now: Callable[[], float] = time.time):
        self.redis, self.agent, self.now = redis, agent, now
        self.key = keys.images_in_use(check_engine_id(engine))
        self._images: dict[str, str] = {}
        self._ended: list[str] = []
        self._lock = threading.Lock()

    def _member(self, task_id: str, ref: str) -> str:
        return f"{task_id} {ref} {self.agent}"

    def add(self, task_id: str, ref: str) -> None:
        """Note that ``task_id``'s job uses ``ref`` (normalised), here and in the shared record."""
        with self._lock:
            self._images[task_id] = ref
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.key, {self._member(task_id, ref): self.now() + keys.IMAGES_IN_USE_TTL})
            pipe.expire(self.key, keys.IMAGES_IN_USE_TTL)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - this agent's own cache still sees it
            log.warning("could not record the image of %s as in use: %s", task_id, exc)

    def discard(self, task_id: str) -> None:
        """Forget ``task_id``'s job; the shared record drops it with the next :meth:`renew`."""
        with self._lock:
            ref = self._images.pop(task_id, None)
            if ref is not None:
                self._ended.append(self._member(task_id, ref))

    def refs(self) -> set[str]:
        """The images of the jobs this agent holds now."""
        with self._lock:
            return set(self._images.values())

    def renew(self, pipe) -> None:
        """Queue on ``pipe`` the renewal of this agent's entries and the removal of ended ones."""
        with self._lock:
            held = {self._member(task, ref): self.now() + keys.IMAGES_IN_USE_TTL for task, ref in self._images.items()}
            ended, self._ended = self._ended, []
        if ended:
            pipe.zrem(self.key, *ended)
        if held:
            pipe.zadd(self.key, held)
            pipe.expire(self.key, keys.IMAGES_IN_USE_TTL)

    def shared(self) -> set[str]:
        """The images the jobs held by every agent on the engine use (unlapsed entries)."""
        now = self.now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.key, "-inf", now)
        pipe.zrangebyscore(self.key, now, "+inf")
        found = set()
        for member in pipe.execute()[1]:
            parts = member.split(" ")
            if len(parts) == 3:
                found.add(parts[1])
        return found


def parse_budget(value: int | str) -> int:
    """``--image-cache SIZE`` in bytes (``10Gi``, ``500m``, bytes); ValueError if malformed or negative."""
    size = parse_memory(value)
    if size < 0:
        raise ValueError(f"an image cache budget cannot be negative: {value!r}")
    return size


def _normalised(reference: object) -> str | None:
    try:
        return parse_image_ref(reference).normalised
    except InvalidJobSpec:
        return None


class ImageCache:
    """LRU removal of jobyard-pulled images once they exceed ``budget`` bytes.

    ``in_use()`` returns references or image ids that must stay; ``now`` is the
    clock for last-use times (unix seconds).
    """

    def __init__(self, client, redis, engine: str, budget: int | str,
                 in_use: Callable[[], Iterable[str]] = lambda: (), observer: ImageObserver | None = None,
                 now: Callable[[], float] = time.time):
        self.client, self.redis = client, redis
        self.engine = check_engine_id(engine)
        self.budget = parse_budget(budget)
        self.in_use, self.now = in_use, now
        self.observer = observer or ImageObserver()
        self.key = keys.images(self.engine)

    def record(self, ref: ImageRef | str) -> None:
        """Note that jobyard pulled ``ref`` onto the engine, and that it is used now."""
        pipe = self.redis.pipeline()
        pipe.zadd(self.key, {self._ref(ref): self.now()})
        pipe.expire(self.key, keys.IMAGES_TTL)
        pipe.execute()

    def touch(self, ref: ImageRef | str) -> bool:
        """Mark a use of ``ref`` if jobyard pulled it; True when it is in the record."""
        changed = self.redis.zadd(self.key, {self._ref(ref): self.now()}, xx=True, ch=True)
        if changed:
            self.redis.expire(self.key, keys.IMAGES_TTL)
        return bool(changed)

    def recorded(self, ref: ImageRef | str) -> bool:
        """Whether ``ref`` is one jobyard pulled onto this engine."""
        return self.redis.zscore(self.key, self._ref(ref)) is not None

    def entries(self) -> list[tuple[str, float]]:
        """The record, least recently used first: (normalised reference, last use)."""
        return [(ref, score) for ref, score in self.redis.zrange(self.key, 0, -1, withscores=True)]

    def usage(self) -> int:
        """Bytes the jobyard-pulled images on the engine take (see the module doc)."""
        return sum(image.size for image in self._images())

    def evict(self) -> list[Evicted]:
        """Remove least recently used unused images until the rest fit the budget; what went."""
        images = self._images()
        total = sum(image.size for image in images)
        removed: list[Evicted] = []
        for image in sorted(images, key=lambda item: item.last_used):
            if total <= self.budget:
                break
            if self._protected(image):
                continue
            if self._remove(image):
                total -= image.size
                removed.append(Evicted(tuple(image.refs), image.image_id, image.size))
                for ref in image.refs:
                    self.observer.image_evicted(ref, image.size)
        self.observer.cache_measured(total)
        return removed

    def _ref(self, ref: ImageRef | str) -> str:
        return (parse_image_ref(ref) if isinstance(ref, str) else ref).normalised

    def _images(self) -> list[_Image]:
        """The recorded images the engine holds and jobyard alone tagged; sweeps the rest."""
        by_id: dict[str, _Image] = {}
        gone: list[str] = []
        for ref, last_used in self.entries():
            if _normalised(ref) != ref:
                gone.append(ref)
                continue
            try:
                found = self.client.api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                gone.append(ref)
                continue
            tags = frozenset(filter(None, map(_normalised, found.get("RepoTags") or [])))
            image = by_id.setdefault(found["Id"], _Image(found["Id"], int(found.get("Size") or 0), tags, [], 0.0))
            image.refs.append(ref)
            image.last_used = max(image.last_used, last_used)
        if gone:
            self.redis.zrem(self.key, *gone)
        return [image for image in by_id.values() if image.tags <= set(image.refs)]

    def _protected(self, image: _Image) -> bool:
        names = set(image.refs) | {image.image_id, image.image_id.removeprefix("sha256:")}
        return bool(names & self._in_use_names())

    def _in_use_names(self) -> set[str]:
        names: set[str] = set()
        for entry in self.in_use():
            match = _IMAGE_ID.fullmatch(entry) if isinstance(entry, str) else None
            if match:
                names.update({match.group(1), f"sha256:{match.group(1)}"})
            elif (normalised := _normalised(entry)) is not None:
                names.add(normalised)
            else:
                raise ValueError(f"in-use image is neither a reference nor an image id: {entry!r:.80}")
        for container in self.client.api.containers(all=True):
            names.add(container.get("ImageID", ""))
        return names

    def _remove(self, image: _Image) -> bool:
        """Untag each of the image's references; the engine drops the image with its last one."""
        try:
            for ref in image.refs:
                try:
                    self.client.api.remove_image(ref)
                except docker.errors.ImageNotFound:
                    pass
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # a container was created from it meanwhile
                return False
            raise
        self.redis.zrem(self.key, *image.refs)
        return True
