"""The rule every task id follows, checked where a job is sent and where it is taken.

An id names Redis keys, log lines and, through a hash, a directory and a container
on the agent's host. It is refused at both ends when it is not at most 128 ASCII
letters, digits and ``._:-``, or starts with a dot.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidJobSpec

MAX_TASK_ID = 128
_TASK_ID = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % MAX_TASK_ID)


def task_id_problem(task_id: Any) -> str | None:
    """Why ``task_id`` is not a valid task id, or None."""
    if not isinstance(task_id, str):
        return f"task id is a {type(task_id).__name__}, not a string"
    if not _TASK_ID.fullmatch(task_id):
        return f"task id {task_id[:40]!r} is not 1-{MAX_TASK_ID} characters of A-Z a-z 0-9 . _ : -"
    if task_id.startswith("."):
        return f"task id {task_id[:40]!r} starts with a dot"
    return None


def check_task_id(task_id: Any) -> str:
    """Return ``task_id`` if valid; else raise :class:`InvalidJobSpec` (field ``task_id``)."""
    problem = task_id_problem(task_id)
    if problem:
        raise InvalidJobSpec(f"invalid job spec: task_id: {problem}", field="task_id")
    return task_id
