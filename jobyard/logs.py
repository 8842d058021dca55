"""A job's output by task id, whether it is running or long finished.

A finished job's output is in Redis (:func:`tasks.state.job_logs`), kept after its
container is gone. A running job's output is streamed from Docker when its
container is on this host (found by the ``jobyard.job`` label); otherwise this
polls until the job ends and then prints what was kept.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import click
import redis

from tasks.names import JOB_LABEL
from tasks.records import JobFacts
from tasks.state import job_logs, read_job_facts

POLL_SECONDS = 1.0
#: How long to wait for the agent to record a job's end after its container stopped.
SETTLE_SECONDS = 15.0


def has_ended(task_id: str, facts: JobFacts) -> bool:
    """Whether the job ended: by its facts, or by its result when its container never ran
    (the facts of a job whose image was missing still say "running")."""
    if facts and not facts.running:
        return True
    from tasks.app import app

    return app.AsyncResult(task_id).ready()


def read_logs(task_id: str, client: redis.Redis, note: Callable[[str], None] = lambda text: None) -> str:
    """A job's output so far: from its container while it runs here, else the kept copy.

    ``note`` is told when the job runs on another host, whose output is kept only
    when it ends.
    """
    facts = read_job_facts(task_id, client)
    if not facts:
        raise click.ClickException(f"no job {task_id}: unknown, expired, or not started yet (try --follow)")
    if facts.running:
        container = local_container(task_id)
        if container is not None:
            return container.logs(stdout=True, stderr=True).decode("utf-8", errors="replace")
        note(f"job {task_id} is running on {facts.host or 'another host'}; its output is kept when it "
             "ends (use --follow to wait for it)")
    return job_logs(task_id, client)


def follow_logs(task_id: str, client: redis.Redis, write: Callable[[str], None],
                timeout: float | None = None) -> None:
    """Write a job's output as it appears until the job ends (or ``timeout`` passes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        facts = read_job_facts(task_id, client)
        if has_ended(task_id, facts):
            write(job_logs(task_id, client))
            return
        container = local_container(task_id) if facts else None
        if container is not None:
            streamed = []
            for chunk in _stream(container):
                write(chunk)
                streamed.append(chunk)
            _write_missed_tail("".join(streamed), task_id, client, write)
            return
        time.sleep(POLL_SECONDS)
    raise click.ClickException(f"job {task_id} did not finish within {timeout:g}s")


def _write_missed_tail(streamed: str, task_id: str, client: redis.Redis, write: Callable[[str], None]) -> None:
    # The container may be removed before the stream delivered its last lines;
    # the copy the agent keeps then has them.
    deadline = time.monotonic() + SETTLE_SECONDS
    while not has_ended(task_id, read_job_facts(task_id, client)) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS / 4)
    kept = job_logs(task_id, client)
    if len(kept) > len(streamed) and kept.startswith(streamed):
        write(kept[len(streamed):])


def local_container(task_id: str):
    """The job's container on this host's Docker Engine, or None (none here, or no Docker)."""
    import docker
    import docker.errors
    import requests.exceptions

    try:
        client = docker.from_env(timeout=10)
        found = client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={task_id}"})
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    return found[0] if found else None


def _stream(container) -> Iterator[str]:
    import docker.errors

    try:
        for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=True):
            yield chunk.decode("utf-8", errors="replace")
    except docker.errors.NotFound:
        return  # removed as it ended; what was streamed is all there was
