"""Session-wide real services: our own redis-server, the Docker Engine, test images.

The broker URL must be in the environment before ``tasks`` is imported (the app
reads it once), so the Redis port is chosen here at import time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time

import pytest

from tests.support.services import AgentProcess, RedisServer, free_port, temp_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS_DIR = os.path.join(ROOT, "tests", "jobs")
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
#: Every agent this session starts is named with this token; containers are
#: labelled with the agent name, so the suite only ever touches its own.
SESSION = f"t{secrets.token_hex(3)}"
#: Concurrent suites from several checkouts on one engine set their own tag, so one
#: checkout's rebuild of tests/jobs never changes the image another is running.
_TAG = os.environ.get("JOBYARD_TEST_IMAGE_TAG", "latest")
PYTHON_IMAGE = f"jobyard-test/python:{_TAG}"
BUSYBOX_IMAGE = f"jobyard-test/busybox:{_TAG}"

_REDIS_PORT = free_port()
os.environ["JOBYARD_BROKER_URL"] = f"redis://127.0.0.1:{_REDIS_PORT}/0"
os.environ.pop("JOBYARD_RESULT_BACKEND", None)
os.environ["JOBYARD_DEFAULT_IMAGE"] = PYTHON_IMAGE
sys.path.insert(0, JOBS_DIR)


#: Fixtures that start or reach a real service; a test marked ``pure`` may use none.
SERVICE_FIXTURES = frozenset({"redis_server", "redis_client", "docker_client", "busybox_image", "python_image",
                              "celery_app", "agents", "agent"})


def pytest_collection_modifyitems(config, items):
    """Refuse a ``pure`` test that asks for a service: ``-m pure`` must run without any."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        parametrized = set(callspec.params) if callspec else set()
        used = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) - parametrized
        if item.get_closest_marker("pure") and used:
            raise pytest.UsageError(f"{item.nodeid} is marked pure but uses {', '.join(sorted(used))}")


@pytest.fixture(scope="session")
def redis_server():
    """Our own redis-server for the whole session (never the machine's 6379)."""
    server = RedisServer(_REDIS_PORT, temp_dir("jobyard-redis-")).start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_client(redis_server):
    import redis

    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker Engine; the suite fails (not skips) without one."""
    import docker.errors

    from executor.agent import connect_docker

    client = connect_docker()
    yield client
    # Raw listing: other test sessions' containers may vanish while we look.
    ours = [c for c in client.api.containers(all=True, filters={"label": "jobyard.agent"})
            if c["Labels"].get("jobyard.agent", "").startswith(SESSION)]
    for container in ours:
        try:
            client.api.remove_container(container["Id"], force=True)
        except docker.errors.NotFound:
            pass
    assert not ours, f"containers left behind by the suite: {[c['Names'] for c in ours]}"


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    """A tiny real image from Debian's static busybox, imported with no registry."""
    from tests.support.images import build_busybox

    return build_busybox(docker_client, BUSYBOX_IMAGE)


@pytest.fixture(scope="session")
def python_image(docker_client):
    """The jobyard Python job image with tests/jobs on its import path."""
    from executor.image import build_image

    build_image(docker_client, tag=PYTHON_IMAGE, code=JOBS_DIR)
    return PYTHON_IMAGE


@pytest.fixture(scope="session")
def celery_app(redis_server):
    from tasks import app

    return app


class AgentFactory:
    """Start agents named ``<session>-<name>``; stop them all at teardown."""

    def __init__(self, redis_server, redis_client):
        self.redis_server = redis_server
        self.redis_client = redis_client
        self.agents: list[AgentProcess] = []
        self.state_root = temp_dir("jobyard-state-")

    def start(self, name: str = "a", *args: str, env: dict | None = None, client=None) -> AgentProcess:
        """Start an agent; ``client`` is the Redis it publishes to, when not the session's."""
        hostname = f"{SESSION}-{name}-{len(self.agents)}"
        environ = {**os.environ, "JOBYARD_BROKER_URL": self.redis_server.url, **(env or {})}
        state_dir = os.path.join(self.state_root, hostname)
        os.makedirs(ARTIFACTS, exist_ok=True)
        agent = AgentProcess(hostname, ["--state-dir", state_dir, "--loglevel", "INFO", *args], environ,
                             os.path.join(ARTIFACTS, f"agent-{hostname}.log"))
        self.agents.append(agent)
        return agent.start(client or self.redis_client)

    def stop_all(self) -> None:
        for agent in self.agents:
            agent.stop(timeout=20)
        shutil.rmtree(self.state_root, ignore_errors=True)


@pytest.fixture(scope="module")
def agents(redis_server, redis_client, docker_client, python_image, busybox_image):
    """Start agents per test module; all are stopped at the module's end."""
    factory = AgentFactory(redis_server, redis_client)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def agent(agents):
    """One agent with 2 CPUs and 2Gi, consuming the default queue."""
    return agents.start("main", "--cpus", "2", "--memory", "2Gi")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
