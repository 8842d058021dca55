"""The Docker provider: each host is a real agent container that runs real jobs."""

import json
import os
import shutil

import pytest

from tests.autoscaler.conftest import AGENT_IMAGE_ENV
from tests.conftest import SESSION, wait_for
from tests.support.services import temp_dir


@pytest.fixture
def pool(docker_client, agent_image, python_image, redis_server):
    from autoscaler.providers.docker import LABEL_POOL, DockerProvider
    from autoscaler.shape import HostShape

    state_dir = temp_dir("jobyard-docker-hosts-")
    os.chmod(state_dir, 0o755)
    provider = DockerProvider(HostShape(1.0, 512 * 1024**2), agent_image, f"{SESSION}-dk", queues=("dk-" + SESSION,),
                              state_dir=state_dir, command=("python3", "-m", "jobyard.cli", "agent"), user="0:0",
                              environment=AGENT_IMAGE_ENV, client=docker_client)
    yield provider
    for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_POOL}={provider.prefix}"}):
        container.remove(force=True)
    shutil.rmtree(state_dir, ignore_errors=True)


def test_agent_container_runs_jobs_and_is_removed(pool, docker_client, redis_client):
    from sample_jobs import probe_sandbox

    (host,) = pool.add(1)
    assert [h.name for h in pool.hosts()] == [host.name]
    container = docker_client.containers.get(host.id)
    mounts = {m["Destination"] for m in container.attrs["Mounts"]}
    assert "/var/run/docker.sock" in mounts

    def published():
        if container.reload() or container.status == "exited":
            raise AssertionError(container.logs()[-3000:].decode(errors="replace"))
        return redis_client.get(f"jobyard:agent:{host.name}")

    state = json.loads(wait_for(published, 60, message="the agent container to publish its state"))
    assert state["capacity"] == {"cpus": 1.0, "memory": 512 * 1024**2}
    try:
        report = probe_sandbox.apply_async(queue="dk-" + SESSION, cpus=0.5).get(timeout=60)
    except Exception:
        print(container.logs()[-5000:].decode(errors="replace"))
        raise
    assert report["docker_socket"] is False, "a job got the Docker socket"
    assert report["uid"] == 10001

    pool.remove(host.name)
    assert pool.hosts() == []
    assert not docker_client.containers.list(all=True, filters={"id": host.id})
    wait_for(lambda: not redis_client.exists(f"jobyard:agent:{host.name}"), 15, message="the agent state withdrawn")


def test_agent_containers_get_the_broker_password_in_a_file_not_their_environment(
        pool, docker_client, redis_client, acl_user, monkeypatch, tmp_path):
    from sample_jobs import add

    user, password, url = acl_user
    backend = tmp_path / "backend-url"
    backend.write_text(url.replace("/0", "/1") + "\n")
    backend.chmod(0o600)
    monkeypatch.setenv("JOBYARD_BROKER_URL", url)
    monkeypatch.setenv("JOBYARD_RESULT_BACKEND_FILE", str(backend))
    (host,) = pool.add(1)
    container = docker_client.containers.get(host.id)
    config = container.attrs["Config"]
    shown = json.dumps({"env": config["Env"], "cmd": config["Cmd"], "labels": config["Labels"],
                        "entrypoint": config["Entrypoint"]})
    assert password not in shown, "docker inspect shows the broker password"
    env = dict(variable.partition("=")[::2] for variable in config["Env"])
    assert "JOBYARD_BROKER_URL" not in env and "JOBYARD_RESULT_BACKEND" not in env
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    for name in ("JOBYARD_BROKER_URL_FILE", "JOBYARD_RESULT_BACKEND_FILE"):
        assert mounts[env[name]]["RW"] is False, f"{name} must be mounted read-only"
        assert os.stat(mounts[env[name]]["Source"]).st_mode & 0o077 == 0, f"{name} must be mode 0600"

    def connected():
        container.reload()
        assert container.status != "exited", container.logs()[-3000:].decode(errors="replace")
        users = {client.get("user") for client in redis_client.client_list()}
        return redis_client.exists(f"jobyard:agent:{host.name}") and user in users

    wait_for(connected, 60, message="the agent container to connect as the ACL user")
    assert add.apply_async((2, 3), queue="dk-" + SESSION, cpus=0.5).get(timeout=60) == 5
    assert password not in container.logs().decode(errors="replace"), "the agent logged the password"
