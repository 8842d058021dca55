"""Turn a container's outcome into the job's terminal state: a value or a typed error."""

from __future__ import annotations

from typing import Any

from tasks.errors import ContainerOOMKilled, JobFailed, JobTimeout, Revoked
from tasks.spec import PYTHON
from tasks.units import format_memory

from .container import JobCall, Outcome


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
    if result and result.get("ok") and outcome.exit_code == 0:
        return result.get("value")
    if result and not result.get("ok"):
        facts.update(exc_type=result.get("exc_type"), exc_module=result.get("exc_module"),
                     traceback=result.get("traceback", ""), remote_message=result.get("message", ""))
        what = {"load": "could not be loaded", "encode": "returned a value that is not JSON"}.get(
            result.get("kind"), "raised")
        raise JobFailed(f"{name} {what}: {result.get('exc_type')}: {result.get('message')}", facts)
    raise JobFailed(f"{name} exited with code {outcome.exit_code} without a result: "
                    f"{_last_line(outcome.logs)}", facts)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
