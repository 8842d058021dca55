"""What a job's container produced, read back by the agent: its result file and its output.

A job controls both, so both are read in bounded memory and never trusted: the
result file is pre-created by the agent and refused, before it is parsed, when it
is too large or holds too many JSON values or nests too deep (see :mod:`.bounds`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any

import requests.exceptions
import urllib3.exceptions

from .bounds import LOG_KEEP_BYTES, result_problem, tail

log = logging.getLogger(__name__)

#: The one file a job may write on the host, pre-created by the agent in its out dir.
RESULT_FILE = "result.json"


def create_result_file(path: str, user: str) -> None:
    """Create the empty result file for the job's ``uid:gid`` to write, never following a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        uid, gid = (int(part) for part in user.split(":"))
        try:
            os.fchown(fd, uid, gid)
        except PermissionError:  # agent not root: the job writes it as "other"
            os.fchmod(fd, 0o666)
    finally:
        os.close(fd)


def job_result(path: str, limit: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The job's result and None, or None and why the agent refuses it; (None, None) for none."""
    # The file is pre-created: left empty, the job wrote no result.
    try:
        if os.lstat(path).st_size == 0:
            return None, None
    except FileNotFoundError:
        return None, None
    return _read_result(path, limit)


def read_logs(container) -> str:
    """The end of the job's output, never holding more than twice what is kept."""
    kept = bytearray()
    chunks = container.logs(stdout=True, stderr=True, tail=4000, stream=True, follow=False)
    try:
        for chunk in chunks:
            kept += chunk
            if len(kept) > 2 * LOG_KEEP_BYTES:
                del kept[:-LOG_KEEP_BYTES]
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
        # The job has ended: an engine lost mid-stream costs only the rest of its output.
        log.warning("output of container %s cut short: %s", container.id[:12], exc)
    return tail(kept[-LOG_KEEP_BYTES:].decode("utf-8", errors="replace"), LOG_KEEP_BYTES)


def _read_result(path: str, limit: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The job's result and None, or None and why the agent refuses it.

    Refused before parsing: over ``limit`` bytes (by fstat, and reading at most
    ``limit + 1``), or too many JSON values or too deep to parse in bounded memory.
    """
    # The job owns the directory and the agent is root on the host: never follow
    # a link the job planted, never block on a FIFO, never read a device.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, _corrupt(f"unreadable result: {exc.strerror}")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None, _corrupt("result is not a regular file")
        if info.st_size > limit:
            return None, _too_large(info.st_size, limit)
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        return None, _too_large(len(raw), limit)
    problem = result_problem(raw, limit)
    if problem:
        return None, _too_large(len(raw), limit, **problem)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return None, _corrupt(f"unreadable result: {type(exc).__name__}: {str(exc)[:200]}")
    return (data, None) if isinstance(data, dict) else (None, None)


def _too_large(size: int, limit: int, **problem: int) -> dict[str, Any]:
    if "values" in problem:
        why = (f"holds {problem['values']} JSON values, over the {problem['max_values']} "
               f"the {limit}-byte result cap allows")
    elif "depth" in problem:
        why = f"is nested {problem['depth']} deep, over the {problem['max_depth']} levels allowed"
    else:
        why = f"is {size} bytes, over the {limit}-byte result cap"
    return {"exc_type": "ResultTooLarge", "message": f"its result {why}", "size": size, "limit": limit,
            **problem}


def _corrupt(message: str) -> dict[str, Any]:
    return {"exc_type": "CorruptResult", "message": message}
