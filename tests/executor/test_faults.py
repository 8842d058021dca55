"""Faults under running jobs: the Docker Engine restarts, Redis dies and comes back."""

import gc
import os
import time

import pytest
import redis

from tasks.app import create_app
from tasks.config import Settings
from tasks.errors import JobError
from tasks.job import JobFunction
from tests.conftest import JOBS_DIR, PYTHON_IMAGE, wait_for
from tests.support.images import build_busybox
from tests.support.services import PrivateDockerd, RedisServer, free_port, temp_dir


def _bind(job, app):
    """The same job, sent through another app (another broker)."""
    return JobFunction(job.spec, job.fn, app)


def _outcome(app, task_id):
    """The stored outcome, polled without a long-lived subscription (Redis may restart)."""
    try:
        meta = app.backend.get_task_meta(task_id)
    except (redis.exceptions.RedisError, OSError):
        return None
    return meta if meta["status"] in ("SUCCESS", "FAILURE") else None


def _wait_all(app, results, timeout):
    deadline = time.monotonic() + timeout
    outcomes = {}
    while time.monotonic() < deadline and len(outcomes) < len(results):
        for result in results:
            if result.id not in outcomes:
                meta = _outcome(app, result.id)
                if meta:
                    outcomes[result.id] = meta
        time.sleep(0.3)
    return outcomes


@pytest.fixture
def private_engine(docker_client):
    from executor.image import build_image

    engine = PrivateDockerd(temp_dir("jobyard-dockerd-")).start()
    client = engine.client()
    build_image(client, tag=PYTHON_IMAGE, code=JOBS_DIR)
    build_busybox(client, "jobyard-test/busybox:latest")
    yield engine
    engine.stop()
    engine.remove_bridge()
    os.system(f"rm -rf {engine.workdir}")  # noqa: S605 - our own temp dir


def test_private_engine_leaves_the_machine_engine_network_alone(private_engine):
    assert os.path.exists("/sys/class/net/docker0"), "the machine engine's docker0 must survive"


def test_engine_restart_under_running_jobs_loses_nothing(agents, private_engine, celery_app):
    from sample_jobs import add, sleep_for

    agent = agents.start("engine", "--cpus", "2", "--memory", "1Gi", "--queues", "engine",
                         env={"DOCKER_HOST": private_engine.socket})
    retried = [sleep_for.apply_async((6,), queue="engine", cpus=0.5, retries=2, retry_on=["backend", "failed"],
                                     retry_delay=1) for _ in range(2)]
    single = sleep_for.apply_async((6,), queue="engine", cpus=0.5)
    client = private_engine.client()
    wait_for(lambda: len(client.containers.list()) == 3, timeout=60, message="three jobs running")
    private_engine.stop()
    time.sleep(2)
    private_engine.start()
    outcomes = _wait_all(celery_app, retried + [single], timeout=120)
    assert len(outcomes) == 3, "every job must reach a terminal state"
    for result in retried:
        assert outcomes[result.id]["status"] == "SUCCESS", outcomes[result.id]
    with pytest.raises(JobError) as info:
        single.get(timeout=5)
    assert type(info.value).__name__ in ("BackendError", "JobFailed")
    assert "Docker" in str(info.value) or "exit" in str(info.value)
    assert add.apply_async((2, 2), queue="engine").get(timeout=60) == 4, "the agent reconnected"
    assert agent.alive
    wait_for(lambda: not [c for c in client.api.containers(all=True)
                          if c["Labels"].get("jobyard.agent") == agent.hostname],
             timeout=60, message="containers of the failed attempts reaped")


def test_redis_restart_with_aof_loses_no_accepted_job(agents, docker_client, python_image):
    from sample_jobs import add, sleep_for

    workdir = temp_dir("jobyard-aof-")
    server = RedisServer(free_port(), workdir, ("--appendonly", "yes", "--appendfsync", "always")).start()
    app = create_app(Settings.from_env({"JOBYARD_BROKER_URL": server.url,
                                        "JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE}))
    sleeper, adder = _bind(sleep_for, app), _bind(add, app)
    results = []
    try:
        agents.start("aof", "--cpus", "1", "--memory", "512Mi", "--queues", "aof",
                     env={"JOBYARD_BROKER_URL": server.url},
                     client=redis.Redis.from_url(server.url, decode_responses=True))
        results += [sleeper.apply_async((1.5,), queue="aof", cpus=1) for _ in range(6)]
        time.sleep(2.5)  # some done, one running, the rest queued
        server.kill()
        time.sleep(2)
        server.start()
        results.append(adder.apply_async((20, 22), queue="aof"))
        outcomes = _wait_all(app, results, timeout=120)
        assert len(outcomes) == len(results), "an accepted job was lost"
        assert all(meta["status"] == "SUCCESS" for meta in outcomes.values()), outcomes
        assert outcomes[results[-1].id]["result"] == 42
    finally:
        # Dropped while their server still runs: unsubscribing later, from whatever test
        # then collects them, would retry the gone server for 90 s.
        results.clear()
        gc.collect()
        server.stop()
        os.system(f"rm -rf {workdir}")  # noqa: S605 - our own temp dir


def test_an_agent_reconnects_within_a_second_of_its_redis_coming_back(agents):
    # kombu's default retry pace (2 s, then 4 s, 6 s ...) left an agent idle for seconds
    # after its broker was back from a restart or a failover.
    workdir = temp_dir("jobyard-reconnect-")
    server = RedisServer(free_port(), workdir).start()
    try:
        agent = agents.start("reconnect", "--cpus", "1", "--memory", "512Mi", "--queues", "reconnect",
                             env={"JOBYARD_BROKER_URL": server.url},
                             client=redis.Redis.from_url(server.url, decode_responses=True))
        connected = agent.log().count("Connected to")
        server.kill()
        time.sleep(2.5)  # past the first of kombu's default retries
        server.start()
        back = time.monotonic()
        wait_for(lambda: agent.log().count("Connected to") > connected, timeout=20,
                 message="the agent to reconnect")
        assert time.monotonic() - back < 1.5, "the agent reconnected more than 1.5 s after Redis was back"
    finally:
        server.stop()
        os.system(f"rm -rf {workdir}")  # noqa: S605 - our own temp dir
