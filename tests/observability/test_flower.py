"""Flower, started for real, shows every job under its own name with its typed end."""

import os
import subprocess
import sys

import requests
from click.testing import CliRunner

from jobyard.cli import main
from tests.conftest import wait_for


def flower_tasks(flower) -> dict:
    response = requests.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


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
        assert "image=jobyard-test/python:latest" in page.text
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
