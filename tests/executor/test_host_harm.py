"""No caller and no job can harm the host (issue 12, items 1 and 2).

1. A task id never walks out of the state directory: ids are checked at submit and
   at the agent, and job directories and container names are derived from a hash.
2. A job puts at most ``--max-job-file`` bytes on the host: its out directory is not
   writable, its one result file is pre-created, and its container has an fsize limit.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid

import pytest
from celery import chain, group
from celery.result import AsyncResult
from click.testing import CliRunner

from tasks import command_job, keys
from tasks.errors import InvalidJobSpec, JobFailed
from tasks.spec import COMMAND, JobSpec
from tests.conftest import BUSYBOX_IMAGE, wait_for
from tests.reliability.messages import call_body, envelope, run_headers

MIB = 1024 * 1024
#: The agent's default --max-job-file.
DEFAULT_BOUND = 64 * MIB
#: Besides its result file, a job dir holds the call and a few directory entries.
SLACK = 1 * MIB
NASTY_IDS = ["../x", "a/../../b", "../../victim", "/etc", "x" * 128, "x" * 129, "", ".hidden", ".", "..",
             "caf\u00e9/\u2028", "a\x00b", "a" * 5000]
#: Docker's container name rule (daemon/names), and the length it is kept to here.
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")


def _spec() -> JobSpec:
    return JobSpec.build(name="harm.derive", kind=COMMAND, command=["true"], image=BUSYBOX_IMAGE)


def _tree(root: str) -> set[str]:
    return {os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files}


@pytest.mark.parametrize("task_id", NASTY_IDS)
def test_job_dir_stays_inside_jobs_dir(task_id, tmp_path):
    from executor.container import ContainerLauncher, JobCall

    state = tmp_path / "state"
    launcher = ContainerLauncher(None, str(state), "harm-agent")
    before = _tree(str(tmp_path))
    jobs = os.path.realpath(launcher.jobs_dir)
    made = {launcher.prepare(JobCall(task_id, _spec(), (), {}, attempt=n)) for n in (1, 2)}
    assert len(made) == 2, "attempts must not share a directory"
    for job_dir in made:
        assert os.path.dirname(os.path.realpath(job_dir)) == jobs, job_dir
    outside = {p for p in _tree(str(tmp_path)) - before if not p.startswith(launcher.jobs_dir + os.sep)}
    assert not outside, f"written outside jobs_dir: {outside}"


@pytest.mark.parametrize("task_id", NASTY_IDS)
def test_container_name_is_valid_and_label_keeps_the_id(task_id, tmp_path, docker_client):
    from executor.container import LABEL_JOB, ContainerLauncher, JobCall

    launcher = ContainerLauncher(docker_client, str(tmp_path), "harm-agent")
    call = JobCall(task_id, _spec(), (), {}, attempt=3)
    options = launcher.container_options(call, str(tmp_path / "job"))
    assert CONTAINER_NAME.fullmatch(options["name"]), options["name"]
    assert options["labels"][LABEL_JOB] == task_id
    other = launcher.container_options(JobCall(task_id, _spec(), (), {}, attempt=4), str(tmp_path / "job"))
    assert other["name"] != options["name"]


def _queued(redis_client, queue: str) -> int:
    return sum(redis_client.llen(k) for k in redis_client.keys(f"{queue}*") if redis_client.type(k) == "list")


def test_crafted_task_id_is_refused_at_submit_and_nothing_is_queued(redis_client, celery_app):
    from sample_jobs import add

    queue = f"harm-submit-{uuid.uuid4().hex[:8]}"
    echo = command_job("harm.echo", image=BUSYBOX_IMAGE, command=["echo", "hi"], queue=queue)
    bad = "../../victim"
    sends = {
        "apply_async": lambda: add.apply_async((1, 2), queue=queue, task_id=bad),
        "command_job": lambda: echo.apply_async(task_id=bad),
        "signature": lambda: add.s(1, 2).set(queue=queue, task_id=bad).apply_async(),
        "options": lambda: add.options(queue=queue).apply_async((1, 2), task_id="a/../../b"),
        "chain step": lambda: chain(add.s(1, 2).set(queue=queue),
                                    add.s(3).set(queue=queue, task_id=bad)).apply_async(),
        # Celery sends a group's members one by one: a bad one refused goes unsent.
        "group member": lambda: group(add.s(3, 4).set(queue=queue, task_id=".hidden"),
                                      add.s(1, 2).set(queue=queue)).apply_async(),
        "nul byte": lambda: add.apply_async((1, 2), queue=queue, task_id="a\x00b"),
        "too long": lambda: add.apply_async((1, 2), queue=queue, task_id="x" * 129),
    }
    for how, send in sends.items():
        with pytest.raises(InvalidJobSpec) as info:
            send()
        assert info.value.field == "task_id", how
        assert _queued(redis_client, queue) == 0, f"{how}: a refused submit reached the queue"


INTAKE_QUEUE = "harm-intake"


@pytest.fixture(scope="module")
def harm_agent(agents):
    return agents.start("harm", "--cpus", "4", "--memory", "2Gi", "--queues", f"{INTAKE_QUEUE},harm")


def test_walking_task_id_pushed_into_redis_is_rejected_and_touches_nothing(harm_agent, agents, redis_client,
                                                                           celery_app):
    # jobs_dir is <state root>/<host>/jobs, so "../../victim" + "-<attempt>" lands here:
    sentinel = os.path.join(agents.state_root, "victim-1")
    os.makedirs(sentinel, exist_ok=True)
    with open(os.path.join(sentinel, "keep"), "w") as handle:
        handle.write("host data")
    task_id = "../../victim"
    before = redis_client.llen(keys.rejected())
    redis_client.lpush(INTAKE_QUEUE, envelope(call_body(), run_headers(task_id), queue=INTAKE_QUEUE))

    result = AsyncResult(task_id, app=celery_app)
    wait_for(result.ready, timeout=60, message="the crafted message to end")
    assert os.path.isfile(os.path.join(sentinel, "keep")), "the agent touched a directory outside its state"
    assert isinstance(result.result, InvalidJobSpec) and result.result.field == "task_id", repr(result.result)
    assert redis_client.llen(keys.rejected()) > before
    refusal = json.loads(redis_client.lindex(keys.rejected(), 0))
    assert "task id" in refusal["reason"] and refusal["queue"] == INTAKE_QUEUE, refusal
    assert not redis_client.exists(keys.job_facts(task_id)), "the agent must never run it"
    assert harm_agent.alive


def _job_dir_sizes(jobs_dir: str) -> dict[str, int]:
    sizes = {}
    for name in os.listdir(jobs_dir) if os.path.isdir(jobs_dir) else ():
        total = 0
        for directory, _dirs, files in os.walk(os.path.join(jobs_dir, name)):
            for file_name in files:
                try:
                    info = os.lstat(os.path.join(directory, file_name))
                except FileNotFoundError:
                    continue
                total += max(info.st_size, info.st_blocks * 512)
        sizes[name] = total
    return sizes


class Watch(threading.Thread):
    """Record the largest size each job directory under ``jobs_dir`` reaches."""

    def __init__(self, jobs_dir: str):
        super().__init__(daemon=True)
        self.jobs_dir, self.peak, self.done = jobs_dir, {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name, size in _job_dir_sizes(self.jobs_dir).items():
                self.peak[name] = max(self.peak.get(name, 0), size)
            time.sleep(0.05)


def test_job_cannot_write_more_than_the_bound_to_the_host(harm_agent, agents):
    from escape_jobs import neighbour
    from harm_jobs import fill

    jobs_dir = os.path.join(agents.state_root, harm_agent.hostname, "jobs")
    dd = command_job("harm.dd", image=BUSYBOX_IMAGE, memory="64Mi", cpus=0.25, queue="harm", timeout=120,
                     command=["dd", "if=/dev/zero", "of=/jobyard/out/result.json", "bs=1M", "count=1024"])
    watch = Watch(jobs_dir)
    watch.start()
    steady = neighbour.apply_async((6, 20000), queue="harm")
    bad = [fill.apply_async(("/jobyard/out/big.bin", 1024), queue="harm"),
           fill.apply_async(("/jobyard/out/result.json", 1024), queue="harm"),
           dd.apply_async()]
    try:
        ends = [result.get(timeout=120, propagate=False) for result in bad]
        assert steady.get(timeout=60) == sum(i * i for i in range(20000))
    finally:
        watch.done.set()
        watch.join(5)
    assert watch.peak, "never saw a job directory"
    assert max(watch.peak.values()) <= DEFAULT_BOUND + SLACK, {k[:12]: v // MIB for k, v in watch.peak.items()}
    assert all(isinstance(end, JobFailed) for end in ends), ends
    wait_for(lambda: not _job_dir_sizes(jobs_dir), timeout=10, message="job directories to be removed")
    assert harm_agent.alive


def test_result_over_the_file_limit_is_a_short_failure(agents):
    from harm_jobs import big_value

    small = agents.start("harm-small", "--cpus", "1", "--memory", "1Gi", "--queues", "harm-small",
                         "--max-job-file", "18Mi")
    with pytest.raises(JobFailed) as info:
        big_value.apply_async((20,), queue="harm-small").get(timeout=60)
    assert info.value.exc_type == "ResultTooLarge", info.value.details
    assert small.alive


def test_max_job_file_below_result_cap_is_refused():
    from jobyard.agent_command import agent
    from executor.container import MAX_RESULT_BYTES

    too_small = f"{MAX_RESULT_BYTES + MIB - 1}"
    outcome = CliRunner().invoke(agent, ["--max-job-file", too_small])
    assert outcome.exit_code == 2, outcome.output
    assert "--max-job-file" in outcome.output and "result cap" in outcome.output, outcome.output
