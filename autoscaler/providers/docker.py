"""Hosts as agent containers on this Docker Engine.

Each host is a container running ``jobyard agent`` from an image given by name (the
deploy image, ``jobyard/jobyard``, or one built from local files). Only the agent
container gets the Docker socket (jobs never do: the agent launches them with its
own hardened settings); the agent's state directory is bind-mounted at the same
path, because the engine resolves a job's bind mounts on the host. The agent uses
the host's network so it reaches the broker at the same address as the autoscaler.
The broker and result-backend URLs (secrets: they hold the Redis password) never go
into an agent container's environment: they are written to 0600 files in the
private directory ``<state_dir>/.secrets-<prefix>`` and bind-mounted read-only under
``/run/jobyard``, and the agent gets only ``JOBYARD_BROKER_URL_FILE`` (and
``JOBYARD_RESULT_BACKEND_FILE``). The agent therefore runs as the autoscaler's uid
(or root), as it must anyway to write the state directory the autoscaler made.
Containers carry the label ``jobyard.autoscaler=<prefix>``, so a restarted
autoscaler finds its hosts again.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING

import docker
import docker.errors
import requests.exceptions

from ..errors import ProviderError
from ..shape import HostShape
from . import (Host, HostProvider, agent_options, autoscaler_state_dir, host_prefix, host_shape, without_secrets,
               write_secrets)

if TYPE_CHECKING:
    from ..run import AutoscaleConfig

LABEL_POOL = "jobyard.autoscaler"
LABEL_HOST = "jobyard.host"
SOCKET = "/var/run/docker.sock"
#: Where an agent container finds its secret files.
SECRETS_MOUNT = "/run/jobyard"
#: Seconds a removed agent gets for its warm shutdown before the engine kills it.
STOP_TIMEOUT = 30
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerProvider(HostProvider):
    """Starts and stops agent containers named ``jobyard-host-<prefix>-<n>``."""

    def __init__(self, shape: HostShape, image: str, prefix: str, queues: tuple[str, ...] = ("default",),
                 agent_args: tuple[str, ...] = (), state_dir: str | None = None,
                 command: tuple[str, ...] = ("jobyard", "agent"), user: str | None = None,
                 environment: dict[str, str] | None = None, client: docker.DockerClient | None = None):
        self.shape = shape
        self.image = image
        self.prefix = prefix
        self.queues = tuple(queues)
        self.agent_args = tuple(agent_args)
        self.state_dir = os.path.abspath(state_dir or os.path.join(autoscaler_state_dir(), "hosts"))
        self.command = tuple(command)
        self.user = user
        self.environment = dict(environment or {})
        try:
            self.docker = client or docker.from_env(timeout=120)
        except _DOCKER_ERRORS as exc:
            raise ProviderError(f"cannot reach the Docker Engine: {exc}") from exc

    def hosts(self) -> list[Host]:
        """Running agent containers of this pool; exited ones are removed."""
        found = []
        for container in self._containers():
            if container.status in ("created", "running", "restarting"):
                found.append(Host(container.labels[LABEL_HOST], _created(container), container.id))
            else:
                self._discard(container)
        return found

    def add(self, count: int) -> list[Host]:
        """Start ``count`` agent containers."""
        taken = {c.labels.get(LABEL_HOST) for c in self._containers()}
        names = (f"{self.prefix}-{n}" for n in itertools.count())
        return [self._start(name) for name in itertools.islice((n for n in names if n not in taken), count)]

    def remove(self, name: str) -> None:
        """Stop (SIGTERM: warm shutdown) and remove the agent container of ``name``."""
        for container in self._containers({LABEL_HOST: name}):
            try:
                container.stop(timeout=STOP_TIMEOUT)
            except _DOCKER_ERRORS as exc:
                raise ProviderError(f"cannot stop agent container of {name}: {exc}") from exc
            self._discard(container)

    def _start(self, name: str) -> Host:
        command = [*self.command, *agent_options(name, self.shape, self.queues, self.state_dir, self.agent_args)]
        host_dir = os.path.join(self.state_dir, name)
        volumes = {SOCKET: {"bind": SOCKET, "mode": "rw"}, host_dir: {"bind": host_dir, "mode": "rw"}}
        try:
            environment = self._environment(volumes)
            container = self.docker.containers.run(
                self.image, command, name=f"jobyard-host-{name}", detach=True, network_mode="host",
                labels={LABEL_POOL: self.prefix, LABEL_HOST: name}, environment=environment, volumes=volumes,
                group_add=[str(os.stat(SOCKET).st_gid)], user=self.user, init=True,
                # The agent needs only the socket and its state dir: nothing else is writable.
                read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"}, cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"])
        except (OSError, *_DOCKER_ERRORS) as exc:
            raise ProviderError(f"cannot start agent container {name} from {self.image}: {exc}") from exc
        return Host(name, time.time(), container.id)

    def _environment(self, volumes: dict) -> dict[str, str]:
        """The agent's environment: this process's JOBYARD_* settings with each secret
        replaced by the path of its file, whose mount is added to ``volumes``."""
        settings = {**{k: v for k, v in os.environ.items() if k.startswith("JOBYARD_")}, **self.environment}
        environment = without_secrets(settings)
        secrets_dir = os.path.join(self.state_dir, f".secrets-{self.prefix}")
        for variable, source in write_secrets(settings, secrets_dir).items():
            target = f"{SECRETS_MOUNT}/{os.path.basename(source)}"
            volumes[source] = {"bind": target, "mode": "ro"}
            environment[variable] = target
        return environment

    def _containers(self, labels: dict[str, str] | None = None) -> list:
        wanted = [f"{LABEL_POOL}={self.prefix}"] + [f"{k}={v}" for k, v in (labels or {}).items()]
        try:
            return self.docker.containers.list(all=True, filters={"label": wanted})
        except _DOCKER_ERRORS as exc:
            raise ProviderError(f"cannot list agent containers: {exc}") from exc

    def _discard(self, container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except _DOCKER_ERRORS as exc:
            raise ProviderError(f"cannot remove container {container.name}: {exc}") from exc


def _created(container) -> float:
    stamp = container.attrs.get("Created", "")[:26].rstrip("Z")
    try:
        return datetime.fromisoformat(stamp + "+00:00").timestamp()
    except ValueError:
        return time.time()


def from_config(config: AutoscaleConfig) -> DockerProvider:
    """The provider ``jobyard autoscale --provider docker`` asks for."""
    from tasks.config import Settings

    image = config.image or Settings.from_env().agent_image
    return DockerProvider(host_shape(config), image, host_prefix(config), config.queues, config.agent_args,
                          state_dir=config.state_dir)
