"""Flower, started for real, shows every job under its own name with its typed end."""

import os
import subprocess
import sys

import pytest
import requests
from click.testing import CliRunner

from jobyard.cli import main
from tests.conftest import PYTHON_IMAGE, wait_for
from tests.observability.conftest import flower_tasks


def test_the_api_lists_jobs_by_name_state_and_typed_reason(flower_server, batch, obs_agent):
    def all_ended():
        tasks = flower_tasks(flower_server)
        wanted = (batch.success.id, batch.oom.id, batch.timeout.id)
        return tasks if all(tasks.get(i, {}).get("state") in ("SUCCESS", "FAILURE") for i in wanted) else None

    tasks = wait_for(all_ended, timeout=15, interval=0.3, message="flower to see all three jobs end")
    success, oom, timeout = tasks[batch.success.id], tasks[batch.oom.id], tasks[batch.timeout.id]

    assert success["name"] == "sample_jobs.add" and success["state"] == "SUCCESS"
    assert success["args"] == "(20, 22)" and success["result"] == "42"
    assert success["worker"] == f"jobyard@{obs_agent.hostname}" and success["runtime"] > 0

    assert oom["name"] == "sample_jobs.balloon" and oom["state"] == "FAILURE"
    assert oom["exception"].startswith("ContainerOOMKilled(")
    assert "memory limit 64Mi exceeded" in oom["exception"] and "exit code 137" in oom["exception"]
    assert "'container_id': '" in oom["exception"] and "'peak_memory': " in oom["exception"]

    assert timeout["name"] == "sample_jobs.sleep_for" and timeout["state"] == "FAILURE"
    assert timeout["exception"].startswith("JobTimeout(") and "timed out after 1s" in timeout["exception"]


def test_the_api_and_ui_refuse_requests_without_the_password(flower_server, batch):
    assert requests.get(f"{flower_server.url}/api/tasks", timeout=10).status_code == 401
    assert requests.get(f"{flower_server.url}/tasks", timeout=10).status_code == 401
    wrong = (flower_server.user, "not-the-password")
    assert requests.get(f"{flower_server.url}/api/tasks", auth=wrong, timeout=10).status_code == 401


def test_a_task_page_shows_the_container_facts(flower_server, batch):
    from tasks.state import job_facts

    for result in (batch.success, batch.oom):
        facts = job_facts(result.id)
        page = requests.get(f"{flower_server.url}/task/{result.id}", auth=flower_server.auth, timeout=10)
        assert page.status_code == 200
        assert "<dt>Container</dt>" in page.text
        assert f"container {facts['container_id'][:12]}" in page.text
        assert f"image={PYTHON_IMAGE}" in page.text
        assert "memory_limit=64Mi" in page.text and f"attempt={facts['attempt']}" in page.text
    oom_page = requests.get(f"{flower_server.url}/task/{batch.oom.id}", auth=flower_server.auth, timeout=10).text
    assert "exit_code=137" in oom_page and "oom_killed=true" in oom_page and "peak_memory=64Mi" in oom_page


def test_credentials_never_reach_the_log_or_the_process_list(flower_server, batch):
    assert flower_server.password not in flower_server.log()
    with open(f"/proc/{flower_server.process.pid}/cmdline", "rb") as handle:
        assert flower_server.password.encode() not in handle.read()


def test_on_loopback_without_credentials_the_ui_is_open_and_the_api_off_unless_asked(redis_server):
    from tests.observability.conftest import start_flower

    closed = start_flower(redis_server.url)
    try:
        assert requests.get(f"{closed.url}/tasks", timeout=10).status_code == 200
        api = requests.get(f"{closed.url}/api/workers", timeout=10)
        assert api.status_code == 401 and "FLOWER_UNAUTHENTICATED_API" in api.text
        assert "HTTP API off (set JOBYARD_FLOWER_USER/JOBYARD_FLOWER_PASSWORD to enable it)" in closed.log()
    finally:
        closed.stop()
    opened = start_flower(redis_server.url, "", "", "--unauthenticated-api")
    try:
        assert requests.get(f"{opened.url}/api/workers", timeout=10).status_code == 200
    finally:
        opened.stop()


def test_flower_refuses_other_addresses_without_credentials(redis_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_FLOWER_")}
    for address in ("0.0.0.0", "", "192.0.2.1"):
        result = CliRunner().invoke(main, ["flower", "--address", address, "--port", "1"], env=env)
        assert result.exit_code != 0
        assert "without authentication" in result.output
        assert f"refusing to serve Flower on {address or 'all interfaces'}" in result.output
    result = CliRunner().invoke(main, ["flower", "--address", "0.0.0.0", "--unauthenticated-api"],
                                env={"JOBYARD_FLOWER_USER": "u", "JOBYARD_FLOWER_PASSWORD": "p"})
    assert result.exit_code != 0 and "only allowed on a loopback address" in result.output


def test_flower_refuses_a_half_configured_login(redis_server):
    env = {"JOBYARD_FLOWER_USER": "someone", "JOBYARD_FLOWER_PASSWORD": ""}
    result = CliRunner().invoke(main, ["flower", "--port", "1"], env=env)
    assert result.exit_code != 0 and "set both" in result.output


def test_basic_auth_file_entries_must_be_user_colon_password(tmp_path):
    from jobyard.flower import load_credentials

    path = tmp_path / "users"
    path.write_text("# operators\nalice:s3cr:et\nbob:pw\n")
    path.chmod(0o600)
    assert load_credentials(str(path), environ={}) == ("alice:s3cr:et", "bob:pw")
    path.write_text("no-colon-here\n")
    result = subprocess.run([sys.executable, "-m", "jobyard.cli", "flower", "--basic-auth-file", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "expected user:password" in result.stderr
    assert "no-colon-here" not in result.stderr, "a malformed entry may be a password: never echo it"


def flower_task_info(flower, task_id: str) -> dict:
    """Flower's record of one task, built from the events it received."""
    def failed():
        response = requests.get(f"{flower.url}/api/task/info/{task_id}", auth=flower.auth, timeout=10)
        return response.json() if response.status_code == 200 and response.json().get("traceback") else None

    return wait_for(failed, timeout=15, interval=0.3, message=f"flower to see {task_id} fail")


def flower_stored_traceback(flower, task_id: str) -> str:
    """The traceback Flower reads from the result backend for one task."""
    response = requests.get(f"{flower.url}/api/task/result/{task_id}", auth=flower.auth, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["traceback"]


def test_a_raising_jobs_traceback_is_its_own_not_the_agents(flower_server, batch):
    for traceback in (flower_task_info(flower_server, batch.raised.id)["traceback"],
                      flower_stored_traceback(flower_server, batch.raised.id), batch.raised.traceback):
        assert 'sample_jobs.py", line' in traceback and "in fail_with" in traceback
        assert traceback.rstrip().endswith("ValueError: bad input")
        assert "celery/app/trace.py" not in traceback and "executor/" not in traceback
    page = requests.get(f"{flower_server.url}/task/{batch.raised.id}", auth=flower_server.auth, timeout=10).text
    assert "in fail_with" in page and "ValueError: bad input" in page and "celery/app/trace.py" not in page


def test_a_container_verdict_is_a_statement_of_facts_not_a_stack(flower_server, batch):
    from tasks.state import job_facts

    facts = job_facts(batch.oom.id)
    expected = (f"ContainerOOMKilled: memory limit 64Mi exceeded (peak 64Mi, exit code 137) in container "
                f"{facts['container_id'][:12]} of image {facts['image']} on host {facts['host']}, "
                f"attempt {facts['attempt']}")
    for traceback in (flower_task_info(flower_server, batch.oom.id)["traceback"],
                      flower_stored_traceback(flower_server, batch.oom.id), batch.oom.traceback):
        assert traceback == expected
    timeout = batch.timeout.traceback
    assert timeout.startswith("JobTimeout: sample_jobs.sleep_for timed out after 1s") and "File " not in timeout


def test_the_caller_still_gets_the_typed_error_with_its_facts(batch):
    from tasks.errors import ContainerOOMKilled, JobFailed

    with pytest.raises(JobFailed) as raised:
        batch.raised.get(timeout=10)
    assert str(raised.value) == "sample_jobs.fail_with raised: ValueError: bad input"
    assert raised.value.exc_type == "ValueError" and "in fail_with" in raised.value.details["traceback"]
    with pytest.raises(ContainerOOMKilled) as oom:
        batch.oom.get(timeout=10)
    assert oom.value.exit_code == 137 and "memory limit 64Mi exceeded" in str(oom.value)


def test_a_flower_that_missed_a_jobs_start_still_shows_its_name_and_arguments(redis_server, redis_client, obs_agent):
    # Flower learns a job's name and arguments from task-received; one started (or whose
    # event receiver reconnected, as after a broker failover) while the job ran misses it.
    from sample_jobs import sleep_for

    from tasks import keys
    from tests.observability.conftest import start_flower

    result = sleep_for.delay(4)
    wait_for(lambda: redis_client.exists(keys.attempts(result.id)), timeout=30, message="the job to start")
    late = start_flower(redis_server.url, "operator", "pw-late")
    try:
        assert result.get(timeout=60) == 4

        def seen():
            task = flower_tasks(late).get(result.id, {})
            return task if task.get("state") == "SUCCESS" else None

        task = wait_for(seen, timeout=15, interval=0.3, message="the late flower to see the job end")
        assert task["name"] == "sample_jobs.sleep_for" and task["args"] == "(4,)", task
        assert task["worker"] == f"jobyard@{obs_agent.hostname}"
    finally:
        late.stop()
