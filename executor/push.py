"""``jobyard image build --push``: push a built tag with the agent's way of finding credentials.

Every failure is an :class:`ImageBuildError` naming the registry and the reason
(``auth``, ``not_found``, ``timeout``, ``unreachable``), never the credentials.
"""

from __future__ import annotations

import time
from typing import Callable

import docker
import docker.errors
import requests.exceptions

from tasks.images import ImageRef

from .credentials import AuthConfig, CredentialsError, DockerConfig
from .errors import ImageBuildError
from .image import image_ref
from .pull import classify
from .requirements import redact

PUSH_REPORT_INTERVAL = 1.0


def push_auth(tag: str, registry_config: str | None = None) -> AuthConfig:
    """Credentials for ``tag``'s registry, found as the agent finds them.

    ``registry_config`` is a Docker config.json; with none, ``$DOCKER_CONFIG/config.json``
    then ``~/.docker/config.json``; none there means an anonymous push.
    """
    ref = image_ref(tag)
    try:
        return DockerConfig.load(registry_config).auth_config(ref.registry)
    except CredentialsError as exc:
        raise ImageBuildError(f"no credentials to push to {ref.registry}: {exc}") from None


def check_login(client: docker.DockerClient, tag: str, auth_config: dict) -> None:
    """Have the engine log in to ``tag``'s registry, so bad credentials fail before a build.

    Only for a user and password; anonymous and token pushes are checked by the push.
    """
    if not auth_config.get("username"):
        return
    ref = image_ref(tag)
    try:
        client.login(username=auth_config["username"], password=auth_config.get("password", ""),
                     registry=auth_config.get("serveraddress") or ref.registry, reauth=True)
    except docker.errors.APIError as exc:
        raise _push_failed(ref, str(exc.explanation or exc)) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ImageBuildError(f"cannot reach the Docker Engine to log in to {ref.registry}: "
                              f"{type(exc).__name__}") from None


def push_image(client: docker.DockerClient, tag: str, auth_config: dict,
               progress: Callable[[str], None] = lambda line: None) -> str:
    """Push ``tag`` through the docker SDK; return the pinned ``registry/repository@sha256:…``.

    A failure is an :class:`ImageBuildError` naming the registry and the reason
    (``auth``, ``not_found``, ``timeout``, ``unreachable``), never the credentials.
    """
    ref = image_ref(tag)
    progress(f"pushing {ref.normalised} to {ref.registry}")
    report = _PushProgress(ref, progress)
    try:
        # An empty auth_config is sent as such: anonymous, never the engine user's own config.
        for line in client.api.push(ref.name, ref.tag, stream=True, decode=True, auth_config=dict(auth_config)):
            if "error" in line:
                raise _push_failed(ref, str(line["error"]))
            report.feed(line)
    except docker.errors.APIError as exc:
        raise _push_failed(ref, str(exc.explanation or exc)) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ImageBuildError(f"cannot reach the Docker Engine to push {ref.normalised}: "
                              f"{type(exc).__name__}") from None
    if report.digest is None:
        raise _push_failed(ref, "the engine reported no digest")
    progress(f"pushed {ref.normalised}: {report.done()} layers, {report.digest}")
    return f"{ref.name}@{report.digest}"


def _push_failed(ref: ImageRef, why: str) -> ImageBuildError:
    why = redact(why)[:300]
    return ImageBuildError(f"push of {ref.normalised} to registry {ref.registry} failed ({classify(why)}): {why}")


class _PushProgress:
    """Layer counts from push stream lines, reported at most once an interval; the digest."""

    FINISHED = ("Pushed", "Layer already exists", "Mounted from")

    def __init__(self, ref: ImageRef, progress: Callable[[str], None]):
        self.ref, self.progress = ref, progress
        self.layers: dict[str, str] = {}
        self.digest: str | None = None
        self.last = time.monotonic()

    def feed(self, line: dict) -> None:
        aux = line.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
            self.digest = aux["Digest"]
        if line.get("id") and line.get("status"):
            self.layers[str(line["id"])] = str(line["status"])
        if time.monotonic() - self.last >= PUSH_REPORT_INTERVAL:
            self.last = time.monotonic()
            self.progress(f"pushing {self.ref.normalised}: layer {self.done()}")

    def done(self) -> str:
        """``finished/total`` layers."""
        finished = sum(1 for status in self.layers.values() if status.startswith(self.FINISHED))
        return f"{finished}/{len(self.layers)}"
