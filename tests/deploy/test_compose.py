"""deploy/docker-compose.yml end to end with Debian's docker-compose: the image built
from local files, Redis with a password and AOF, an agent running jobs on this host's
engine, Flower behind basic auth, the autoscaler; jobs submitted from this host.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
import requests

from tasks import keys
from tests.conftest import PYTHON_IMAGE, wait_for

from .conftest import IMAGE_UID, submit

pytestmark = pytest.mark.slow

JOBS = """
import json
from celery import group
from sample_jobs import add, balloon
from tasks.errors import ContainerOOMKilled

outcome = {"add": add.delay(2, 3).get(timeout=120),
           "group": group(add.s(i, i) for i in range(4))().get(timeout=120)}
try:
    outcome["oom"] = balloon.apply_async((300,), memory="64Mi").get(timeout=120)
except ContainerOOMKilled as exc:
    outcome["oom"] = {"error": type(exc).__name__, "exit_code": exc.exit_code,
                      "memory_limit": exc.memory_limit, "host": exc.details.get("host")}
print(json.dumps(outcome))
"""


@pytest.fixture(scope="module")
def stack(compose_stack, docker_client, python_image):
    """The stack, up, with its agent registered in Redis."""
    compose_stack.compose("up", "-d")
    (agent,) = compose_stack.containers(docker_client, "agent")
    compose_stack.agent_name = agent.attrs["Config"]["Hostname"]
    compose_stack.redis = redis.Redis.from_url(compose_stack.broker_url, decode_responses=True)
    wait_for(lambda: compose_stack.redis.exists(keys.agent(compose_stack.agent_name)), timeout=60, interval=0.5,
             message="the compose agent to publish its state")
    return compose_stack


def test_image_runs_as_non_root_and_bakes_in_no_secrets(jobyard_image, docker_client):
    config = docker_client.images.get(jobyard_image).attrs["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    for variable in config["Env"]:
        name, _, value = variable.partition("=")
        assert "PASSWORD" not in name and "BROKER" not in name and "redis://" not in value, variable
    output = docker_client.containers.run(jobyard_image, ["jobyard", "--version"], remove=True,
                                          network_mode="none")
    assert b"jobyard, version" in output
    # Every role's code is in: the autoscaler's providers (a subpackage) and boto3 (aws extra).
    script = "import autoscaler.providers.aws, autoscaler.providers.docker, boto3, flower; print('ok')"
    assert docker_client.containers.run(jobyard_image, ["python3", "-c", script], remove=True,
                                        network_mode="none") == b"ok\n"


def test_redis_keeps_an_aof_and_refuses_clients_without_the_password(stack, docker_client):
    assert stack.redis.config_get("appendonly") == {"appendonly": "yes"}
    assert stack.redis.config_get("appendfsync") == {"appendfsync": "everysec"}
    anonymous = redis.Redis(port=int(stack.settings["JOBYARD_REDIS_PORT"]), socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    (server,) = stack.containers(docker_client, "redis")
    bindings = server.attrs["HostConfig"]["PortBindings"]["6379/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], "Redis must be published on loopback only"


def test_only_the_agent_and_the_autoscaler_get_the_docker_socket(stack, docker_client):
    holders = set()
    for container in stack.containers(docker_client):
        sources = {mount["Source"] for mount in container.attrs["Mounts"]}
        if "/var/run/docker.sock" in sources:
            holders.add(container.labels["com.docker.compose.service"])
    assert holders == {"agent", "autoscaler"}
    (agent,) = stack.containers(docker_client, "agent")
    assert agent.attrs["Config"]["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert agent.attrs["HostConfig"]["ReadonlyRootfs"] and agent.attrs["HostConfig"]["CapDrop"] == ["ALL"]


def test_the_autoscaler_adds_an_agent_host_that_joins(stack, docker_client):
    (autoscaler,) = stack.containers(docker_client, "autoscaler")
    added = f"{stack.autoscaler_prefix}-0"

    def joined() -> bool:
        autoscaler.reload()
        assert autoscaler.status == "running" and autoscaler.attrs["RestartCount"] == 0, \
            f"the autoscaler died: {autoscaler.logs(tail=20).decode(errors='replace')}"
        return bool(stack.redis.exists(keys.agent(added)))

    wait_for(joined, timeout=90, interval=1, message=f"the autoscaler's agent {added} to join")
    assert stack.redis.exists(keys.DECISIONS), "the autoscaler reports its decisions in Redis"
    assert [c.name for c in stack.autoscaled_hosts(docker_client)] == [f"jobyard-host-{added}"]


def test_no_jobyard_container_holds_the_redis_password_in_its_environment(stack, docker_client):
    password = stack.settings["JOBYARD_REDIS_PASSWORD"]
    jobyard = [c for c in stack.containers(docker_client) if c.labels["com.docker.compose.service"] != "redis"]
    for container in jobyard + stack.autoscaled_hosts(docker_client):
        config = container.attrs["Config"]
        assert password not in json.dumps([config["Env"], config["Cmd"], config["Labels"]]), container.name
        assert any(v.startswith("JOBYARD_BROKER_URL_FILE=") for v in config["Env"]), container.name


def test_the_agent_gets_its_registry_config_as_a_read_only_file(stack, docker_client):
    (agent,) = stack.containers(docker_client, "agent")
    assert "--registry-config /run/secrets/registry-config" in " ".join(agent.attrs["Config"]["Cmd"])
    assert not any("registry-config" in variable for variable in agent.attrs["Config"]["Env"])
    mounts = {mount["Destination"]: mount for mount in agent.attrs["Mounts"]}
    assert mounts["/run/secrets/registry-config"]["RW"] is False
    for container in stack.containers(docker_client):
        if container.name != agent.name:
            assert "/run/secrets/registry-config" not in {m["Destination"] for m in container.attrs["Mounts"]}


def test_jobs_from_this_host_come_back_and_an_oom_is_reported(stack, docker_client):
    agents = {stack.agent_name, f"{stack.autoscaler_prefix}-0"}
    outcome = submit(stack, JOBS)
    assert outcome["add"] == 5
    assert outcome["group"] == [0, 2, 4, 6]
    oom = outcome["oom"]
    assert oom["host"] in agents
    assert oom == {"error": "ContainerOOMKilled", "exit_code": 137, "memory_limit": 64 * 1024**2,
                   "host": oom["host"]}
    for agent in agents:
        assert not docker_client.containers.list(all=True, filters={"label": f"jobyard.agent={agent}"}), \
            "job containers must be gone once their jobs ended"
    state = json.loads(stack.redis.get(keys.agent(stack.agent_name)))
    assert state["running"] == [] and state["capacity"]["cpus"] == 2


def test_flower_requires_basic_auth_and_sees_the_agent(stack):
    assert requests.get(stack.flower_url + "/", timeout=10).status_code == 401
    wrong = (stack.settings["JOBYARD_FLOWER_USER"], "not-the-password")
    assert requests.get(stack.flower_url + "/", auth=wrong, timeout=10).status_code == 401
    auth = (stack.settings["JOBYARD_FLOWER_USER"], stack.settings["JOBYARD_FLOWER_PASSWORD"])
    # refresh=1: Flower asks the workers now instead of answering from its cache, which
    # is empty when Flower started before the agent was ready.
    workers = wait_for(lambda: requests.get(stack.flower_url + "/api/workers?refresh=1", auth=auth,
                                            timeout=20).json(),
                       timeout=60, interval=1, message="Flower to list the agent's worker")
    assert f"jobyard@{stack.agent_name}" in workers


def test_down_leaves_nothing_behind(stack, docker_client):
    started = time.monotonic()
    stack.down(docker_client)
    assert time.monotonic() - started < 90
    assert not stack.containers(docker_client)
    assert not stack.autoscaled_hosts(docker_client)
    project = {"label": f"com.docker.compose.project={stack.project}"}
    assert not docker_client.networks.list(filters=project)
    assert not docker_client.volumes.list(filters=project)
    for agent in (stack.agent_name, f"{stack.autoscaler_prefix}-0"):
        assert not docker_client.containers.list(all=True, filters={"label": f"jobyard.agent={agent}"})
    assert docker_client.images.get(PYTHON_IMAGE), "down must not touch the host's job images"
