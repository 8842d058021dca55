"""What a failed job shows as its traceback: the job's own, or a statement of facts.

Celery records the stack of the code that raised, which for a job is the agent's
supervisor (``celery/app/trace.py`` down to ``executor/verdict.py``) and tells the
job's author nothing. A job that raised in its container reports its own traceback
(the ``traceback`` fact); every other verdict is told as one line of facts.
"""

from __future__ import annotations

from typing import Any

from .errors import ContainerOOMKilled, JobError
from .units import format_memory

#: The most text kept, in UTF-8 bytes; the end of a traceback is the part to keep.
MAX_TEXT_BYTES = 16 * 1024


def last_line(text: str, empty: str = "") -> str:
    """The last non-blank line of ``text`` (a job's output), or ``empty``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else empty


def failure_text(error: BaseException) -> str | None:
    """The text to show as ``error``'s traceback, or None to keep Celery's own."""
    if not isinstance(error, JobError):
        return None  # an agent bug: its stack is the useful part
    remote = error.details.get("traceback")
    text = remote if isinstance(remote, str) and remote.strip() else statement(error)
    return _tail(text, MAX_TEXT_BYTES)


def statement(error: JobError) -> str:
    """One line: the error's class, what happened, and where (container, image, host, attempt)."""
    details = error.details
    what = _oom(details) if isinstance(error, ContainerOOMKilled) else None
    what = what or error.message or error.reason
    return f"{type(error).__name__}: {what}{_where(details, what)}"


def _oom(details: dict[str, Any]) -> str | None:
    limit = details.get("memory_limit")
    if not isinstance(limit, int):
        return None
    peak = details.get("peak_memory")
    peak_text = format_memory(peak) if isinstance(peak, int) and peak > 0 else "unknown"
    return (f"memory limit {format_memory(limit)} exceeded "
            f"(peak {peak_text}, exit code {details.get('exit_code')})")


def _where(details: dict[str, Any], what: str) -> str:
    """Where it happened, leaving out what the message already names."""
    container = str(details.get("container_id") or "")[:12]
    image, host, attempt = details.get("image"), details.get("host"), details.get("attempt")
    parts = []
    if container and container not in what:
        parts.append(f" in container {container}")
        if image and str(image) not in what:
            parts.append(f" of image {image}")
    if host and str(host) not in what:
        parts.append(f" on host {host}")
    if attempt is not None and f"attempt {attempt}" not in what:
        parts.append(f", attempt {attempt}")
    return "".join(parts)


def _tail(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    marker = "[...]\n"
    return marker + data[len(data) - limit + len(marker):].decode("utf-8", "ignore")
