"""The jobs bench/chaos.py runs: short, and each reports which attempt of which job it was.

Baked into the bench's image (``build_image(code=bench/jobs)``), so it is imported as
``chaos_jobs`` both by the bench and inside the container. A job has no network and
cannot reach Redis: its side effect is its container start (which the bench sees in
Docker's event stream) and its return value (which the bench reads from the result
backend).
"""

import hashlib
import os
import time

from tasks import job

#: Resources of every chaos job: small, so a few run at once on each agent.
SHAPE = {"memory": "64Mi", "cpus": 0.25, "timeout": 60}


def identity() -> dict:
    """The job id and attempt number the agent gave this container."""
    return {"job": os.environ.get("JOBYARD_JOB_ID", ""), "attempt": int(os.environ.get("JOBYARD_ATTEMPT", "0"))}


@job(**SHAPE)
def nap(seconds: float) -> dict:
    """Sleep ``seconds``; return who ran."""
    time.sleep(seconds)
    return {**identity(), "seconds": seconds}


@job(**SHAPE)
def crunch(seconds: float) -> dict:
    """Hash for about ``seconds`` of wall time; return who ran and how many rounds."""
    deadline = time.monotonic() + seconds
    digest, rounds = b"jobyard", 0
    while time.monotonic() < deadline:
        digest = hashlib.sha256(digest).digest()
        rounds += 1
    return {**identity(), "seconds": seconds, "rounds": rounds}


@job(**SHAPE, retries=1, retry_delay=0.5)
def doomed(seconds: float) -> dict:
    """Sleep ``seconds``, then fail on every attempt: one retry, then a dead letter."""
    time.sleep(seconds)
    raise RuntimeError(f"deliberate failure of {identity()}")
