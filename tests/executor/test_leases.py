"""Leases: a dead host's jobs come back in seconds; a healthy long job runs once."""

import os
import time

import pytest

from tasks import keys
from tasks.state import job_facts
from tests.conftest import wait_for
from tests.support.dockerproxy import DockerSocketProxy
from tests.support.services import temp_dir


def _running_on(result, host):
    facts = job_facts(result.id)
    return facts.get("state") == "running" and facts.get("host") == host and facts.get("container_id")


def test_dead_hosts_job_is_requeued_within_seconds_and_says_so(agents, docker_client):
    from sample_jobs import sleep_for

    doomed = agents.start("doomed", "--cpus", "1", "--memory", "512Mi", "--queues", "lease")
    result = sleep_for.apply_async((6,), queue="lease")
    wait_for(lambda: _running_on(result, doomed.hostname), timeout=30, message="job running on the doomed host")
    orphan = job_facts(result.id)["container_id"]
    rescuer = agents.start("rescuer", "--cpus", "1", "--memory", "512Mi", "--queues", "lease")
    doomed.kill()
    killed_at = time.monotonic()
    wait_for(lambda: _running_on(result, rescuer.hostname), timeout=30, message="job restarted on the rescuer")
    recovery = time.monotonic() - killed_at
    assert recovery <= 10 + 2 + 4, f"requeued {recovery:.1f}s after the host died"
    assert job_facts(result.id)["attempt"] == 2
    assert result.get(timeout=60) == 6
    # The returning agent removes the container it left behind.
    doomed.start(agents.redis_client)
    wait_for(lambda: not docker_client.api.containers(all=True, filters={"id": orphan}), timeout=20,
             message="orphan container reaped by the returning agent")


def test_job_longer_than_the_lease_runs_exactly_once(agents, redis_client):
    from sample_jobs import sleep_for

    runner = agents.start("steady", "--cpus", "1", "--memory", "512Mi", "--queues", "steady",
                          env={"JOBYARD_LEASE_SECONDS": "3"})
    result = sleep_for.apply_async((9,), queue="steady")
    assert result.get(timeout=60) == 9
    facts = job_facts(result.id)
    assert facts["attempt"] == 1 and facts["host"] == runner.hostname
    assert runner.log().count(f"[{result.id}] received") == 1
    # The agent settles after storing the outcome, so the caller may see the result first.
    wait_for(lambda: not redis_client.hgetall("unacked"), timeout=10, message="nothing may stay unacknowledged")


@pytest.fixture
def docker_proxy():
    """A Docker socket of this test's own, forwarding to the machine's engine."""
    proxy = DockerSocketProxy(os.path.join(temp_dir("jobyard-proxy-"), "docker.sock")).start()
    yield proxy
    proxy.stop()


def test_stalled_engine_api_does_not_starve_lease_renewal(agents, redis_client, docker_proxy):
    from sample_jobs import sleep_for

    lease = 4
    runner = agents.start("stall", "--cpus", "2", "--memory", "1Gi", "--queues", "stall",
                          env={"JOBYARD_LEASE_SECONDS": str(lease), "DOCKER_HOST": docker_proxy.url})
    result = sleep_for.apply_async((3 * lease,), queue="stall")
    wait_for(lambda: _running_on(result, runner.hostname), timeout=30, message="job running")
    # Stall the engine API from the agent's next sweep for containers no held job owns.
    docker_proxy.stall(2.5 * lease, after="/containers/json")
    wait_for(docker_proxy.stalling, timeout=30, message="the reaper's listing, stalled")
    wait_for(lambda: not docker_proxy.stalling(), timeout=30, message="the stall to end")
    assert result.get(timeout=60) == 3 * lease
    assert redis_client.get(keys.attempts(result.id)) == "1", "the job was started again"
    assert runner.log().count(f"[{result.id}] received") == 1
    assert job_facts(result.id)["attempt"] == 1
    assert runner.alive


def _lease_renewals(redis_server, seconds: float) -> int:
    """How many lease renewals (``ZADD unacked_index XX ...``) Redis runs in ``seconds`` (seen by MONITOR)."""
    import socket

    seen, deadline = b"", time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=0.5) as monitor:
        monitor.sendall(b"MONITOR\r\n")
        while time.monotonic() < deadline:
            try:
                seen += monitor.recv(65536)
            except TimeoutError:
                pass
    return sum(1 for line in seen.splitlines() if b'"ZADD" "unacked_index" "XX"' in line)


def test_expired_deliveries_leave_nothing_held(agents, redis_server):
    from datetime import datetime, timedelta, timezone

    from celery.result import AsyncResult
    from sample_jobs import add

    agents.start("expiry", "--cpus", "1", "--memory", "512Mi", "--queues", "expiry")
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    results = [add.apply_async((n, n), queue="expiry", expires=past) for n in range(50)]
    wait_for(lambda: all(AsyncResult(r.id).state == "REVOKED" for r in results), timeout=60,
             message="every expired job revoked without running")
    # A held message's lease is renewed every heartbeat (2 s): none may be renewed now.
    assert _lease_renewals(redis_server, 2.5) == 0, "revoked deliveries are still held"

@pytest.fixture
def slow_clock():
    """A directory for PYTHONPATH whose sitecustomize sets the process's wall clock 30 s back."""
    path = temp_dir("jobyard-skew-")
    with open(os.path.join(path, "sitecustomize.py"), "w") as handle:
        handle.write("import time\n_real = time.time\ntime.time = lambda: _real() - 30\n")
    return path


def test_a_job_held_by_an_agent_with_a_skewed_clock_runs_once(agents, redis_client, slow_clock):
    from sample_jobs import sleep_for

    lease = 3
    env = {"JOBYARD_LEASE_SECONDS": str(lease)}
    skewed = agents.start("skewed", "--cpus", "1", "--memory", "512Mi", "--queues", "skew",
                          env={**env, "PYTHONPATH": os.pathsep.join([slow_clock, os.environ.get("PYTHONPATH", "")])})
    result = sleep_for.apply_async((3 * lease,), queue="skew")
    wait_for(lambda: _running_on(result, skewed.hostname), timeout=30, message="job running on the skewed host")
    sweeper = agents.start("sweeper", "--cpus", "1", "--memory", "512Mi", "--queues", "skew", env=env)
    assert result.get(timeout=60) == 3 * lease
    assert redis_client.get(keys.attempts(result.id)) == "1", "a healthy job was started again"
    assert skewed.log().count(f"[{result.id}] received") == 1
    assert f"[{result.id}] received" not in sweeper.log()
