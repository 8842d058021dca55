"""A job's container facts as people read them, in Flower and on the command line.

The agent writes the facts (:class:`tasks.records.JobFacts`); this module only
formats them, and offers the hook that adds them to Flower's task pages.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from tasks.records import JobFacts
from tasks.state import read_job_facts, state_client
from tasks.units import format_memory

log = logging.getLogger(__name__)

#: Facts in the order a reader wants them, with how to show each.
FIELDS = (
    ("container_id", "container", lambda v: str(v)[:12]),
    ("image", "image", str),
    ("image_digest", "image_digest", str),
    ("pull", "pull", str),
    ("host", "host", str),
    ("state", "state", str),
    ("cpus_limit", "cpus", lambda v: f"{v:g}"),
    ("memory_limit", "memory_limit", format_memory),
    ("pids", "pids", str),
    ("timeout", "timeout", lambda v: f"{v:g}s"),
    ("exit_code", "exit_code", str),
    ("oom_killed", "oom_killed", lambda v: str(v).lower()),
    ("peak_memory", "peak_memory", format_memory),
    ("attempt", "attempt", str),
)
#: States after which a job's facts no longer change.
FINAL_STATES = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}
_CACHE_SIZE = 4096


def describe_facts(facts: JobFacts | dict[str, Any]) -> str:
    """One line: ``container 1a2b3c4d5e6f image=... memory_limit=64Mi exit_code=0 ...``."""
    return " ".join(f"{label} {text}" if label == "container" else f"{label}={text}"
                    for label, text in facts_rows(facts))


def facts_rows(facts: JobFacts | dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the facts that are known, in reading order."""
    rows = []
    for key, label, show in FIELDS:
        value = facts.get(key)
        if value is None or value == "":
            continue
        try:
            rows.append((label, show(value)))
        except (TypeError, ValueError):
            rows.append((label, str(value)))
    return rows


class _FinishedFacts:
    """Facts of finished jobs, kept in memory: they no longer change.

    Keyed by task id *and* the event that finished it, so a job delivered again
    (a new attempt) is read afresh.
    """

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self.items: OrderedDict[tuple, str] = OrderedDict()
        self.lock = threading.Lock()
        self.client = None

    def line(self, task_id: str, finished_by: tuple | None) -> str:
        """The facts line of ``task_id``; ``finished_by`` is None while it runs."""
        key = (task_id, finished_by)
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        if self.client is None:
            self.client = state_client()
        text = describe_facts(read_job_facts(task_id, self.client))
        if finished_by is not None and text:
            with self.lock:
                self.items[key] = text
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        return text


_finished = _FinishedFacts()


def add_container_facts(task: Any) -> Any:
    """Flower ``format_task`` hook: show the job's container facts on its page.

    ``task`` is Flower's copy of a celery.events.state Task; adding a field to its
    ``_fields`` makes Flower's task page render it as a row.
    """
    try:
        state = getattr(task, "state", None)
        finished_by = (state, getattr(task, "timestamp", None)) if state in FINAL_STATES else None
        text = _finished.line(task.uuid, finished_by)
    except Exception as exc:  # noqa: BLE001 - the page must render even if Redis is away
        log.warning("no container facts for %s: %s", task.uuid, exc)
        return task
    if text:
        task.container = text
        task._fields = (*type(task)._fields, "container")
    return task
