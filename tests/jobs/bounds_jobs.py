"""Jobs whose results and errors are as large as a job can make them (tests/executor/test_result_bounds.py)."""

import json
import os
import sys

from tasks import job

RESULT_PATH = "/jobyard/out/result.json"


@job(memory="128Mi", timeout=60)
def text_of(nbytes):
    """A string result of ``nbytes`` characters."""
    return "x" * nbytes


@job(memory="128Mi", timeout=60)
def empty_lists(count):
    """``[[], [], ...]``: the costliest JSON per byte for the agent to parse."""
    return [[] for _ in range(count)]


@job(memory="128Mi", timeout=60)
def nested(depth):
    """``{"a": {"a": ... {}}}`` nested ``depth`` levels, written as raw JSON."""
    _write_raw('{"ok": true, "value": ' + '{"a": ' * depth + "{}" + "}" * depth + "}")


@job(memory="128Mi", timeout=60)
def many_ints(count):
    """``count`` distinct integers."""
    return list(range(100_000, 100_000 + count))


@job(memory="128Mi", timeout=60)
def many_strings(count):
    """``count`` distinct short strings."""
    return [format(i, "x") for i in range(count)]


@job(memory="512Mi", timeout=60)
def forge_failure(message, traceback, name, line):
    """Write result.json itself, bypassing the runner's truncation, with fields of the given sizes; print a huge line."""
    sys.stdout.write("L" * line + "\n")
    sys.stdout.flush()
    outcome = {"ok": False, "kind": "raised", "exc_type": "T" * name, "exc_module": "M" * name,
               "message": "E" * message, "traceback": "F" * traceback + "\nlast frame"}
    _write_raw(json.dumps(outcome), exit_code=1)


def _write_raw(text, exit_code=0):
    with open(RESULT_PATH, "w") as handle:
        handle.write(text)
    os._exit(exit_code)  # the runner must not overwrite what was written
