"""Turn a container's outcome into the job's terminal state: a value or a typed error."""

from __future__ import annotations

from typing import Any

from tasks.errors import ContainerOOMKilled, JobFailed, JobTimeout, ResultTooLarge, Revoked
from tasks.failure import last_line
from tasks.spec import PYTHON
from tasks.units import format_memory

from .bounds import LINE_BYTES, MESSAGE_BYTES, NAME_BYTES, TRACEBACK_BYTES, head, text
from .container import JobCall, Outcome

_WHAT = {"load": "could not be loaded", "encode": "returned a value that is not JSON"}


def verdict(call: JobCall, outcome: Outcome, host: str) -> Any:
    """Return the job's value, or raise the error that explains how it ended.

    Order matters: a revoke or an OOM kill explains a non-zero exit better than the
    exit code does, and a timeout kill is never reported as an OOM.
    """
    spec = call.spec
    facts = {**outcome.facts, "host": host, "exit_code": outcome.exit_code,
             "peak_memory": outcome.peak_memory, "log_tail": outcome.log_tail}
    limit = spec.effective_memory_limit
    if outcome.revoked:
        raise Revoked(f"{spec.name} was revoked; container {outcome.container_id[:12]} stopped", facts)
    if outcome.oom_killed and outcome.exit_code:
        peak = format_memory(outcome.peak_memory) if outcome.peak_memory else "unknown"
        raise ContainerOOMKilled(
            f"{spec.name} was OOM-killed: memory limit {format_memory(limit)} exceeded "
            f"(peak {peak}, exit code {outcome.exit_code}, attempt {call.attempt})", facts)
    if outcome.timed_out:
        raise JobTimeout(f"{spec.name} timed out after {spec.timeout:g}s; container killed "
                         f"(attempt {call.attempt})", facts)
    if spec.kind == PYTHON:
        return _python_value(call, outcome, facts)
    if outcome.exit_code != 0:
        raise JobFailed(f"{spec.name} exited with code {outcome.exit_code}: {_last_line(outcome.logs)}", facts)
    return {"exit_code": 0, "output": outcome.log_tail}


def _python_value(call: JobCall, outcome: Outcome, facts: dict[str, Any]) -> Any:
    result = outcome.result
    name = call.spec.name
    if outcome.refusal:
        raise _refused(name, outcome.refusal, facts)
    if result and result.get("ok") and outcome.exit_code == 0:
        return result.get("value")
    if result and not result.get("ok"):
        # Every field below was written by the job: cut each one, whatever its type.
        facts.update(exc_type=text(result.get("exc_type"), NAME_BYTES),
                     exc_module=text(result.get("exc_module"), NAME_BYTES),
                     traceback=text(result.get("traceback"), TRACEBACK_BYTES, keep_end=True),
                     remote_message=text(result.get("message"), MESSAGE_BYTES))
        kind = result.get("kind")
        what = _WHAT.get(kind, "raised") if isinstance(kind, str) else "raised"
        raise JobFailed(f"{name} {what}: {facts['exc_type']}: {facts['remote_message']}", facts)
    raise JobFailed(f"{name} exited with code {outcome.exit_code} without a result: "
                    f"{_last_line(outcome.logs)}", facts)


def _refused(name: str, refusal: dict[str, Any], facts: dict[str, Any]) -> JobFailed:
    """The error for a result file the agent refused to parse (see results._read_result)."""
    details = {**facts, **{k: v for k, v in refusal.items() if k != "message"}, "exc_module": "jobyard"}
    if refusal["exc_type"] == "ResultTooLarge":
        return ResultTooLarge(f"{name}: {refusal['message']}; return less, or a reference to it", details)
    return JobFailed(f"{name} returned a result the agent cannot read: {refusal['message']}", details)


def _last_line(logs: str) -> str:
    return head(last_line(logs, "(no output)"), LINE_BYTES)
