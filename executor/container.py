"""Run one job in one hardened, cgroup-limited container through the Docker SDK.

This module is the only place that drives the Docker Engine about jobs (create,
start, wait, collect, remove; :mod:`.results` reads back what a container produced).
Docker's exceptions are translated here, once, into :mod:`tasks.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.types import LogConfig, Mount, Ulimit

from tasks.config import DEFAULT_MAX_PAYLOAD
from tasks.errors import BackendError, ImageNotFound
from tasks.names import JOB_LABEL as LABEL_JOB
from tasks.spec import PYTHON, JobSpec, render_command

from .bounds import LOG_TAIL_BYTES, tail
from .cgroup import PeakMemory
from .errors import EngineUnavailable, InvalidAgentConfig
from .results import RESULT_FILE, create_result_file, job_result, read_logs

log = logging.getLogger(__name__)

LABEL_AGENT = "jobyard.agent"
LABEL_NAME = "jobyard.name"
LABEL_ATTEMPT = "jobyard.attempt"

#: The uid:gid every job runs as unless its image says otherwise (never root).
JOB_USER = "10001:10001"
RUNNER_DIR = "/jobyard/runner"
IN_DIR = "/jobyard/in"
OUT_DIR = "/jobyard/out"
#: How often the supervisor wakes while a job runs (revocation, peak memory).
POLL_SECONDS = 0.25
#: Largest result.json the agent reads back unless told otherwise (``JOBYARD_MAX_RESULT``).
MAX_RESULT_BYTES = DEFAULT_MAX_PAYLOAD
#: The default size limit (fsize) of every file a job writes, so of what it puts on the host.
DEFAULT_MAX_JOB_FILE = 64 * 1024**2
#: Room the file limit needs above the result cap: the result's envelope, a failure record.
JOB_FILE_SLACK = 1024**2
#: Docker's own log file cap per container, so huge output cannot fill the disk.
LOG_DRIVER = LogConfig(type="json-file", config={"max-size": "8m", "max-file": "1"})

_DOCKER_DOWN = (requests.exceptions.ConnectionError, docker.errors.DockerException)
#: Errors meaning the engine itself is unreachable (not that it refused a request).
_ENGINE_DOWN = (requests.exceptions.ConnectionError,)


@dataclass
class JobCall:
    """One attempt of a job: its spec and the call's arguments."""

    task_id: str
    spec: JobSpec
    args: tuple
    kwargs: dict
    attempt: int = 1
    #: The digest of the image the job runs, once the agent has it (:mod:`executor.pulls`).
    image_digest: str | None = None


@dataclass
class Outcome:
    """What a container run produced."""

    container_id: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    revoked: bool = False
    peak_memory: int | None = None
    logs: str = ""
    result: dict[str, Any] | None = None
    #: Why the agent refused the job's result file (made by the agent, never by the job).
    refusal: dict[str, Any] | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def log_tail(self) -> str:
        """The last few KiB of output, for error messages."""
        return tail(self.logs, LOG_TAIL_BYTES)


class ContainerLauncher:
    """Creates, watches and removes job containers for one agent."""

    def __init__(self, client: docker.DockerClient, state_dir: str, agent_name: str,
                 max_job_file: int = DEFAULT_MAX_JOB_FILE, max_result: int = MAX_RESULT_BYTES):
        self.client = client
        self.max_result = max_result
        self.agent_name = agent_name
        self.max_job_file = check_max_job_file(max_job_file, max_result)
        self.jobs_dir = os.path.join(state_dir, "jobs")
        self.runner_dir = os.path.join(state_dir, "runner")
        os.makedirs(self.jobs_dir, mode=0o700, exist_ok=True)
        _install_runner(self.runner_dir)

    def run(self, call: JobCall, should_stop: Callable[[], bool] = lambda: False,
            on_start: Callable[[Outcome], None] = lambda outcome: None) -> Outcome:
        """Run ``call`` to completion (or timeout/stop) and return its outcome."""
        job_dir = self.prepare(call)
        outcome = Outcome()
        container = None
        try:
            try:
                container = self.create(call, job_dir)
                outcome.container_id = container.id
                container.start()
            except _ENGINE_DOWN as exc:
                raise EngineUnavailable(f"Docker Engine unreachable on {self.agent_name}: {exc}") from exc
            outcome.started_at = time.time()
            peak = PeakMemory(container.id)
            on_start(outcome)
            outcome.exit_code = self._wait(container, call.spec, outcome, peak, should_stop)
            outcome.finished_at = time.time()
            self._collect(container, call.spec, outcome, peak, job_dir)
            return outcome
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(
                f"{call.spec.name}: image {call.spec.image!r} is not on host {self.agent_name} "
                "(build it with 'jobyard image build' or load it there)",
                {"image": call.spec.image, "host": self.agent_name}) from exc
        except _DOCKER_DOWN as exc:
            raise BackendError(f"{call.spec.name}: Docker Engine error on {self.agent_name}: {exc}",
                               {"host": self.agent_name, "container_id": outcome.container_id}) from exc
        finally:
            self._remove(container)
            shutil.rmtree(self.job_dir(call), ignore_errors=True)

    def job_dir(self, call: JobCall) -> str:
        """The private directory of one attempt, named by a hash so no task id can steer it.

        Checked to resolve to a child of the jobs directory before anything is
        written or removed there.
        """
        path = os.path.join(self.jobs_dir, job_slug(call.task_id, call.attempt))
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(self.jobs_dir):
            raise BackendError(f"{call.spec.name}: job directory {path} resolves outside {self.jobs_dir}",
                               {"host": self.agent_name})
        return path

    def prepare(self, call: JobCall) -> str:
        """Create the job's private input/output directory; return its path.

        The job cannot write its out directory, only the result file in it, whose
        size the container's fsize limit bounds: so that is all it puts on the host.
        """
        job_dir = self.job_dir(call)
        shutil.rmtree(job_dir, ignore_errors=True)
        os.makedirs(os.path.join(job_dir, "in"), mode=0o755)
        out_dir = os.path.join(job_dir, "out")
        os.makedirs(out_dir)
        os.chmod(out_dir, 0o755)
        create_result_file(os.path.join(out_dir, RESULT_FILE), JOB_USER)
        if call.spec.kind == PYTHON:
            payload = {"entry": call.spec.entry, "args": list(call.args), "kwargs": call.kwargs,
                       "attempt": call.attempt}
            with open(os.path.join(job_dir, "in", "call.json"), "w") as handle:
                json.dump(payload, handle)
        return job_dir

    def create(self, call: JobCall, job_dir: str):
        """Create (not start) the job's hardened, limited container; return its model."""
        created = self.client.api.create_container(**self.container_options(call, job_dir))
        return self.client.containers.prepare_model({"Id": created["Id"]})

    def container_options(self, call: JobCall, job_dir: str) -> dict[str, Any]:
        """The Engine API options of a job's container: image, argv, limits, hardening."""
        spec = call.spec
        if spec.kind == PYTHON:
            command = ["python3", f"{RUNNER_DIR}/runner.py"]
        else:
            command = render_command(spec.command, call.args, call.kwargs)
        return {
            "image": spec.image,
            "command": command,
            "name": f"jobyard-{job_slug(call.task_id, call.attempt)}",
            "user": JOB_USER,
            "environment": _environment(call),
            "labels": {LABEL_JOB: call.task_id, LABEL_AGENT: self.agent_name, LABEL_NAME: spec.name,
                       LABEL_ATTEMPT: str(call.attempt)},
            "working_dir": "/tmp",
            "host_config": self._host_config(spec, job_dir),
            "detach": True,
        }

    def _host_config(self, spec: JobSpec, job_dir: str) -> dict[str, Any]:
        """The container's mounts, cgroup limits and hardening."""
        mounts = [
            Mount(IN_DIR, os.path.join(job_dir, "in"), type="bind", read_only=True),
            Mount(OUT_DIR, os.path.join(job_dir, "out"), type="bind", read_only=False),
            Mount(RUNNER_DIR, self.runner_dir, type="bind", read_only=True),
        ]
        return self.client.api.create_host_config(
            network_mode=spec.network,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={spec.tmpfs}"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit=spec.effective_memory_limit,
            memswap_limit=spec.effective_memory_limit,
            nano_cpus=int(spec.effective_cpus_limit * 1e9),
            pids_limit=spec.pids,
            mounts=mounts,
            ulimits=[Ulimit(name="fsize", soft=self.max_job_file, hard=self.max_job_file)],
            log_config=LOG_DRIVER,
        )

    def _wait(self, container, spec: JobSpec, outcome: Outcome, peak: PeakMemory,
              should_stop: Callable[[], bool]) -> int | None:
        """Wait for exit under the timeout, killing on timeout or revoke; return the exit code."""
        deadline = outcome.started_at + spec.timeout
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                outcome.timed_out = True
                _kill(container)
                return container.wait(timeout=30).get("StatusCode")
            if should_stop():
                outcome.revoked = True
                _kill(container)
                return container.wait(timeout=30).get("StatusCode")
            try:
                return container.wait(timeout=min(POLL_SECONDS, remaining)).get("StatusCode")
            except requests.exceptions.RequestException as exc:
                if not _is_read_timeout(exc):
                    raise
                peak.sample()  # the wait timed out: still running

    def _collect(self, container, spec: JobSpec, outcome: Outcome, peak: PeakMemory, job_dir: str) -> None:
        if outcome.exit_code != 0 or outcome.timed_out or outcome.revoked:
            # Only a failure needs the OOM flag; a clean exit skips the inspect.
            container.reload()
            state = container.attrs["State"]
            outcome.exit_code = state.get("ExitCode")
            outcome.oom_killed = bool(state.get("OOMKilled"))
        outcome.logs = read_logs(container)
        outcome.result, outcome.refusal = job_result(os.path.join(job_dir, "out", RESULT_FILE), self.max_result)
        reported = (outcome.result or {}).get("peak_memory")
        if not isinstance(reported, int) or isinstance(reported, bool) or not 0 < reported < 2**63:
            reported = None  # the job wrote it
        samples = [v for v in (peak.sample(), reported) if v]
        outcome.peak_memory = max(samples) if samples else None
        if outcome.oom_killed and outcome.exit_code:
            outcome.peak_memory = max(outcome.peak_memory or 0, spec.effective_memory_limit)

    def _remove(self, container) -> None:
        if container is None:
            return
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except _DOCKER_DOWN as exc:  # the reaper removes it later, by label
            log.warning("could not remove container %s: %s", container.id[:12], exc)


def job_slug(task_id: str, attempt: int) -> str:
    """The name of one attempt's directory and container: hex of a hash of id and attempt."""
    return hashlib.sha256(json.dumps([task_id, attempt]).encode()).hexdigest()[:32]


def _environment(call: JobCall) -> dict[str, str]:
    """The job's own ``env`` and what jobyard sets for every job, which wins."""
    return {
        **call.spec.env,
        "JOBYARD_JOB_ID": call.task_id,
        "JOBYARD_JOB_NAME": call.spec.name,
        "JOBYARD_ATTEMPT": str(call.attempt),
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def check_max_job_file(size: int, max_result: int = MAX_RESULT_BYTES) -> int:
    """Return ``size`` if it leaves room for a result at the cap; else raise InvalidAgentConfig."""
    least = max_result + JOB_FILE_SLACK
    if not isinstance(size, int) or size < least:
        raise InvalidAgentConfig(f"the job file limit must be at least the result cap plus 1 MiB "
                                 f"({least} bytes), not {size!r}")
    return size


def _is_read_timeout(exc: Exception) -> bool:
    # docker-py surfaces a read timeout on its unix socket as a ConnectionError
    # wrapping urllib3's ReadTimeoutError; a refused connection must not look alike.
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


def _kill(container) -> None:
    try:
        container.kill()
    except docker.errors.APIError as exc:  # already exited
        log.debug("kill %s: %s", container.id[:12], exc)


def _install_runner(runner_dir: str) -> None:
    os.makedirs(runner_dir, mode=0o755, exist_ok=True)
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
    target = os.path.join(runner_dir, "runner.py")
    tmp = target + ".tmp"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
