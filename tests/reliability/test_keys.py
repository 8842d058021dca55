"""Redis state that cleans itself: every ``jobyard:*`` key expires or is swept, lost hosts show and go."""

import fnmatch
import json
import shutil
import time
import uuid

import pytest
import redis
from click.testing import CliRunner

from tasks import keys
from jobyard.cli import main
from tasks.config import Settings
from tasks.errors import JobFailed, JobRejected
from tests.conftest import PYTHON_IMAGE, SESSION, wait_for
from tests.support.services import RedisServer, free_port, temp_dir


def status_json() -> dict:
    result = CliRunner().invoke(main, ["status", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def status_text() -> str:
    result = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def own_redis():
    """A redis-server of this test's own: every key in it was written by this test's run."""
    server = RedisServer(free_port(), temp_dir("jobyard-keys-")).start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def in_process_agent(redis_server, docker_client):
    """An Agent object in this process on the session Redis; it never starts a worker."""
    from executor.agent import Agent, AgentConfig
    from executor.capacity import Capacity

    config = AgentConfig(hostname=f"{SESSION}-keys-{uuid.uuid4().hex[:6]}", capacity=Capacity(1.0, 512 * 1024**2),
                         queues=(f"keys-{uuid.uuid4().hex[:6]}",), state_dir=temp_dir("jobyard-keys-state-"))
    agent = Agent(config, client=docker_client)
    yield agent
    agent.stop()


def test_a_killed_agent_is_listed_as_lost_until_the_sweep(agents, redis_client, in_process_agent):
    victim = agents.start("lost", "--cpus", "1", "--memory", "256Mi", "--queues", "keys-lost")
    victim.kill()
    lost = wait_for(lambda: next((h for h in status_json()["lost"] if h["hostname"] == victim.hostname), None),
                    timeout=30, message="the killed agent listed as lost")
    assert lost["heartbeat_age"] >= 0 and lost["last_heartbeat"] <= time.time()
    assert victim.hostname not in [h["hostname"] for h in status_json()["hosts"]]
    text = status_text()
    lost_section = text.split("LOST HOSTS")[1].split("\n\n")[0]
    assert victim.hostname in lost_section and "LAST HEARTBEAT" in lost_section and "AGO" in lost_section
    assert victim.hostname not in [s.hostname for s in in_process_agent.fleet.agents()]

    # A heartbeat sweeps hosts silent for longer than the retention, and keeps the rest.
    stale = f"{SESSION}-stale-{uuid.uuid4().hex[:6]}"
    redis_client.zadd(keys.AGENTS, {stale: time.time() - keys.AGENTS_RETENTION - 5})
    in_process_agent.publish()
    assert redis_client.zscore(keys.AGENTS, stale) is None
    assert redis_client.zscore(keys.AGENTS, victim.hostname) is not None
    assert 0 < redis_client.ttl(keys.AGENTS) <= keys.AGENTS_RETENTION
    redis_client.zrem(keys.AGENTS, victim.hostname)  # ours: do not leave it to other tests' status


def test_a_wake_ring_expires(redis_client, in_process_agent):
    in_process_agent.publish(wake=True)
    wake = keys.wake(in_process_agent.name)
    assert redis_client.llen(wake) == 1
    assert 0 < redis_client.ttl(wake) <= 60


def test_every_key_of_a_short_run_expires_or_is_swept(own_redis, own_agents, docker_client):
    from sample_jobs import add, fail_with
    from tasks.app import create_app
    from tasks.job import JobFunction

    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    app = create_app(Settings.from_env({"JOBYARD_BROKER_URL": own_redis.url, "JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE}))
    agent = own_agents.start("keys", client, {"JOBYARD_BROKER_URL": own_redis.url}, "--max-job-pids", "256")
    adder, failer = JobFunction(add.spec, add.fn, app), JobFunction(fail_with.spec, fail_with.fn, app)
    assert adder.delay(1, 2).get(timeout=60) == 3
    with pytest.raises(JobFailed):
        failer.delay("boom").get(timeout=60)
    with pytest.raises(JobRejected):
        adder.apply_async((1, 2), pids=257).get(timeout=60)
    client.lpush("default", b"\x00\xff garbage, not a message")
    wait_for(lambda: client.llen(keys.rejected()), timeout=30, message="the refused message recorded")

    names = sorted(client.scan_iter(f"{keys.PREFIX}:*", count=1000))
    assert {keys.AGENTS, keys.DEAD, keys.rejected(), keys.agent(agent.hostname)} <= set(names), names
    untimed = [name for name in names if client.ttl(name) == -1
               and not any(fnmatch.fnmatchcase(name, pattern) for pattern in keys.SWEPT)]
    assert not untimed, f"keys with no TTL that nothing sweeps: {untimed}"
    app.close()
    assert not hasattr(keys, "lease"), "an unused key in the catalogue"

