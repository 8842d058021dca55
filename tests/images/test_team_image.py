"""A team image as a new user makes and runs it (issue 15), end to end.

Write a job module that imports a package from PyPI, ``jobyard image build --code
--requirements --tag --push`` it to the team's (loopback) registry, remove the local
copy, start an agent that never had the image, and call the job with ``@job``.
The image is built once for this module and every tag it made is removed again.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import sys
import time

import pytest
from click.testing import CliRunner

from jobyard.cli import main
from tasks import job
from tasks.state import job_facts
from tests.images.test_pulls import pull_events
from tests.support.services import temp_dir

TAG = os.environ.get("JOBYARD_TEST_IMAGE_TAG", "latest")
QUEUE = "teamimage"
#: The same pinned wheel as tests/images/test_build.py, so pip's cache serves both.
REQUIREMENT = "msgpack==1.1.2"
MODULE = "team_stats"
# The package is imported inside the function so the caller, which declares the job
# with @job, needs only the module and not the team's dependencies.
JOB_SOURCE = '''\
"""The team's job: summarise numbers and pack the summary with msgpack."""


def packed_summary(numbers):
    """Sum and count ``numbers``; return the msgpack bytes (hex) and where msgpack came from."""
    import msgpack
    from msgpack import _cmsgpack  # the compiled extension from the wheel

    summary = {"count": len(numbers), "sum": sum(numbers)}
    return {"packed": _cmsgpack.Packer().pack(summary).hex(), "msgpack": msgpack.__file__}
'''
#: msgpack of {"count": 3, "sum": 6}: fixmap(2), fixstr "count", 3, fixstr "sum", 6.
EXPECTED_PACKED = "82a5636f756e7403a373756d06"
PINNED = re.compile(r"^(\S+)@(sha256:[0-9a-f]{64})$", re.MULTILINE)


def _registry_config(registry) -> str:
    path = os.path.join(temp_dir("jobyard-team-regconf-"), "config.json")
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    with open(path, "w") as handle:
        json.dump({"auths": {registry.host: {"auth": auth}}}, handle)
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def code_dir():
    """The team's code: one module, as a new user writes it."""
    code = os.path.join(temp_dir("jobyard-team-code-"), "code")
    os.makedirs(code)
    with open(os.path.join(code, f"{MODULE}.py"), "w") as handle:
        handle.write(JOB_SOURCE)
    return code


@pytest.fixture(scope="module")
def team_image(registry, docker_client, code_dir):
    """Built with --requirements and pushed through the CLI; the local copy removed."""
    config = _registry_config(registry)
    requirements = os.path.join(os.path.dirname(code_dir), "requirements.txt")
    with open(requirements, "w") as handle:
        handle.write(f"{REQUIREMENT}\n")
    reference = f"{registry.host}/team/stats:{TAG}"
    result = CliRunner().invoke(main, ["image", "build", "--code", code_dir, "--requirements", requirements,
                                       "--tag", reference, "--push", "--registry-config", config],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [(name, digest)] = PINNED.findall(result.output)
    pinned = f"{name}@{digest}"
    registry.untag(docker_client, reference)
    yield {"reference": reference, "pinned": pinned, "digest": digest, "config": config}
    registry.untag(docker_client, reference)
    registry.untag(docker_client, pinned)


@pytest.fixture
def team_module(code_dir, monkeypatch):
    """The team's module imported on the caller's side, from the same directory."""
    monkeypatch.syspath_prepend(code_dir)
    yield importlib.import_module(MODULE)
    sys.modules.pop(MODULE, None)


def test_a_team_image_pushed_and_removed_runs_on_an_agent_that_never_had_it(
        team_image, team_module, agents, docker_client, redis_client):
    import docker.errors

    for reference in (team_image["reference"], team_image["pinned"]):
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(reference)
    agents.start("team", "--cpus", "1", "--memory", "1Gi", "--queues", QUEUE,
                 "--registry-config", team_image["config"], "--pull-timeout", "60")
    packed_summary = job(image=team_image["pinned"], cpus=0.5, memory="128Mi", queue=QUEUE,
                         timeout=60)(team_module.packed_summary)
    since = time.time()
    result = packed_summary.delay([1, 2, 3])
    value = result.get(timeout=60)
    assert value == {"packed": EXPECTED_PACKED, "msgpack": "/app/deps/msgpack/__init__.py"}
    assert job_facts(result.id, redis_client)["image_digest"] == team_image["digest"]
    assert len(pull_events(docker_client, team_image["pinned"].split("@")[0], since)) == 1
