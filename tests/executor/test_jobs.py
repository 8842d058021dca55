"""End to end on a real agent: real Redis, real Docker, real containers."""

import time

import pytest
from celery import chain, group

from tasks import command_job
from tasks.errors import ContainerOOMKilled, ImageNotFound, JobFailed, JobRejected, JobTimeout
from tasks.state import job_facts, job_logs
from tests.conftest import BUSYBOX_IMAGE, SESSION, wait_for


def test_function_job_returns_its_value_from_a_container(agent, docker_client):
    from sample_jobs import add

    result = add.delay(2, 3)
    assert result.get(timeout=30) == 5
    facts = job_facts(result.id)
    assert facts["host"] == agent.hostname and facts["state"] == "succeeded"
    assert facts["exit_code"] == 0 and facts["container_id"]
    assert facts["memory_limit"] == 64 * 1024**2
    assert "adding 2 and 3" in job_logs(result.id)
    assert f"Task sample_jobs.add[{result.id}]" in agent.log(), "the job must appear under its own name"


def test_prints_cannot_corrupt_the_result(agent):
    from sample_jobs import noisy

    assert noisy.delay({"real": [1, 2]}).get(timeout=30) == {"real": [1, 2]}


def test_oom_kills_only_that_job_and_the_agent_goes_on(agent, docker_client):
    from sample_jobs import balloon, sleep_for

    neighbour = sleep_for.delay(2)
    time.sleep(0.3)
    hog = balloon.apply_async((300,), memory="64Mi")
    with pytest.raises(ContainerOOMKilled) as info:
        hog.get(timeout=60)
    assert info.value.exit_code == 137
    assert info.value.memory_limit == 64 * 1024**2
    assert info.value.peak_memory >= 60 * 1024**2
    assert "64Mi" in str(info.value)
    assert neighbour.get(timeout=30) == 2
    assert agent.alive
    from sample_jobs import add
    assert add.delay(1, 1).get(timeout=30) == 2, "the agent must take the next job"
    assert not docker_client.containers.list(all=True, filters={"label": f"jobyard.job={hog.id}"})


def test_a_job_that_fits_its_limit_is_not_oom(agent):
    from sample_jobs import balloon

    result = balloon.apply_async((100,), memory="256Mi")
    assert result.get(timeout=60) == 100
    assert job_facts(result.id)["peak_memory"] >= 100 * 1024**2, "peak memory comes from the cgroup"


def test_timeout_kills_the_container_within_two_seconds(agent, docker_client):
    from sample_jobs import sleep_for

    started = time.monotonic()
    result = sleep_for.apply_async((30,), timeout=2)
    with pytest.raises(JobTimeout):
        result.get(timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 2 + 1.0, f"JobTimeout after {elapsed:.1f}s"  # + container start slack
    assert not docker_client.containers.list(all=True, filters={"label": f"jobyard.job={result.id}"})


def test_exception_carries_remote_type_and_traceback(agent):
    from sample_jobs import fail_with

    with pytest.raises(JobFailed) as info:
        fail_with.delay("no good").get(timeout=30)
    error = info.value
    assert error.exc_type == "ValueError" and error.remote_message == "no good"
    assert "sample_jobs.py" in error.traceback and "raise ValueError(message)" in error.traceback
    assert error.exit_code == 1


def test_command_job_runs_an_argv_with_parameters(agent):
    echo = command_job("tools.echo", image=BUSYBOX_IMAGE, command=["echo", "{msg}"], memory="32Mi")
    result = echo.delay(msg="hello; rm -rf / $(id)")
    assert result.get(timeout=30)["output"].strip() == "hello; rm -rf / $(id)"


def test_command_job_nonzero_exit_carries_code_and_log_tail(agent):
    fail = command_job("tools.fail", image=BUSYBOX_IMAGE,
                       command=["sh", "-c", "echo first; echo last words; exit 3"], memory="32Mi")
    with pytest.raises(JobFailed) as info:
        fail.delay().get(timeout=30)
    assert info.value.exit_code == 3
    assert "last words" in info.value.log_tail
    assert "code 3" in str(info.value)


def test_missing_image_is_image_not_found(agent):
    ghost = command_job("tools.ghost", image="jobyard-test/does-not-exist:1", command=["true"], pull="never")
    with pytest.raises(ImageNotFound) as info:
        ghost.delay().get(timeout=30)
    assert "does-not-exist" in str(info.value)


def test_job_larger_than_the_host_is_rejected(agent):
    from sample_jobs import add

    with pytest.raises(JobRejected) as info:
        add.apply_async((1, 2), memory="64Gi").get(timeout=30)
    assert "memory" in str(info.value)


def test_revoke_terminate_stops_the_container(agent, docker_client):
    from sample_jobs import sleep_for

    result = sleep_for.delay(60)
    label = {"label": f"jobyard.job={result.id}"}
    wait_for(lambda: docker_client.containers.list(filters=label), timeout=20, message="job container")
    result.revoke(terminate=True)
    wait_for(lambda: not docker_client.containers.list(all=True, filters=label), timeout=15,
             message="container removed after revoke")
    with pytest.raises(Exception) as info:
        result.get(timeout=15)
    assert "revoked" in str(info.value).lower() or type(info.value).__name__ in ("Revoked", "TaskRevokedError")


def test_chain_and_group_work_over_container_jobs(agent):
    from sample_jobs import add

    assert chain(add.s(1, 2), add.s(10), add.s(100)).apply_async().get(timeout=60) == 113
    assert group(add.s(i, i) for i in range(4)).apply_async().get(timeout=60) == [0, 2, 4, 6]


def test_agent_reaps_containers_left_by_an_earlier_run(agents, docker_client, busybox_image):
    name = f"{SESSION}-reap"
    leftover = docker_client.containers.create(busybox_image, ["sleep", "300"],
                                               labels={"jobyard.agent": f"{name}-{len(agents.agents)}",
                                                       "jobyard.job": "left-over"})
    agents.start("reap", "--cpus", "1", "--memory", "512Mi")
    wait_for(lambda: not docker_client.containers.list(all=True, filters={"id": leftover.id}),
             timeout=15, message="leftover container reaped")
