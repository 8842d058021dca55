"""What a failed job shows as its traceback: its own, or one line of facts (pure)."""

import pytest

from tasks.errors import (BackendError, ContainerOOMKilled, HostLost, ImageNotFound, InvalidJobSpec, JobFailed,
                          JobRejected, JobTimeout, Revoked)
from tasks.failure import MAX_TEXT_BYTES, failure_text

pytestmark = pytest.mark.pure

MI = 1024 * 1024
WHERE = {"container_id": "abc123def456789", "image": "jobyard/python:latest", "host": "h1", "attempt": 1}
REMOTE = 'Traceback (most recent call last):\n  File "/app/reports.py", line 3, in grade\nValueError: no\n'

CASES = [
    (ContainerOOMKilled("reports.grade was OOM-killed: ...",
                        {**WHERE, "memory_limit": 64 * MI, "peak_memory": 64 * MI, "exit_code": 137}),
     "ContainerOOMKilled: memory limit 64Mi exceeded (peak 64Mi, exit code 137) in container abc123def456 "
     "of image jobyard/python:latest on host h1, attempt 1"),
    (ContainerOOMKilled("m", {"memory_limit": 64 * MI, "peak_memory": None, "exit_code": 137, "attempt": 2}),
     "ContainerOOMKilled: memory limit 64Mi exceeded (peak unknown, exit code 137), attempt 2"),
    (ContainerOOMKilled("reports.grade was OOM-killed", {}), "ContainerOOMKilled: reports.grade was OOM-killed"),
    (JobTimeout("reports.grade timed out after 1s; container killed (attempt 1)", WHERE),
     "JobTimeout: reports.grade timed out after 1s; container killed (attempt 1) in container abc123def456 "
     "of image jobyard/python:latest on host h1"),
    (JobFailed("reports.grade raised: ValueError: no", {**WHERE, "traceback": REMOTE}), REMOTE),
    (JobFailed("convert exited with code 3: bad file", {**WHERE, "traceback": "", "attempt": 2}),
     "JobFailed: convert exited with code 3: bad file in container abc123def456 of image jobyard/python:latest "
     "on host h1, attempt 2"),
    (Revoked("reports.grade was revoked; container abc123def456 stopped", WHERE),
     "Revoked: reports.grade was revoked; container abc123def456 stopped on host h1, attempt 1"),
    (ImageNotFound("reports.grade: image 'x:1' is not on host h1", {"image": "x:1", "host": "h1"}),
     "ImageNotFound: reports.grade: image 'x:1' is not on host h1"),
    (JobRejected("reports.grade: network 'host' is not allowed on this host", {"rule": "network"}),
     "JobRejected: reports.grade: network 'host' is not allowed on this host"),
    (HostLost("reports.grade: its host was lost 3 times", {"lost": 3, "attempt": 4}),
     "HostLost: reports.grade: its host was lost 3 times, attempt 4"),
    (BackendError("reports.grade: Docker Engine error on h1: 500", {"host": "h1", "container_id": ""}),
     "BackendError: reports.grade: Docker Engine error on h1: 500"),
    (InvalidJobSpec("memory: '12q' is not a size", field="memory"), "InvalidJobSpec: memory: '12q' is not a size"),
    (JobFailed("", {}), "JobFailed: failed"),
]


@pytest.mark.parametrize("error, text", CASES, ids=[type(case[0]).__name__ for case in CASES])
def test_a_job_error_reads_as_its_own_traceback_or_its_facts(error, text):
    assert failure_text(error) == text


def test_an_error_that_is_not_a_jobs_keeps_celerys_traceback():
    assert failure_text(RuntimeError("agent bug")) is None


def test_a_long_traceback_keeps_its_end_within_the_cap():
    remote = "Traceback (most recent call last):\n" + "  File \"/app/é.py\", line 1, in f\n" * 2000 + "KeyError: 'k'\n"
    text = failure_text(JobFailed("raised", {"traceback": remote}))
    assert len(text.encode()) <= MAX_TEXT_BYTES
    assert text.startswith("[...]\n") and text.endswith("KeyError: 'k'\n")
