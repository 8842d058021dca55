"""Durable writes (JOBYARD_BROKER_MIN_REPLICAS): a write counts once a replica holds it.

A primary and a ``--replicaof`` replica, redis-servers of our own on free ports (no
sentinel: WAIT works on any primary). A replica paused with SIGSTOP stays connected
in its primary's view, but acknowledges nothing: the writes that must wait for it
cannot count as done. The negative control kills the primary with the replica
paused, promotes the replica by hand and counts the accepted jobs it lacks.
"""

from __future__ import annotations

import gc
import dataclasses
import logging
import os
import signal
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager

import pytest
import redis

from tasks import job, keys
from tasks.app import create_app
from tasks.config import Settings
from tasks.errors import JobError, JobyardError, PublishNotDurable, WriteNotDurable
from tasks.names import RUN_TASK
from tasks.state import read_job_facts
from tests.conftest import PYTHON_IMAGE, wait_for
from tests.support.services import RedisServer, free_port, temp_dir

#: The bound every durable write here waits for (ms): short, the suite's time is counted.
WAIT_MS = 500
#: A queue no agent consumes: what is published to it stays there to be counted.
IDLE_QUEUE = "durable-idle"


def start_pair(root: str) -> tuple[RedisServer, RedisServer]:
    """A primary and one replica in sync with it."""
    primary = RedisServer(free_port(), os.path.join(root, "primary"), ("--repl-diskless-sync-delay", "0")).start()
    replica = RedisServer(free_port(), os.path.join(root, "replica"),
                          ("--replicaof", "127.0.0.1", str(primary.port))).start()
    wait_for(lambda: redis.Redis(port=replica.port).info("replication").get("master_link_status") == "up",
             message="the replica to sync")
    # Online and acknowledging: a write and a generous WAIT, so the tests' short ones time only what they test.
    client = redis.Redis(port=primary.port)
    wait_for(lambda: client.set("durable-test-warm", 1) and client.execute_command("WAIT", 1, 1000) == 1,
             message="the replica to acknowledge")
    return primary, replica


@contextmanager
def paused(server: RedisServer):
    """``server`` stopped with SIGSTOP (still connected, acknowledging nothing), then resumed."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def caller(primary: RedisServer, min_replicas: int):
    """A caller's app on ``primary`` whose writes wait for ``min_replicas`` replicas."""
    return create_app(Settings.from_env({
        "JOBYARD_BROKER_URL": primary.url, "JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE,
        "JOBYARD_BROKER_MIN_REPLICAS": str(min_replicas), "JOBYARD_BROKER_WAIT_TIMEOUT": str(WAIT_MS)}))


def publish(app, task_id: str | None = None) -> str:
    """Publish one message to :data:`IDLE_QUEUE`; its task id."""
    task_id = task_id or uuid.uuid4().hex
    app.send_task(RUN_TASK, (1, 2), task_id=task_id, queue=IDLE_QUEUE)
    return task_id


def queued_ids(client: redis.Redis) -> list[str]:
    """Task ids of the messages waiting in :data:`IDLE_QUEUE` on ``client``'s server."""
    import json

    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(IDLE_QUEUE, 0, -1)]


@pytest.fixture(scope="module")
def pair():
    root = temp_dir("jobyard-durable-")
    primary, replica = start_pair(root)
    yield primary, replica
    gc.collect()  # the tests' results unsubscribe while the pair runs, not from a later test or at exit
    replica.stop()
    primary.stop()


@pytest.fixture(scope="module")
def durable_app(pair):
    app = caller(pair[0], 1)
    yield app
    app.close()


@pytest.fixture(scope="module")
def plain_app(pair):
    """A caller that does not wait: its publishes go through with the replica paused."""
    app = caller(pair[0], 0)
    yield app
    app.close()


def test_a_publish_returns_once_the_replica_holds_it(pair):
    primary, replica = pair
    app = create_app(dataclasses.replace(caller(primary, 1).jobyard_settings, broker_wait_timeout=5000))
    stall = 0.3
    try:
        with paused(replica):
            threading.Timer(stall, os.kill, (replica.process.pid, signal.SIGCONT)).start()
            started = time.monotonic()
            task_id = publish(app)
            took = time.monotonic() - started
    finally:
        app.close()
    assert took >= stall * 0.9, f"the publish returned after {took:.2f}s, while its replica was paused"
    assert task_id in queued_ids(redis.Redis(port=replica.port, decode_responses=True))


def test_a_publish_no_replica_confirms_raises_within_the_bound_and_may_be_sent_again(pair, durable_app):
    primary, replica = pair
    task_id = uuid.uuid4().hex
    with paused(replica):
        started = time.monotonic()
        with pytest.raises(PublishNotDurable) as raised:
            publish(durable_app, task_id)
        took = time.monotonic() - started
    assert took < WAIT_MS / 1000 + 1.5, f"the caller waited {took:.1f}s"
    assert isinstance(raised.value, JobyardError) and not isinstance(raised.value, JobError)
    assert raised.value.details == {"acked": 0, "needed": 1, "timeout_ms": WAIT_MS, "task_id": task_id}
    # It may be queued (here it is: the primary took it); publishing the same id again does not queue it twice.
    publish(durable_app, task_id)
    replica_client = redis.Redis(port=replica.port, decode_responses=True)
    assert queued_ids(replica_client).count(task_id) == 1


def test_storing_a_result_waits_for_the_replica(pair, durable_app):
    primary, replica = pair
    backend = durable_app.backend
    with paused(replica):
        with pytest.raises(WriteNotDurable):
            backend.store_result(uuid.uuid4().hex, 5, "SUCCESS")
    task_id = uuid.uuid4().hex
    backend.store_result(task_id, 7, "SUCCESS")
    # Read at once: the store returned only after WAIT counted the replica.
    replica_results = redis.Redis(port=replica.port, db=1)
    assert b'"result": 7' in replica_results.get(backend.get_key_for_task(task_id))


def test_a_caller_short_of_replicas_waits_for_those_it_has_and_logs_it_once(pair, caplog):
    primary, replica = pair
    app = caller(primary, 2)
    try:
        with caplog.at_level(logging.WARNING, logger="tasks.durable"):
            sent = [publish(app) for _ in range(3)]
    finally:
        app.close()
    assert set(sent) <= set(queued_ids(redis.Redis(port=replica.port, decode_responses=True)))
    degraded = [r for r in caplog.records if "durability degraded" in r.getMessage()]
    assert len(degraded) == 1, [r.getMessage() for r in caplog.records]


# -- the agent: take records, degraded fleet -------------------------------------------------------

@pytest.fixture(scope="module")
def durable_agent(pair, own_agents):
    """An agent that wants two replicas of a primary that has one: degraded, waiting for one."""
    primary, _ = pair
    port = free_port()
    env = {"JOBYARD_BROKER_URL": primary.url, "JOBYARD_BROKER_MIN_REPLICAS": "2",
           "JOBYARD_BROKER_WAIT_TIMEOUT": str(WAIT_MS), "JOBYARD_LEASE_SECONDS": "3"}
    agent = own_agents.start("durable", redis.Redis(port=primary.port), env, "--metrics-port", str(port))
    agent.extra["metrics"] = f"http://127.0.0.1:{port}/metrics"
    return agent


def _add(app):
    from sample_jobs import add

    return job(app=app, memory="64Mi", timeout=60)(add.fn)


def test_a_fleet_short_of_replicas_runs_jobs_and_says_it_is_degraded(pair, durable_agent):
    from jobyard.status import collect

    primary, _ = pair
    app = caller(primary, 2)
    try:
        add = _add(app)
        assert [add.delay(i, 1).get(timeout=30) for i in range(2)] == [1, 2]
    finally:
        app.close()
    metrics = wait_for(lambda: _degraded_metric(durable_agent), message="the degraded gauge")
    assert metrics == 1.0
    assert durable_agent.log().count("durability degraded") == 1, durable_agent.log()[-3000:]
    status = collect(redis.Redis(port=primary.port, decode_responses=True), primary.url,
                     durability=app.jobyard_settings.durability)
    assert (status.durability.min_replicas, status.durability.connected, status.durability.degraded) == (2, 1, True)


def test_the_autoscaler_exports_and_logs_the_degraded_state_once(pair, caplog):
    from autoscaler.action import Action
    from autoscaler.loop import Tick
    from autoscaler.metrics import BrokerMetrics
    from autoscaler.telemetry import DurabilityWatch, Telemetry
    from jobyard.status import collect, render
    from tasks.durable import Durability

    primary, _ = pair
    client = redis.Redis(port=primary.port, decode_responses=True)
    # A client of its own: a server this process has not watched yet starts undegraded.
    watch = DurabilityWatch(redis.Redis(host="localhost", port=primary.port), Durability(2, WAIT_MS))
    telemetry = Telemetry(degraded=lambda: watch.degraded)
    tick = Tick(time.time(), BrokerMetrics(client, [IDLE_QUEUE]).read(), 0, 0, (), Action.hold("idle"))
    with caplog.at_level(logging.WARNING, logger="tasks.durable"):
        for _ in range(3):
            for listener in (watch, telemetry):
                listener.observe(tick)
    assert telemetry.registry.get_sample_value("jobyard_autoscaler_durability_degraded") == 1.0
    assert sum("durability degraded" in r.getMessage() for r in caplog.records) == 1
    shown = render(collect(client, primary.url, durability=Durability(2, WAIT_MS)))
    assert "durable writes: 2 replica(s) wanted, 1 connected (DURABILITY DEGRADED" in shown
    assert "durable writes" not in render(collect(client, primary.url))


def _degraded_metric(agent) -> float | None:
    text = urllib.request.urlopen(agent.extra["metrics"], timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("jobyard_agent_durability_degraded{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_no_container_starts_for_a_take_the_replica_does_not_hold(pair, durable_agent, plain_app):
    primary, replica = pair
    client = redis.Redis(port=primary.port, decode_responses=True)
    add = _add(plain_app)
    refused = durable_agent.log().count("recording a take")
    with paused(replica):
        result = add.delay(20, 22)
        wait_for(lambda: durable_agent.log().count("recording a take") > refused, timeout=15,
                 message="the agent's take to go unconfirmed")
        time.sleep(0.5)
        assert result.id not in durable_agent.log(), "the agent received a job whose take no replica held"
        assert not client.exists(keys.job_facts(result.id)), "a container started"
        assert client.hlen("unacked") == 1, "the take's record is not left for the lease"
    assert result.get(timeout=30) == 42


def stalled_at_its_end(pair, app, script: str, ended, **spec):
    """Run a busybox job of ``script`` from ``app``; pause the replica once its container
    runs, until ``ended(client, task_id)`` and the WAIT after it timed out.
    The job's AsyncResult and a client of the primary."""
    from tasks import command_job
    from tests.conftest import BUSYBOX_IMAGE

    primary, replica = pair
    client = redis.Redis(port=primary.port, decode_responses=True)
    the_job = command_job("durable.stalled", image=BUSYBOX_IMAGE, app=app, cpus=0.1, memory="16Mi", timeout=60,
                          command=["sh", "-c", script], **spec)
    result = the_job.delay()
    wait_for(lambda: client.hget(keys.job_facts(result.id), "container_id"), timeout=30, message="its container")
    with paused(replica):
        wait_for(lambda: ended(client, result.id), timeout=15, message="the job's end")
        time.sleep(WAIT_MS / 1000 + 0.7)  # the WAIT after that write times out meanwhile
    return result, client


def test_a_retry_no_replica_confirms_is_left_to_the_lease_not_dead_lettered(pair, durable_agent, plain_app):
    from executor.deadletter import DeadLetters

    # Attempt 1 fails (exit 3, retried) after 2 s; attempt 2 succeeds after 5 s, so the lease
    # brings attempt 1's delivery back (to be dropped as stale) while the retry runs here.
    # The retry's script runs on the primary (its mark is up), then its WAIT times out.
    script = '[ "$JOBYARD_ATTEMPT" -ge 2 ] && { sleep 5; exit 0; }; sleep 2; exit 3'
    result, client = stalled_at_its_end(pair, plain_app, script,
                                        lambda client, task_id: client.get(keys.retried(task_id)),
                                        retries=1, retry_on=[3], retry_delay=0)
    assert "its delivery is left to the lease" in durable_agent.log()
    wait_for(lambda: "dropping a stale delivery" in durable_agent.log(), timeout=15, message="the stale delivery")
    time.sleep(0.5)  # its acknowledgement too
    assert client.hlen("unacked") == 1, "settling the stale delivery settled the running retry's"
    result.get(timeout=30)
    assert read_job_facts(result.id, client).attempt == 2
    assert DeadLetters(client).get(result.id) is None, "an unconfirmed retry was dead-lettered"


def test_an_outcome_no_replica_confirms_stays_the_jobs_own(pair, durable_agent, plain_app):
    from tasks.errors import JobFailed

    result, client = stalled_at_its_end(pair, plain_app, "sleep 2; exit 5",
                                        lambda client, task_id: read_job_facts(task_id, client).state == "failed")
    with pytest.raises(JobFailed):  # not the WriteNotDurable of its FAILURE's store
        result.get(timeout=30)
    # The lease brings the delivery back; the agent finds the outcome stored and settles it.
    wait_for(lambda: client.hlen("unacked") == 0, timeout=15, message="the delivery to be settled")


# -- the negative control --------------------------------------------------------------------------

#: Bytes written ahead of the paused replica's stream: more than the kernel buffers for one
#: loopback connection (tcp_wmem + tcp_rmem maxima, 36 MiB here), so what follows stays in
#: the primary's memory and dies with it. A pause alone loses nothing on loopback: the stream
#: waits in the replica's socket buffer and is read after SIGCONT, before the replica sees
#: its primary gone (the first version of this control counted 0 lost).
BACKLOG = 64 * 1024 * 1024


def lost_after_failover(min_replicas: int) -> tuple[int, int, int]:
    """Publish with the replica live, then with it paused behind a replication backlog;
    SIGKILL the primary and promote the replica (``REPLICAOF NO ONE``).
    (accepted, refused, accepted jobs the new primary lacks)."""
    primary, replica = start_pair(temp_dir("jobyard-failover-"))
    app = caller(primary, min_replicas)
    accepted, refused = [], 0
    try:
        accepted += [publish(app) for _ in range(5)]
        with paused(replica):
            redis.Redis(port=primary.port).set("durable-test-backlog", b"x" * BACKLOG)
            for _ in range(3 if min_replicas else 10):
                try:
                    accepted.append(publish(app))
                except PublishNotDurable:
                    refused += 1
            primary.kill()
        promoted = redis.Redis(port=replica.port, decode_responses=True)
        promoted.execute_command("REPLICAOF", "NO", "ONE")
        present = set(queued_ids(promoted))
        return len(accepted), refused, sum(1 for task_id in accepted if task_id not in present)
    finally:
        app.close()
        replica.stop()
        primary.stop()


def test_negative_control_without_wait_a_failover_loses_accepted_jobs():
    accepted, refused, lost = lost_after_failover(0)
    print(f"MIN_REPLICAS=0: {accepted} accepted, {lost} lost")
    assert (accepted, refused) == (15, 0)
    assert lost >= 10, f"only {lost} of the 10 jobs published with the replica paused were lost"


def test_with_wait_the_same_failover_loses_no_accepted_job():
    accepted, refused, lost = lost_after_failover(1)
    print(f"MIN_REPLICAS=1: {accepted} accepted, {refused} refused, {lost} lost")
    assert (accepted, refused, lost) == (5, 3, 0)
