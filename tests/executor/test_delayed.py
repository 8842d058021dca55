"""Delayed jobs stay in Redis, out of every agent's hands, until due (issue 14 item 6).

A real agent, real containers (busybox), the session's redis-server. A countdown, an
eta or a retry's countdown waits in its list's delayed set (``tasks.keys.delayed``):
no agent holds it, so intake goes on, a drained host can go, and the job runs once
when due, on whichever agent takes it then.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from celery.result import AsyncResult

from autoscaler.drain import Drainer
from executor.intake import ETA_SKEW, due_headers
from jobyard.status import collect, render
from tasks import command_job, keys
from tasks.errors import JobFailed
from tasks.state import job_facts
from tests.conftest import BUSYBOX_IMAGE, wait_for

QUEUE = "delayq"
DRAIN_QUEUE = "delayq-drain"

echo = command_job("delay.echo", image=BUSYBOX_IMAGE, command=["echo", "hi"], memory="16Mi", queue=QUEUE)
exit3 = command_job("delay.exit3", image=BUSYBOX_IMAGE, command=["sh", "-c", "exit 3"], memory="16Mi",
                    retries=1, retry_on=[3], retry_delay=8, queue=QUEUE)


@pytest.fixture(scope="module")
def delay_agent(agents):
    return agents.start("delay", "--cpus", "2", "--memory", "1Gi", "--queues", QUEUE)


def delayed(redis_client, queue: str = QUEUE) -> list[dict]:
    """The messages waiting in ``queue``'s delayed sets."""
    return [json.loads(raw) for key in keys.delayed_sets(queue) for raw in redis_client.zrange(key, 0, -1)]


def held_ids(redis_client) -> set[str]:
    """Task ids of every message some agent holds (kombu's unacked hash)."""
    return {json.loads(raw)[0]["headers"]["id"] for raw in redis_client.hvals(keys.UNACKED)}


def attempts(redis_client, task_id: str) -> int:
    return int(redis_client.get(keys.attempts(task_id)) or 0)


def test_a_countdown_job_waits_in_redis_not_on_an_agent_and_runs_once_when_due(delay_agent, redis_client):
    sent = time.time()
    result = echo.apply_async(countdown=3)
    time.sleep(0.8)  # the agent is idle and looks within its doorbell wait
    assert [m["headers"]["id"] for m in delayed(redis_client)] == [result.id]
    assert result.id not in held_ids(redis_client)
    assert redis_client.llen(QUEUE) == 0 and delay_agent.state(redis_client)["running"] == []
    status = collect(redis_client, "test", [QUEUE])
    row = next(q for q in status.queues if q.queue == QUEUE)
    assert (row.delayed, row.ready, row.in_flight) == (1, 0, 0)
    line = next(line for line in render(status).splitlines() if line.startswith(QUEUE + " "))
    assert line.split()[1:4] == ["0", "1", "0"], "0 ready, 1 delayed, 0 in flight"
    assert result.get(timeout=20) is not None
    facts = job_facts(result.id)
    assert facts["started_at"] >= sent + 3 - 0.5, "ran before it was due"
    assert facts["started_at"] <= sent + 3 + 3, "ran long after it was due"
    assert attempts(redis_client, result.id) == 1 and delayed(redis_client) == []


def test_a_retry_countdown_waits_in_redis_while_the_agent_keeps_taking_jobs(delay_agent, redis_client):
    failing = exit3.delay()
    wait_for(lambda: AsyncResult(failing.id).state == "RETRY", timeout=20, message="the first attempt to fail")
    started = time.monotonic()
    for _ in range(2):  # once a job ends, an agent holding the retry's eta takes nothing until it fires (8 s)
        echo.delay().get(timeout=6)
    assert time.monotonic() - started < 6
    assert [m["headers"]["id"] for m in delayed(redis_client)] == [failing.id]
    assert failing.id not in held_ids(redis_client)
    with pytest.raises(JobFailed):
        failing.get(timeout=30)
    assert job_facts(failing.id)["attempt"] == 2 and attempts(redis_client, failing.id) == 2


def test_a_revoked_delayed_job_never_runs(delay_agent, redis_client):
    result = echo.apply_async(countdown=2)
    wait_for(lambda: delayed(redis_client), timeout=5, message="the job to wait in the delayed set")
    result.revoke()
    wait_for(lambda: AsyncResult(result.id).state == "REVOKED", timeout=15, message="the revoke to be stored")
    wait_for(lambda: not delayed(redis_client) and result.id not in held_ids(redis_client), timeout=10,
             message="the revoked job to come due and be dropped")
    time.sleep(0.5)
    assert attempts(redis_client, result.id) == 0 and not redis_client.exists(keys.job_facts(result.id))
    assert AsyncResult(result.id).state == "REVOKED" and redis_client.llen(QUEUE) == 0


def test_a_delayed_job_that_expires_before_it_is_due_never_runs(delay_agent, redis_client):
    result = echo.apply_async(countdown=2, expires=1)
    wait_for(lambda: AsyncResult(result.id).state == "REVOKED", timeout=10, message="the expiry to be stored")
    assert attempts(redis_client, result.id) == 0 and not redis_client.exists(keys.job_facts(result.id))
    assert delayed(redis_client) == [] and result.id not in held_ids(redis_client)


def test_an_eta_job_an_agent_of_the_previous_release_held_runs_once_when_due(delay_agent, redis_client):
    # What a stopped agent of the previous release leaves behind: an eta job it held,
    # recorded as taken with a lease it no longer renews. The lease sweep puts it back
    # on its list; the take moves it to its delayed set; it runs when due.
    result = echo.apply_async(countdown=6)
    wait_for(lambda: delayed(redis_client), timeout=5, message="the job to wait in the delayed set")
    (raw, _), = redis_client.zpopmin(keys.delayed(QUEUE))
    message = json.loads(raw)
    tag, info = message["properties"]["delivery_tag"], message["properties"]["delivery_info"]
    seconds, _ = redis_client.time()
    redis_client.hset(keys.UNACKED, tag, json.dumps([message, info["exchange"], info["routing_key"]]))
    redis_client.zadd(keys.UNACKED_INDEX, {tag: seconds - 60})
    wait_for(lambda: not redis_client.hexists(keys.UNACKED, tag) and delayed(redis_client), timeout=5,
             message="the lease sweep to requeue it and the take to defer it")
    assert [m["headers"]["id"] for m in delayed(redis_client)] == [result.id]
    assert result.id not in held_ids(redis_client) and redis_client.llen(QUEUE) == 0
    assert result.get(timeout=20) is not None
    assert attempts(redis_client, result.id) == 1


def test_a_draining_agent_with_a_delayed_job_is_removed_and_the_job_runs_on_another(
        agents, celery_app, redis_client):
    first = agents.start("delay-drained", "--cpus", "1", "--memory", "512Mi", "--queues", DRAIN_QUEUE)
    result = echo.apply_async(countdown=6, queue=DRAIN_QUEUE)
    wait_for(lambda: delayed(redis_client, DRAIN_QUEUE), timeout=5, message="the job to wait in the delayed set")
    drainer = Drainer(celery_app, redis_client)
    drainer.mark(first.hostname)
    assert drainer.stop_consuming(first.hostname, (DRAIN_QUEUE,))
    assert drainer.is_empty(first.hostname, None), "the draining host holds the delayed job"
    first.stop(timeout=20)  # the provider removes the host
    drainer.unmark(first.hostname)
    second = agents.start("delay-after", "--cpus", "1", "--memory", "512Mi", "--queues", DRAIN_QUEUE)
    assert result.get(timeout=25) is not None
    assert job_facts(result.id)["host"] == second.hostname
    assert attempts(redis_client, result.id) == 1


@pytest.mark.pure
@pytest.mark.parametrize("ahead, kept", [(-5, False), (ETA_SKEW / 2, False), (ETA_SKEW * 2, True)])
def test_an_agent_runs_a_delivered_eta_job_at_once_unless_far_ahead_of_its_clock(ahead, kept):
    eta = (datetime.now(timezone.utc) + timedelta(seconds=ahead)).isoformat()
    headers = {"id": "x", "eta": eta}
    assert due_headers(headers)["eta"] == (eta if kept else None)
    assert headers["eta"] == eta, "the message's own headers (sealed, copied by hand-backs) keep their eta"
    assert due_headers({"id": "x", "eta": None})["eta"] is None
    assert due_headers({"id": "x", "eta": "not a time"})["eta"] == "not a time"  # Celery refuses it
