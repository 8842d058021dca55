"""deploy/sentinel/docker-compose.yml brought up as documented: a primary, a replica and
three sentinels at fixed addresses; jobyard (its own image, on the project's network)
finds the primary through the sentinels; the primary's container is killed while the
replica is frozen, so the first failover attempt is given up, and the sentinels' next
attempt promotes the replica within RETRY_WITHIN; jobyard goes on; the old primary
rejoins as a replica; the sentinels, restarted, still name the new primary.

The Redis image is the local stand-in for the official one (deploy/build-image.sh).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time

import pytest

from tests.conftest import ROOT, SESSION, wait_for
from tests.deploy.conftest import LOCAL_REDIS_IMAGE, require_tool, run, save_compose_logs, write_secret
from tests.support.services import temp_dir

pytestmark = pytest.mark.slow

COMPOSE_FILE = os.path.join(ROOT, "deploy", "sentinel", "docker-compose.yml")
MASTER = "jobyard"
#: A failover attempt that was given up is tried again within twice the example's
#: failover-timeout (10 s), plus the election and the promotion.
RETRY_WITHIN = 30


def free_net(docker_client) -> str:
    """The first three octets of a 172.31.x.0/24 that no Docker network overlaps."""
    taken = [ipaddress.ip_network(config["Subnet"]) for network in docker_client.networks.list()
             for config in (network.attrs.get("IPAM") or {}).get("Config") or [] if "Subnet" in config]
    for third in range(253, 0, -1):
        candidate = ipaddress.ip_network(f"172.31.{third}.0/24")
        if not any(candidate.overlaps(other) for other in taken):
            return f"172.31.{third}"
    raise AssertionError("no free 172.31.x.0/24 for the Sentinel example's network")


class HaStack:
    """One project of the Sentinel example, configured by its own env file."""

    def __init__(self, docker_client, jobyard_image: str):
        self.docker, self.image = docker_client, jobyard_image
        self.project = f"jobyard-{SESSION}-ha"
        self.workdir = temp_dir("jobyard-ha-")
        password, sentinel_password = os.urandom(24).hex(), os.urandom(24).hex()
        self.net = free_net(docker_client)
        self.env_file = os.path.join(self.workdir, "ha.env")
        with open(os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(f"JOBYARD_REDIS_PASSWORD={password}\nJOBYARD_SENTINEL_PASSWORD={sentinel_password}\n"
                         f"JOBYARD_REDIS_IMAGE={LOCAL_REDIS_IMAGE}\nJOBYARD_REDIS_NET={self.net}\n")
        url = ";".join(f"sentinel://:{password}@{self.net}.2{n}:26379/0" for n in (1, 2, 3))
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

    def in_sync(self, service: str) -> bool:
        """Whether a replica has its primary's data (a replica that never synced is not promoted)."""
        code, output = self.container(service).exec_run(["redis-cli", "--no-auth-warning", "info", "replication"])
        return code == 0 and "master_link_status:up" in output.decode()

    def sentinel_events(self) -> str:
        """The sentinels' failover events (``+sdown``, ``+try-failover``, ``-failover-abort-…``)."""
        lines = []
        for n in (1, 2, 3):
            log = self.container(f"sentinel-{n}").logs().decode(errors="replace")
            lines += [f"sentinel-{n}: {line}" for line in log.splitlines() if " # " in line]
        return "\n".join(lines[-60:])

    def wait_for(self, predicate, message: str, timeout: float = 90) -> None:
        """``wait_for`` that, when it times out, says what the sentinels did meanwhile."""
        try:
            wait_for(predicate, timeout=timeout, interval=1, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the sentinels' events:\n{self.sentinel_events()}") from None

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
    stack.wait_for(lambda: stack.master_state().get("num-other-sentinels") == "2"
                   and stack.master_state().get("num-slaves") == "1" and stack.in_sync("redis-replica"),
                   "the three sentinels to know each other and the replica to hold the primary's data")
    assert stack.master_state()["ip"] == f"{stack.net}.10"  # the fixed address: no DNS in a failover
    assert json.loads(stack.jobyard("status", "--json"))["hosts"] == []

    # The first attempt finds no replica fit to promote (it is frozen, and the sentinels
    # know it is down) and is given up; a sentinel tries again only after twice
    # failover-timeout, which must be short.
    replica = stack.container("redis-replica")
    replica.pause()
    try:
        stack.wait_for(lambda: f"+sdown slave {stack.net}.11:6379" in stack.sentinel_events(),
                       "the sentinels to see the frozen replica down")
        stack.container("redis-primary").kill()
        stack.wait_for(lambda: "-failover-abort-no-good-slave" in stack.sentinel_events(),
                       "the sentinels to give up a failover with no replica to promote")
    finally:
        replica.unpause()
    gave_up = time.monotonic()
    stack.wait_for(lambda: stack.master_state().get("ip") == f"{stack.net}.11" and stack.role("redis-replica") == "master",
                   "the sentinels to try again and promote the replica", timeout=RETRY_WITHIN)
    print(f"promoted {time.monotonic() - gave_up:.1f} s after the first attempt was given up")
    # jobyard asks the sentinels again and reads from the promoted replica.
    assert json.loads(stack.jobyard("status", "--json"))["hosts"] == []

    stack.compose("start", "redis-primary")
    stack.wait_for(lambda: stack.role("redis-primary") == "slave", "the old primary to rejoin as a replica")

    # Sentinels restarted together (the host rebooted) still know where the primary is.
    stack.compose("restart", "sentinel-1", "sentinel-2", "sentinel-3")
    stack.wait_for(lambda: stack.master_state().get("num-other-sentinels") == "2",
                   "the restarted sentinels to answer")
    assert stack.master_state()["ip"] == f"{stack.net}.11"
