"""A real loopback registry for the image tests, and the busybox image pushed to it once."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import pytest

from tests.support.registry import Registry


@dataclass(frozen=True)
class Pushed:
    """The test image as it sits in the registry: ``HOST/team/app:v1`` and its digest."""

    registry: Registry
    repository: str
    tag: str
    digest: str

    @property
    def reference(self) -> str:
        return f"{self.registry.host}/{self.repository}:{self.tag}"


@pytest.fixture(scope="session")
def registry():
    """Our own docker-registry on a free 127.0.0.1 port, with htpasswd auth."""
    server = Registry().start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def pushed(registry, docker_client, busybox_image):
    """The busybox test image pushed once per session; its local tag is removed again."""
    digest = registry.push(docker_client, busybox_image, "team/app", "v1")
    image = Pushed(registry, "team/app", "v1", digest)
    registry.untag(docker_client, image.reference)
    yield image
    registry.untag(docker_client, image.reference)


@pytest.fixture
def absent(pushed, docker_client):
    """The pushed image, not present under its registry name before or after the test."""
    pushed.registry.untag(docker_client, pushed.reference)
    yield pushed
    pushed.registry.untag(docker_client, pushed.reference)
    pushed.registry.untag(docker_client, f"{pushed.registry.host}/{pushed.repository}@{pushed.digest}")


@pytest.fixture
def silent_registry():
    """``127.0.0.1:PORT`` of a socket of our own that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, name="silent-registry", daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in accepted:
        connection.close()
