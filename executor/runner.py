"""The in-container runner for Python function jobs. Standard library only.

The agent mounts this file read-only into the job's container and runs it with the
image's ``python3``. It reads the call from ``/jobyard/in/call.json``, imports the
job's function, calls it, and writes the outcome to ``/jobyard/out/result.json``.
Arguments come in and the result goes out through files, so whatever the job prints
cannot corrupt its result. Exit codes: 0 value written, 1 the function raised,
2 the runner could not load or encode.
"""

import importlib
import json
import os
import sys
import traceback
import types

IN_PATH = "/jobyard/in/call.json"
OUT_DIR = "/jobyard/out"
OUT_PATH = OUT_DIR + "/result.json"
PEAK_FILES = (
    "/sys/fs/cgroup/memory.peak",
    "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
)


def _peak_memory():
    for path in PEAK_FILES:
        try:
            with open(path) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            continue
    return None


def _write(outcome):
    outcome["peak_memory"] = _peak_memory()
    tmp = OUT_PATH + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(outcome, handle)
    os.replace(tmp, OUT_PATH)


def _install_tasks_stub():
    """Let user modules ``from tasks import job`` where jobyard is not installed.

    Inside the container a decorated function is just the function: the stub's
    ``job`` returns it unchanged and ``command_job`` returns None.
    """
    try:
        importlib.import_module("tasks.job")
        return
    except ImportError:
        pass
    stub = types.ModuleType("tasks")

    def job(fn=None, **_options):
        return fn if fn is not None else (lambda f: f)

    stub.job = job
    stub.command_job = lambda *args, **kwargs: None
    stub.__path__ = []
    sys.modules["tasks"] = stub


def _load(entry):
    module_name, _, qualname = entry.partition(":")
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    # A @job-decorated function is a JobFunction; run the plain function inside.
    return getattr(target, "fn", None) or target


def _failure(kind, exc):
    return {
        "ok": False,
        "kind": kind,
        "exc_type": type(exc).__name__,
        "exc_module": type(exc).__module__,
        "message": str(exc)[:4000],
        "traceback": traceback.format_exc()[-16000:],
    }


def main():
    with open(IN_PATH) as handle:
        call = json.load(handle)
    try:
        _install_tasks_stub()
        function = _load(call["entry"])
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as a failure
        _write(_failure("load", exc))
        return 2
    try:
        value = function(*call.get("args", []), **call.get("kwargs", {}))
    except BaseException as exc:  # noqa: BLE001 - the job's own exception, reported
        _write(_failure("raised", exc))
        return 1
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        _write(_failure("encode", exc))
        return 2
    tmp = OUT_PATH + ".tmp"
    with open(tmp, "w") as handle:
        handle.write('{"ok": true, "peak_memory": %s, "value": %s}' % (json.dumps(_peak_memory()), encoded))
    os.replace(tmp, OUT_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
