"""Submit command jobs from the shell and wait for them.

``jobyard submit IMAGE -- ARGV...`` declares a :func:`tasks.job.command_job` on the
fly and sends it ``count`` times; waiting reports each job's end in a summary.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from celery.result import AsyncResult

from tasks.errors import JobError
from tasks.failure import last_line
from tasks.job import command_job

from .table import render_table

POLL_SECONDS = 0.25
_UNSAFE = re.compile(r"[^\w.-]+")


def command_name(argv: Sequence[str]) -> str:
    """A job name for an argv: ``cli.<program>`` (what Flower and the logs show)."""
    program = _UNSAFE.sub("_", os.path.basename(argv[0]))[:60] if argv else "command"
    return f"cli.{program or 'command'}"


def submit(image: str, argv: Sequence[str], count: int = 1, name: str | None = None,
           **resources: Any) -> list[AsyncResult]:
    """Send ``count`` runs of ``argv`` in ``image``; resources with None are left at defaults."""
    chosen = {k: v for k, v in resources.items() if v is not None}
    job = command_job(name or command_name(argv), image=image, command=list(argv), **chosen)
    return [job.delay() for _ in range(count)]


@dataclass(frozen=True)
class Ended:
    """How one submitted job ended."""

    task_id: str
    outcome: str
    exit_code: int | None
    detail: str
    output: str = ""

    @property
    def ok(self) -> bool:
        """Whether the job succeeded."""
        return self.outcome == "succeeded"


def ended(result: AsyncResult) -> Ended:
    """Describe a finished ``result``: its value or its typed error."""
    value = result.get(propagate=False, disable_sync_subtasks=False)
    if isinstance(value, JobError):
        return Ended(result.id, value.reason, value.details.get("exit_code"), value.message,
                     value.details.get("log_tail", ""))
    if isinstance(value, BaseException):
        return Ended(result.id, "error", None, f"{type(value).__name__}: {value}")
    output = value.get("output", "") if isinstance(value, dict) else str(value)
    exit_code = value.get("exit_code") if isinstance(value, dict) else None
    return Ended(result.id, "succeeded", exit_code, last_line(output), output)


def wait_all(results: Sequence[AsyncResult], on_progress: Callable[[int], None] = lambda done: None,
             timeout: float | None = None) -> list[Ended]:
    """Wait for every result; call ``on_progress(n)`` as ``n`` more finish. Order is kept."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done: dict[str, Ended] = {}
    while len(done) < len(results):
        fresh = [r for r in results if r.id not in done and r.ready()]
        for result in fresh:
            done[result.id] = ended(result)
        if fresh:
            on_progress(len(fresh))
        elif deadline is not None and time.monotonic() > deadline:
            break
        else:
            time.sleep(POLL_SECONDS)
    return [done.get(r.id) or Ended(r.id, "waiting", None, "still running when the wait ended")
            for r in results]


class ProgressLines:
    """A progress counter for logs: ``done 3/10``, at most every ``every`` seconds, and at the end."""

    def __init__(self, total: int, write: Callable[[str], None], every: float = 2.0):
        self.total, self.write, self.every = total, write, every
        self.done = 0
        self.last = 0.0

    def update(self, finished: int) -> None:
        """Count ``finished`` more jobs, printing a line when due."""
        self.done += finished
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every:
            self.last = now
            self.write(f"done {self.done}/{self.total}")


def summary(ends: Sequence[Ended]) -> str:
    """A table of every job's end and one line of totals by outcome."""
    table = render_table(["task id", "outcome", "exit code", "detail"],
                         [(e.task_id, e.outcome, e.exit_code, e.detail[:100]) for e in ends])
    totals = Counter(e.outcome for e in ends)
    return table + "\n\n" + ", ".join(f"{n} {outcome}" for outcome, n in sorted(totals.items()))

