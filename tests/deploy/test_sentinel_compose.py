"""deploy/sentinel/docker-compose.yml brought up as documented: a primary, a replica and
three sentinels; jobyard (its own image, on the project's network) finds the primary
through the sentinels by their hostnames; the primary's container is killed, the
replica is promoted and jobyard goes on; the old primary rejoins as a replica.

The Redis image is the local stand-in for the official one (deploy/build-image.sh).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import ROOT, SESSION, wait_for
from tests.deploy.conftest import LOCAL_REDIS_IMAGE, require_tool, run, save_compose_logs, write_secret
from tests.support.services import temp_dir

pytestmark = pytest.mark.slow

COMPOSE_FILE = os.path.join(ROOT, "deploy", "sentinel", "docker-compose.yml")
MASTER = "jobyard"


class HaStack:
    """One project of the Sentinel example, configured by its own env file."""

    def __init__(self, docker_client, jobyard_image: str):
        self.docker, self.image = docker_client, jobyard_image
        self.project = f"jobyard-{SESSION}-ha"
        self.workdir = temp_dir("jobyard-ha-")
        password, sentinel_password = os.urandom(24).hex(), os.urandom(24).hex()
        self.env_file = os.path.join(self.workdir, "ha.env")
        with open(os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(f"JOBYARD_REDIS_PASSWORD={password}\nJOBYARD_SENTINEL_PASSWORD={sentinel_password}\n"
                         f"JOBYARD_REDIS_IMAGE={LOCAL_REDIS_IMAGE}\n")
        url = ";".join(f"sentinel://:{password}@sentinel-{n}:26379/0" for n in (1, 2, 3))
        self.secrets = {"/run/secrets/broker-url": write_secret(self.workdir, "broker-url", url + "\n"),
                        "/run/secrets/sentinel-password": write_secret(self.workdir, "sentinel-password",
                                                                       sentinel_password + "\n")}

    def compose(self, *args: str, timeout: float = 180):
        command = [require_tool("docker-compose", "the Debian package docker-compose"), "-f", COMPOSE_FILE,
                   "--env-file", self.env_file, "-p", self.project, *args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
        return run(command, timeout=timeout, env=environ)

    def container(self, service: str):
        (found,) = self.docker.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        return found

    def sentinel(self, *command: str) -> str:
        """A sentinel-1 command, its password from the container's own environment."""
        words = " ".join(command)
        code, output = self.container("sentinel-1").exec_run(
            ["sh", "-c", f'redis-cli -p 26379 --no-auth-warning -a "$SENTINEL_PASSWORD" {words}'])
        return output.decode() if code == 0 else ""

    def master_state(self) -> dict:
        lines = self.sentinel("sentinel", "master", MASTER).split()
        return dict(zip(lines[::2], lines[1::2]))

    def role(self, service: str) -> str:
        code, output = self.container(service).exec_run(["redis-cli", "--no-auth-warning", "role"])
        return output.decode().split()[0] if code == 0 and output else ""

    def jobyard(self, *args: str) -> str:
        """``jobyard ARGS`` in the jobyard image on the project's network, through the sentinels."""
        output = self.docker.containers.run(
            self.image, ["jobyard", *args], remove=True, network=f"{self.project}_default",
            labels={"jobyard.test": SESSION},
            environment={"JOBYARD_BROKER_URL_FILE": "/run/secrets/broker-url", "JOBYARD_SENTINEL_MASTER": MASTER,
                         "JOBYARD_SENTINEL_PASSWORD_FILE": "/run/secrets/sentinel-password"},
            volumes={host: {"bind": inside, "mode": "ro"} for inside, host in self.secrets.items()})
        return output.decode()

    def down(self) -> None:
        save_compose_logs(self.compose, self.project)
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10")
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def ha_stack(docker_client, jobyard_image):
    stack = HaStack(docker_client, jobyard_image)
    try:
        stack.compose("up", "-d", timeout=240)
        yield stack
    finally:
        stack.down()


def test_the_sentinel_example_fails_over_and_jobyard_follows(ha_stack):
    stack = ha_stack
    wait_for(lambda: stack.master_state().get("num-other-sentinels") == "2"
             and stack.master_state().get("num-slaves") == "1", timeout=90, interval=1,
             message="the three sentinels to know each other and the replica")
    assert stack.master_state()["ip"] == "redis-primary"  # announce-hostnames: jobyard resolves the name
    assert json.loads(stack.jobyard("status", "--json"))["hosts"] == []

    stack.container("redis-primary").kill()
    wait_for(lambda: stack.master_state().get("ip") == "redis-replica" and stack.role("redis-replica") == "master",
             timeout=90, interval=1, message="the sentinels to promote the replica")
    # jobyard asks the sentinels again and reads from the promoted replica.
    assert json.loads(stack.jobyard("status", "--json"))["hosts"] == []

    stack.compose("start", "redis-primary")
    wait_for(lambda: stack.role("redis-primary") == "slave", timeout=90, interval=1,
             message="the old primary to rejoin as a replica")
