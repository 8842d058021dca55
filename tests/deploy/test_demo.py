"""The README's demo (`bash deploy/setup.sh demo` runs `jobyard demo`) on a clean
environment: it starts its own redis-server, builds its image from local files, and the
memory blow-up fails alone. A configured broker that does not answer is an error, not a
silent switch to another Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.services import free_port

PASSWORD = "demo-secret-pw"


def _demo_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("JOBYARD_BROKER_URL") and not name.startswith("JOBYARD_RESULT_BACKEND")}
    return {**env, **extra}


def _demo(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobyard.cli", "demo", "--jobs", "2"], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_demo_runs_on_its_own_redis_and_only_the_oom_job_fails(docker_client):
    run = _demo(_demo_env(), timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "started an embedded redis-server on 127.0.0.1:" in output
    assert "ContainerOOMKilled" in output
    assert output.count("SUCCESS") >= 2
    assert "the OOM job failed alone" in output


@pytest.mark.pure
def test_a_configured_broker_that_does_not_answer_is_an_error_without_its_password():
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    run = _demo(_demo_env(JOBYARD_BROKER_URL=url), timeout=60)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "does not answer" in output
    assert "embedded" not in output
    assert PASSWORD not in output
