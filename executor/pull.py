"""Pull a job's image through the docker SDK, with one bound and typed failures.

Every failure leaves here once, as :class:`tasks.errors.ImagePullFailed` with a
``reason`` (``auth``, ``not_found``, ``timeout``, ``unreachable``) that names the
registry and repository, never the credentials. A registry lost mid-pull is
``unreachable`` at the engine's first layer retry, not after its 75 s of retries. The engine itself being unreachable
is not a pull failure: that is :class:`tasks.errors.BackendError`.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import Callable

import docker.errors
import requests.exceptions

from tasks.errors import BackendError, ImagePullFailed
from tasks.images import ImageRef, parse_image_ref

#: Lowest-first: the first reason whose words appear in the engine's message wins.
_REASON_WORDS = (
    ("auth", ("unauthorized", "authentication required", "no basic auth credentials", "denied",
              "incorrect username or password", "forbidden")),
    ("not_found", ("manifest unknown", "not found", "no matching manifest", "name unknown")),
    ("timeout", ("deadline exceeded", "timeout", "timed out")),
)
_DONE = ("Pull complete", "Already exists")
#: The engine's status for a layer download it restarts after losing the registry.
_RETRYING = "Retrying in "
PROGRESS_INTERVAL = 1.0


def classify(message: str) -> str:
    """The pull failure reason for an engine or registry error message."""
    lowered = message.lower()
    for reason, words in _REASON_WORDS:
        if any(word in lowered for word in words):
            return reason
    return "unreachable"


class _Progress:
    """Turns pull stream lines into short strings, at most one per interval."""

    def __init__(self, ref: ImageRef, on_progress: Callable[[str], None] | None):
        self.ref = ref
        self.on_progress = on_progress
        self.layers: dict[str, str] = {}
        self.bytes: dict[str, tuple[int, int]] = {}
        self.digest: str | None = None
        self.last = -math.inf

    def feed(self, line: dict) -> None:
        status = str(line.get("status", ""))
        if status.startswith("Digest: "):
            self.digest = status[len("Digest: "):].strip()
        layer = line.get("id")
        if layer and not status.startswith("Pulling from"):
            self.layers[layer] = status
            detail = line.get("progressDetail") or {}
            if status == "Downloading" and isinstance(detail.get("current"), int):
                self.bytes[layer] = (detail["current"], int(detail.get("total") or 0))
        self._report()

    def _report(self) -> None:
        now = time.monotonic()
        if self.on_progress is None or now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        done = sum(1 for status in self.layers.values() if status in _DONE)
        current = sum(c for c, _ in self.bytes.values())
        total = sum(t for _, t in self.bytes.values())
        self.on_progress(f"pulling {self.ref.normalised}: layer {done}/{len(self.layers)}, "
                         f"{current} of {total} bytes")


def _failed(ref: ImageRef, reason: str, why: str) -> ImagePullFailed:
    return ImagePullFailed(f"image pull failed ({reason}): {ref.name}: {why}",
                           {"image": ref.normalised}, reason=reason, registry=ref.registry,
                           repository=ref.repository)


def _close(stream) -> None:
    """Drop the engine connection under a pull stream, so the engine cancels the pull."""
    # docker-py's pull stream is a generator over the HTTP response; reaching the
    # response through its frame is the only handle the SDK gives to cancel a pull.
    frame = getattr(stream, "gi_frame", None)
    response = frame.f_locals.get("response") if frame is not None else None
    if response is None:
        return
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        response.close()
    except OSError:
        pass


class _Pull:
    """One pull's stream, consumed in a thread of its own so the caller can stop waiting."""

    def __init__(self, client, ref: ImageRef, auth_config: dict, progress: _Progress):
        self.client, self.ref, self.auth_config, self.progress = client, ref, auth_config, progress
        self.stream = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def run(self) -> None:
        try:
            self.stream = self.client.api.pull(self.ref.name, tag=self.ref.digest or self.ref.tag, stream=True,
                                               decode=True, auth_config=self.auth_config)
            if self.cancelled.is_set():
                _close(self.stream)
                return
            for line in self.stream:
                if "error" in line:
                    raise _failed(self.ref, classify(str(line["error"])), str(line["error"]))
                if str(line.get("status", "")).startswith(_RETRYING):
                    # The engine lost the registry mid-layer and would retry for up to 75 s
                    # (5 + 10 + ... + 25): end the pull now; the job's retry policy decides.
                    _close(self.stream)
                    raise _failed(self.ref, "unreachable", "the registry connection broke mid-pull")
                self.progress.feed(line)
        except BaseException as exc:  # handed to the waiting caller, which raises it
            self.error = exc

    def cancel(self) -> None:
        self.cancelled.set()
        if self.stream is not None:
            _close(self.stream)


def _translate(ref: ImageRef, exc: BaseException) -> BaseException:
    if isinstance(exc, ImagePullFailed):
        return exc
    if isinstance(exc, docker.errors.APIError):
        why = str(exc.explanation or exc)
        reason = "not_found" if exc.status_code == 404 and classify(why) != "auth" else classify(why)
        return _failed(ref, reason, why)
    if isinstance(exc, (requests.exceptions.RequestException, docker.errors.DockerException)):
        return BackendError(f"cannot reach the Docker Engine to pull {ref.name}: {type(exc).__name__}",
                            {"image": ref.normalised})
    return exc


def pulled_digest(client, ref: ImageRef, streamed: str | None = None) -> str:
    """The digest of ``ref`` on the engine: the one the registry served, from RepoDigests."""
    if ref.digest:
        return ref.digest
    image = client.api.inspect_image(f"{ref.name}:{ref.tag}")
    digests = []
    for entry in image.get("RepoDigests") or []:
        named = parse_image_ref(entry)
        if named.name == ref.name and named.digest:
            digests.append(named.digest)
    if streamed in digests or (streamed and not digests):
        return streamed
    if not digests:
        raise _failed(ref, "not_found", "the engine holds no digest for it after the pull")
    return digests[0]


def pull_image(client, ref: ImageRef | str, auth_config: dict | None = None, timeout: float = 600.0,
               on_progress: Callable[[str], None] | None = None) -> str:
    """Pull ``ref`` and return its digest (``sha256:…``), within ``timeout`` seconds in all.

    ``auth_config`` is a docker-SDK dict (:meth:`executor.credentials.DockerConfig.auth_config`);
    empty or None pulls anonymously, never with the engine user's own Docker config.
    ``on_progress`` gets short strings such as ``layer 2/3, 1048576 of 2097152 bytes``,
    at most once a second. Raises :class:`ImagePullFailed` or :class:`BackendError`.
    """
    ref = parse_image_ref(ref) if isinstance(ref, str) else ref
    if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise ValueError(f"a pull timeout is a positive number of seconds, not {timeout!r}")
    pull = _Pull(client, ref, dict(auth_config or {}), _Progress(ref, on_progress))
    thread = threading.Thread(target=pull.run, name=f"pull-{ref.repository}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pull.cancel()
        raise _failed(ref, "timeout", f"no complete pull within {timeout:g}s")
    if pull.error is not None:
        error = _translate(ref, pull.error)
        raise error from (None if error is pull.error else pull.error)
    try:
        return pulled_digest(client, ref, pull.progress.digest)
    except docker.errors.NotFound:
        raise _failed(ref, "not_found", "the engine does not hold it after the pull") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _translate(ref, exc) from exc
