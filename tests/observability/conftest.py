"""Real services for the observability tests: Flower, one agent with metrics, and a
batch of jobs (a success, an OOM kill, a timeout, a raise) run while Flower watches.

Flower learns about jobs only from events it sees while running, so it starts
before the agent takes any job.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import ARTIFACTS, AgentFactory, wait_for
from tests.support.services import free_port

FLOWER_USER = "operator"


@dataclass
class FlowerProcess:
    """A ``jobyard flower`` subprocess of this test session."""

    url: str
    user: str
    password: str
    process: subprocess.Popen
    log_path: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_flower(broker_url: str, user: str = "", password: str = "", *args: str,
                 timeout: float = 30.0) -> FlowerProcess:
    """Start ``jobyard flower`` on a free loopback port, credentials (if any) from the environment."""
    port = free_port()
    os.makedirs(ARTIFACTS, exist_ok=True)
    log_path = os.path.join(ARTIFACTS, f"flower-{port}.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBYARD_FLOWER_", "FLOWER_"))}
    env["JOBYARD_BROKER_URL"] = broker_url
    if user:
        env.update(JOBYARD_FLOWER_USER=user, JOBYARD_FLOWER_PASSWORD=password)
    process = subprocess.Popen([sys.executable, "-m", "jobyard.cli", "flower", "--port", str(port), *args],
                               env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    flower = FlowerProcess(f"http://127.0.0.1:{port}", user, password, process, log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flower exited: {flower.log()[-3000:]}")
        try:
            auth = flower.auth if user else None
            return requests.get(f"{flower.url}/healthcheck", auth=auth, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, timeout=timeout, interval=0.2, message="flower to answer /healthcheck")
    return flower


@pytest.fixture(scope="package")
def flower_server(redis_server):
    """Flower for this session's broker, with basic auth (a password with ':' and ',')."""
    flower = start_flower(redis_server.url, FLOWER_USER, f"pw:{secrets.token_hex(8)},x")
    yield flower
    flower.stop()


@pytest.fixture(scope="package")
def metrics_port():
    return free_port()


@pytest.fixture(scope="package")
def obs_agent(flower_server, redis_server, redis_client, docker_client, python_image, busybox_image,
              metrics_port):
    """One agent (2 CPUs, 2Gi) serving Prometheus metrics; started after Flower."""
    factory = AgentFactory(redis_server, redis_client)
    agent = factory.start("obs", "--cpus", "2", "--memory", "2Gi", "--metrics-port", str(metrics_port))
    wait_for(lambda: flower_knows_worker(flower_server, agent.hostname), timeout=20,
             message="flower to see the agent's worker")
    yield agent
    factory.stop_all()


def flower_knows_worker(flower: FlowerProcess, hostname: str) -> bool:
    response = requests.get(f"{flower.url}/api/workers", params={"refresh": "true"}, auth=flower.auth, timeout=10)
    return response.status_code == 200 and f"jobyard@{hostname}" in response.json()


def flower_tasks(flower: FlowerProcess) -> dict:
    """The tasks Flower knows, by task id (its HTTP API)."""
    response = requests.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Batch:
    """The jobs every observability test looks at, all finished."""

    success: object
    oom: object
    timeout: object
    raised: object


@pytest.fixture(scope="package")
def batch(obs_agent):
    """Run a success, an OOM kill, a timeout and a raise, and wait for all four to end."""
    from sample_jobs import add, balloon, fail_with, sleep_for

    from tasks.errors import ContainerOOMKilled, JobFailed, JobTimeout

    success = add.delay(20, 22)
    oom = balloon.apply_async((300,), memory="64Mi")
    timeout = sleep_for.apply_async((30,), timeout=1)
    raised = fail_with.delay("bad input")
    assert success.get(timeout=60) == 42
    with pytest.raises(ContainerOOMKilled):
        oom.get(timeout=60)
    with pytest.raises(JobTimeout):
        timeout.get(timeout=60)
    with pytest.raises(JobFailed):
        raised.get(timeout=60)
    time.sleep(0.5)  # let the last task-failed event reach Flower
    return Batch(success, oom, timeout, raised)
