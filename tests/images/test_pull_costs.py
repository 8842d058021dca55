"""What a job's image costs on the agent's path: engine API calls and Redis commands, counted.

One agent talks to the engine through a Docker socket proxy of this module's own (which
records every request line) and to the session's Redis, whose MONITOR stream this
module reads. Counting, not timing: the machine is shared.
"""

from __future__ import annotations

import os
import threading
import urllib.parse

import pytest
import redis

from executor.pulls import engine_id, ref_hash
from tasks import command_job, keys
from tasks.images import parse_image_ref
from tests.conftest import BUSYBOX_IMAGE
from tests.support.dockerproxy import DockerSocketProxy
from tests.support.services import temp_dir


class Monitor:
    """The commands the session's Redis runs while it watches (its MONITOR stream), as text."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.commands: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="redis-monitor", daemon=True)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self.ready.set()
            while not self.stopped.is_set():
                try:
                    self.commands.append(monitor.next_command()["command"])
                except (redis.exceptions.ConnectionError, ValueError):
                    return

    def __enter__(self) -> "Monitor":
        self.ready = threading.Event()
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.client.ping()  # one more command, so next_command returns and sees the stop
        self.thread.join(5)


@pytest.fixture(scope="module")
def engine_proxy():
    proxy = DockerSocketProxy(os.path.join(temp_dir("jobyard-costs-proxy-"), "docker.sock")).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def counted_agent(agents, engine_proxy, registry):
    from tests.images.test_agent_pull import _auth, _write_config

    config = _write_config({"auths": {registry.host: _auth(registry.username, registry.password)}})
    return agents.start("costs", "--cpus", "1", "--memory", "1Gi", "--queues", "costs", "--registry-config", config,
                        env={"DOCKER_HOST": engine_proxy.url})


def _inspects(proxy: DockerSocketProxy, reference: str, since: float) -> list[str]:
    quoted = urllib.parse.quote(reference, safe="")
    return [line for line in proxy.seen("/images/", since)
            if line.split()[0] == "GET" and (f"/images/{reference}/json" in line or f"/images/{quoted}/json" in line)]


def _job(image: str):
    return command_job("costs.echo", image=image, command=["echo", "ran"], cpus=0.1, memory="16Mi", queue="costs")


def _costs(counted_agent, engine_proxy, redis_server, image: str) -> tuple[list[str], list[str], str]:
    import time

    since = time.monotonic()
    with Monitor(redis_server.url) as monitor:
        result = _job(image).delay()
        assert result.get(timeout=60)["exit_code"] == 0
    return _inspects(engine_proxy, parse_image_ref(image).normalised, since), monitor.commands, result.id


def test_a_present_image_costs_one_inspect_and_no_pull_lock_or_pull_facts(counted_agent, engine_proxy,
                                                                          redis_server, docker_client):
    inspects, commands, task_id = _costs(counted_agent, engine_proxy, redis_server, BUSYBOX_IMAGE)
    assert len(inspects) == 1, inspects
    lock = keys.pull_lock(engine_id(docker_client), ref_hash(parse_image_ref(BUSYBOX_IMAGE)))
    assert not [c for c in commands if lock in c], "a present image touched its pull lock"
    facts = keys.job_facts(task_id)
    assert not [c for c in commands if facts in c and ("pulling" in c or '"pull"' in c)], \
        "a present image wrote pull facts"


def test_a_pulled_image_is_inspected_twice(counted_agent, engine_proxy, redis_server, absent):
    # Seen absent before the pull, its digest read after it: no second look under the pull lock
    # (taken at once, so no other agent's pull ended in between), none before the pull itself.
    inspects, _, _ = _costs(counted_agent, engine_proxy, redis_server, absent.reference)
    assert len(inspects) == 2, inspects
