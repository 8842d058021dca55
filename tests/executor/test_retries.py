"""Retries by failure class, more memory after an OOM, dead letters and their CLI."""

import json

import pytest
from celery.result import AsyncResult
from click.testing import CliRunner

from jobyard.cli import main
from tasks import command_job, keys
from tasks.errors import JobFailed
from tasks.state import job_facts
from tests.conftest import BUSYBOX_IMAGE, wait_for

MI = 1024**2


@pytest.fixture(scope="module")
def retry_agent(agents):
    return agents.start("retry", "--cpus", "2", "--memory", "1Gi", "--queues", "retry")


def _cli(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_oom_retries_with_more_memory(retry_agent):
    from sample_jobs import balloon

    result = balloon.apply_async((100,), memory="64Mi", retries=2, retry_on=["oom"], retry_memory_factor=2,
                                 retry_delay=0.2, queue="retry")
    assert result.get(timeout=90) == 100
    facts = job_facts(result.id)
    assert facts["attempt"] == 2
    assert facts["memory_limit"] == 128 * MI


def test_retry_only_for_listed_exit_codes_then_dead_letter(retry_agent):
    listed = command_job("tools.exit3", image=BUSYBOX_IMAGE, command=["sh", "-c", "exit 3"], memory="16Mi",
                         retries=2, retry_on=[3], retry_delay=0.1, queue="retry")
    unlisted = command_job("tools.exit4", image=BUSYBOX_IMAGE, command=["sh", "-c", "exit 4"], memory="16Mi",
                           retries=2, retry_on=[3], retry_delay=0.1, queue="retry")
    a, b = listed.delay(), unlisted.delay()
    with pytest.raises(JobFailed):
        a.get(timeout=60)
    with pytest.raises(JobFailed):
        b.get(timeout=60)
    assert job_facts(a.id)["attempt"] == 3
    assert job_facts(b.id)["attempt"] == 1
    dead = {r["task_id"]: r for r in json.loads(_cli("dead", "list", "--json"))}
    assert dead[a.id]["reason"] == "failed" and dead[a.id]["attempt"] == 3
    assert "no retries left" in dead[a.id]["why"]
    assert "not in retry_on" in dead[b.id]["why"]


def test_job_reads_its_attempt_and_requeue_from_dead_letters_runs_it_again(retry_agent):
    from sample_jobs import fail_before_attempt

    result = fail_before_attempt.apply_async((3,), retries=1, retry_delay=0.1, queue="retry")
    with pytest.raises(JobFailed) as info:
        result.get(timeout=60)
    assert "attempt 2 fails on purpose" in str(info.value)
    table = _cli("dead", "list")
    assert result.id in table and "fail_before_attempt" in table
    assert "requeued 1" in _cli("dead", "requeue", result.id)
    wait_for(lambda: AsyncResult(result.id).state == "SUCCESS", timeout=60, message="requeued job succeeded")
    assert AsyncResult(result.id).get(timeout=5) == 3
    assert result.id not in _cli("dead", "list")


def test_purge_empties_the_dead_letter_store(retry_agent):
    fail = command_job("tools.fail1", image=BUSYBOX_IMAGE, command=["false"], memory="16Mi", queue="retry")
    result = fail.delay()
    with pytest.raises(JobFailed):
        result.get(timeout=60)
    assert result.id in _cli("dead", "list")
    assert "purged" in _cli("dead", "purge", "--all")
    assert json.loads(_cli("dead", "list", "--json")) == []


def test_a_delivery_older_than_a_sent_retry_is_dropped(retry_agent, redis_client):
    from sample_jobs import fail_before_attempt

    result = fail_before_attempt.apply_async((2,), retries=1, retry_delay=0.1, queue="retry")
    assert result.get(timeout=60) == 2
    # What an agent killed between Celery's retry publish and its ack leaves behind:
    # the first delivery (retries=0) comes back after the retry already ran. A lease
    # sweep re-pushes it raw; republishing stands in for that once the publish marker
    # (which makes a repeated publish a no-op) is gone.
    redis_client.delete(f"jobyard:published:{result.id}:0")
    fail_before_attempt.apply_async((2,), retries=1, retry_delay=0.1, queue="retry", task_id=result.id)
    wait_for(lambda: "dropping a stale delivery" in retry_agent.log(), timeout=30, message="stale delivery dropped")
    assert redis_client.get(f"jobyard:attempts:{result.id}") == "2", "the stale delivery must not run"
    assert AsyncResult(result.id).get(timeout=5) == 2


def test_a_delivery_of_a_job_that_already_ended_is_dropped(retry_agent, redis_client):
    from sample_jobs import add

    result = add.apply_async((2, 3), queue="retry")
    assert result.get(timeout=60) == 5
    # What an agent killed after storing the outcome but before settling the message
    # leaves behind: the lease sweep delivers the job again (stood in for as above).
    redis_client.delete(f"jobyard:published:{result.id}:0")
    add.apply_async((2, 3), queue="retry", task_id=result.id)
    wait_for(lambda: f"{result.id}]: dropping a delivery of a job that already ended (SUCCESS)" in retry_agent.log(),
             timeout=30, message="the delivery of an ended job dropped")
    assert redis_client.get(f"jobyard:attempts:{result.id}") == "1", "the ended job must not run again"
    assert AsyncResult(result.id).get(timeout=5) == 5


def _redeliver(job, result, redis_client, *args, **options):
    """Publish ``result``'s job again under its id, as a lease sweep would deliver it."""
    redis_client.delete(f"jobyard:published:{result.id}:0")
    job.apply_async(args, task_id=result.id, **options)


def _dropped(agent, task_id, state):
    return f"{task_id}]: dropping a delivery of a job that already ended ({state})" in agent.log()


def test_a_redelivery_of_a_failed_job_is_dropped_and_stays_failed(retry_agent, redis_client):
    from sample_jobs import fail_before_attempt

    result = fail_before_attempt.apply_async((2,), queue="retry")
    with pytest.raises(JobFailed):
        result.get(timeout=60)
    _redeliver(fail_before_attempt, result, redis_client, 2, queue="retry")  # would succeed if it ran
    wait_for(lambda: _dropped(retry_agent, result.id, "FAILURE"), timeout=30, message="the failed job's delivery dropped")
    assert redis_client.get(f"jobyard:attempts:{result.id}") == "1", "the failed job must not run again"
    assert AsyncResult(result.id).state == "FAILURE"


def test_a_redelivery_of_a_revoked_job_is_dropped_and_stays_revoked(retry_agent, redis_client, celery_app):
    from celery.utils import uuid
    from sample_jobs import add

    task_id = uuid()
    celery_app.backend.mark_as_revoked(task_id, "revoked")  # what an agent that revoked it stored
    add.apply_async((2, 3), task_id=task_id, queue="retry")
    wait_for(lambda: _dropped(retry_agent, task_id, "REVOKED"), timeout=30, message="the revoked job's delivery dropped")
    assert redis_client.get(f"jobyard:attempts:{task_id}") is None, "the revoked job must not run"
    assert AsyncResult(task_id).state == "REVOKED"


def test_a_stale_delivery_is_dropped_without_writing_started(retry_agent, redis_client):
    fail = command_job("tools.fail_twice", image=BUSYBOX_IMAGE, command=["false"], memory="16Mi", retries=1,
                       retry_on=["failed"], retry_delay=0.1, queue="retry")
    result = fail.delay()
    with pytest.raises(JobFailed):
        result.get(timeout=60)
    assert redis_client.get(f"jobyard:retried:{result.id}") == "1"
    _redeliver(fail, result, redis_client, queue="retry")  # the first delivery, back after its retry ran
    wait_for(lambda: f"{result.id}]: dropping a stale delivery" in retry_agent.log(), timeout=30,
             message="stale delivery dropped")
    assert AsyncResult(result.id).state == "FAILURE"
    assert redis_client.get(f"jobyard:attempts:{result.id}") == "2"


def test_a_retry_the_broker_refuses_ends_typed_and_leaves_no_mark(retry_agent, redis_client):
    from tasks.errors import BackendError

    slow_fail = command_job("tools.slow_fail", image=BUSYBOX_IMAGE, command=["sh", "-c", "sleep 2; exit 1"],
                            memory="16Mi", retries=1, retry_on=["failed"], retry_delay=0.1, queue="retry")
    result = slow_fail.delay()
    wait_for(lambda: job_facts(result.id).get("container_id"), timeout=30, message="job running")
    # The queue's key and its delayed set's (the retry's countdown sends it there), the
    # wrong type: the retry's publish fails.
    refused = ("retry", keys.delayed("retry"))
    for key in refused:
        redis_client.set(key, "refused")
    try:
        with pytest.raises(BackendError, match="its retry could not be sent"):
            result.get(timeout=60)
    finally:
        redis_client.delete(*refused)
    assert redis_client.get(f"jobyard:retried:{result.id}") is None, "a retry mark without its message"
    assert result.id in _cli("dead", "list")


def test_a_stale_delivery_dropped_beside_its_running_retry_leaves_the_retry_leased(retry_agent, redis_client):
    # An agent killed between a retry's publish and its ack leaves the first delivery to
    # its lease; it can come back to the agent running the retry. Dropping it must settle
    # that delivery only: the running retry's lease must still be renewed, or the sweep
    # delivers the retry again and it runs twice.
    import uuid

    from sample_jobs import sleep_for
    from tasks import app
    from tasks.names import RUN_TASK, SPEC_HEADER

    task_id = str(uuid.uuid4())
    spec = sleep_for.spec.with_overrides(queue="retry")

    def publish(retries: int) -> None:
        app.send_task(RUN_TASK, (20,), task_id=task_id, retries=retries, queue="retry", shadow=spec.name,
                      headers={SPEC_HEADER: spec.to_dict()})

    publish(1)  # the retry: it runs for 20 s
    wait_for(lambda: job_facts(task_id).get("container_id"), timeout=30, message="the retry running")
    publish(0)  # the first delivery, back from its lease
    wait_for(lambda: f"{task_id}]: dropping a stale delivery" in retry_agent.log(), timeout=30,
             message="the stale delivery dropped")
    assert AsyncResult(task_id).get(timeout=40) == 20
    assert redis_client.get(f"jobyard:attempts:{task_id}") == "1", "the running retry was delivered and run again"
