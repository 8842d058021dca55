"""The intake gate can say zero: an agent that must take nothing takes nothing."""

import json
import os
import time

import pytest

from tasks import keys
from tasks.names import node_name
from tests.conftest import wait_for
from tests.support.dockerproxy import DockerSocketProxy
from tests.support.services import temp_dir

#: Seconds an agent that must take nothing is watched for taking anything.
WATCH = 5


def _unacked_on(redis_client, queue: str) -> list:
    return [e for e in map(json.loads, redis_client.hvals("unacked")) if e[2] == queue]


def test_a_draining_agent_with_an_idle_slot_takes_nothing(agents, redis_client, celery_app):
    from sample_jobs import add

    queue = "gate-drain"
    drained = agents.start("drained", "--cpus", "1", "--memory", "512Mi", "--queues", queue)
    redis_client.zadd(keys.DRAINING, {drained.hostname: time.time()})
    try:
        wait_for(lambda: (drained.state(redis_client) or {}).get("draining"), timeout=15,
                 message="the agent to follow its drain mark")
        result = add.apply_async((2, 3), queue=queue)
        time.sleep(WATCH)
        assert redis_client.llen(queue) == 1, "a draining agent took a message"
        assert not _unacked_on(redis_client, queue)
        assert f"[{result.id}] received" not in drained.log()
        # Taking no job must not mean deaf: the autoscaler's drain asks it what it holds.
        replies = celery_app.control.inspect(destination=[node_name(drained.hostname)], timeout=2).active()
        assert replies == {node_name(drained.hostname): []}, "a draining agent must still answer remote control"
    finally:
        redis_client.zrem(keys.DRAINING, drained.hostname)
    assert result.get(timeout=30) == 5  # no longer draining: it takes the job


@pytest.fixture
def docker_proxy():
    """A Docker socket of this test's own, forwarding to the machine's engine until stopped."""
    path = os.path.join(temp_dir("jobyard-gate-proxy-"), "docker.sock")
    proxies = [DockerSocketProxy(path).start()]

    def restart() -> None:
        if os.path.exists(path):
            os.unlink(path)
        proxies.append(DockerSocketProxy(path).start())

    yield proxies, restart
    for proxy in proxies:
        proxy.stop()


def test_an_agent_whose_engine_is_down_takes_nothing_and_does_not_churn(agents, redis_client, docker_proxy):
    from sample_jobs import add

    proxies, restart = docker_proxy
    queue = "gate-engine"
    cut = agents.start("cut", "--cpus", "1", "--memory", "512Mi", "--queues", queue,
                       env={"DOCKER_HOST": proxies[0].url})
    proxies[0].stop()  # the socket is gone: every connection to the engine fails
    result = add.apply_async((4, 5), queue=queue)
    wait_for(lambda: "Docker Engine unreachable" in cut.log() or "pausing intake" in cut.log(), timeout=20,
             message="the agent to find its engine down")
    seen = len(cut.log())
    time.sleep(WATCH)
    churn = cut.log()[seen:]
    assert churn.count("received") == 0 and churn.count("handing") == 0, churn[-2000:]
    assert redis_client.llen(queue) == 1 and not _unacked_on(redis_client, queue)
    restart()
    assert result.get(timeout=30) == 9  # the engine answers again: it takes the job
