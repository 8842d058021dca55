"""Real tools for the deployment tests: the jobyard image built from local files, and a
compose stack of this session's own (unique project name, its own ports and state dir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, ROOT, SESSION
from tests.support.services import free_port, temp_dir

DEPLOY = os.path.join(ROOT, "deploy")
COMPOSE_FILE = os.path.join(DEPLOY, "docker-compose.yml")
#: Tags build-image.sh makes: the app image (this suite's tag) and the local stand-ins
#: for the official python and redis images, kept between runs as a cache.
JOBYARD_IMAGE = "jobyard-test/jobyard:latest"
LOCAL_REDIS_IMAGE = "jobyard/redis:bookworm"
#: The image's user; the agent's state dir on the host must belong to it.
IMAGE_UID = 10000


def require_tool(name: str, package: str) -> str:
    """The path of command ``name``; fail (never skip) when it is missing."""
    beside_python = os.path.join(os.path.dirname(sys.executable), name)
    path = beside_python if os.access(beside_python, os.X_OK) else shutil.which(name)
    assert path, f"{name} is missing: install {package} (bash deploy/setup.sh install)"
    return path


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``; fail with its output when it exits non-zero."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, (f"{' '.join(command)} exited {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def jobyard_image(docker_client):
    """deploy/build-image.sh's image, built here from a base made from Debian's mirror."""
    require_tool("debootstrap", "the Debian package debootstrap")
    env = {**os.environ, "JOBYARD_IMAGE": JOBYARD_IMAGE, "PYTHON": sys.executable}
    run(["bash", os.path.join(DEPLOY, "build-image.sh")], timeout=600, env=env)
    return JOBYARD_IMAGE


@dataclass
class ComposeStack:
    """One ``docker-compose`` project of this session, configured by its own env file."""

    project: str
    workdir: str
    settings: dict[str, str]
    #: Filled in once the stack is up: the agent's name and a client of the stack's Redis.
    agent_name: str = ""
    redis: Any = None

    @property
    def env_file(self) -> str:
        return os.path.join(self.workdir, "compose.env")

    @property
    def broker_url(self) -> str:
        return f"redis://:{self.settings['JOBYARD_REDIS_PASSWORD']}@127.0.0.1:{self.settings['JOBYARD_REDIS_PORT']}/0"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.settings['JOBYARD_FLOWER_PORT']}"

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ``docker-compose`` on this project (all profiles' services included)."""
        command = [require_tool("docker-compose", "the Debian package docker-compose"), "-f", COMPOSE_FILE,
                   "--env-file", self.env_file, "-p", self.project, "--profile", "autoscale", *args]
        # Only the env file configures the stack, never this process's environment.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
        return run(command, timeout=timeout, env=environ)

    def write_env(self) -> None:
        with open(self.env_file, "w") as handle:
            handle.writelines(f"{key}={value}\n" for key, value in self.settings.items())
        os.chmod(self.env_file, 0o600)

    def containers(self, docker_client, service: str | None = None) -> list:
        """This project's containers (of one service, if named)."""
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return docker_client.containers.list(all=True, filters={"label": labels})

    def save_logs(self) -> None:
        save_compose_logs(self.compose, self.project)

    @property
    def autoscaler_prefix(self) -> str:
        return self.settings["JOBYARD_AUTOSCALE_PREFIX"]

    def autoscaled_hosts(self, docker_client) -> list:
        """Agent containers the autoscaler's docker provider started (not the project's)."""
        return docker_client.containers.list(
            all=True, filters={"label": f"jobyard.autoscaler={self.autoscaler_prefix}"})

    def down(self, docker_client) -> None:
        """The README's way down: stop the autoscaler, remove the hosts it added, then
        remove the project's containers, network and volumes."""
        if self.containers(docker_client):
            self.save_logs()
        self.compose("stop", "autoscaler")
        for container in self.autoscaled_hosts(docker_client):
            container.stop(timeout=30)
            container.remove(force=True)
        self.compose("down", "-v", "--remove-orphans", "--timeout", "30")


@pytest.fixture(scope="module")
def compose_stack(docker_client, jobyard_image):
    """Settings and a state dir for one compose project; taken down at the end."""
    workdir = temp_dir("jobyard-compose-")
    state_dir = os.path.join(workdir, "state")
    os.makedirs(state_dir, mode=0o750)
    os.chown(state_dir, IMAGE_UID, IMAGE_UID)
    settings = {
        "JOBYARD_REDIS_PASSWORD": os.urandom(24).hex(),
        "JOBYARD_FLOWER_USER": "operator",
        "JOBYARD_FLOWER_PASSWORD": os.urandom(12).hex(),
        "JOBYARD_DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "JOBYARD_STATE_DIR": state_dir,
        "JOBYARD_IMAGE": jobyard_image,
        "JOBYARD_REDIS_IMAGE": LOCAL_REDIS_IMAGE,
        "JOBYARD_REDIS_PORT": str(free_port()),
        "JOBYARD_FLOWER_PORT": str(free_port()),
        "JOBYARD_AGENT_ARGS": "--cpus 2 --memory 2Gi --loglevel INFO",
        "JOBYARD_AGENT_STOP_GRACE": "30s",
        "JOBYARD_AUTOSCALE_PREFIX": f"jobyard-{SESSION}",
        "JOBYARD_AUTOSCALE_MIN": "1",
        "JOBYARD_AUTOSCALE_MAX": "1",
    }
    for name, host in (("broker-url", "redis"), ("host-broker-url", "127.0.0.1")):
        port = "6379" if host == "redis" else settings["JOBYARD_REDIS_PORT"]
        settings[f"JOBYARD_{name.upper().replace('-', '_')}_SECRET"] = write_secret(
            workdir, name, f"redis://:{settings['JOBYARD_REDIS_PASSWORD']}@{host}:{port}/0\n")
    settings["JOBYARD_REGISTRY_CONFIG_SECRET"] = write_secret(workdir, "registry-config", '{"auths": {}}\n')
    stack = ComposeStack(f"jobyard-{SESSION}", workdir, settings)
    stack.write_env()
    yield stack
    stack.down(docker_client)
    shutil.rmtree(workdir, ignore_errors=True)


def save_compose_logs(compose, project: str) -> None:
    """``compose logs`` of a project into the artifacts directory (its error, if that fails)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    try:
        logs = compose("logs", "--no-color", timeout=60).stdout
    except AssertionError as exc:
        logs = str(exc)
    with open(os.path.join(ARTIFACTS, f"compose-{project}.log"), "w") as handle:
        handle.write(logs)


def write_secret(workdir: str, name: str, content: str) -> str:
    """A secret file as deploy/compose.env.example says: mode 0600, owned by the image's user."""
    path = os.path.join(workdir, name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(content)
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def submit(stack: ComposeStack, script: str, timeout: float = 240) -> dict:
    """Run ``script`` (Python, using ``tasks``) on this host against the stack; its JSON."""
    env = {**os.environ, "JOBYARD_BROKER_URL": stack.broker_url,
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "jobs"), ROOT])}
    env.pop("JOBYARD_RESULT_BACKEND", None)
    result = run([sys.executable, "-c", script], timeout=timeout, env=env, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])
