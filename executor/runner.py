"""The in-container runner for Python function jobs. Standard library only.

The agent mounts this file read-only into the job's container and runs it with the
image's ``python3``. It reads the call from ``/jobyard/in/call.json``, imports the
job's function, calls it, and writes the outcome to ``/jobyard/out/result.json``.
Arguments come in and the result goes out through files, so whatever the job prints
cannot corrupt its result. Exit codes: 0 value written, 1 the function raised,
2 the runner could not load or encode.

The agent pre-creates the result file in a directory the job cannot write, and the
container's fsize limit bounds its size; so the result is written in place, and a
result over the limit is replaced by a short failure.

Every import here is paid by every job's start, so the runner imports little:
``traceback`` and ``resource`` only on a failure, and JSON goes through the
interpreter's C accelerator ``_json`` directly (the ``json`` package imports ``re``,
some 10 ms of CPU of a no-op job), falling back to ``json`` where ``_json`` lacks it.
"""

import errno
import os
import sys

IN_PATH = "/jobyard/in/call.json"
OUT_DIR = "/jobyard/out"
OUT_PATH = OUT_DIR + "/result.json"
PEAK_FILES = (
    "/sys/fs/cgroup/memory.peak",
    "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
)


_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
_SPACE = " \t\n\r"


class _Scanning:
    """What ``_json.make_scanner`` reads of a decoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


def _not_serialisable(value):
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _codec():
    """``(loads, dumps)`` with json's default behaviour, without importing json when possible."""
    try:
        import _json
        scan = _json.make_scanner(_Scanning())
        make_encoder, escape = _json.make_encoder, _json.encode_basestring_ascii
        make_encoder({}, _not_serialisable, escape, None, ": ", ", ", False, False, True)(0, 0)
    except (ImportError, AttributeError, TypeError):
        import json
        return json.loads, json.dumps

    def loads(text):
        text = text.strip(_SPACE)
        try:
            value, end = scan(text, 0)
        except StopIteration:
            raise ValueError("Expecting value: line 1 column 1 (char 0)") from None
        if end != len(text):
            raise ValueError("Extra data at char %d" % end)
        return value

    def dumps(value):
        # A new encoder per call, as json.dumps: its circular-reference markers start empty.
        return "".join(make_encoder({}, _not_serialisable, escape, None, ": ", ", ", False, False, True)(value, 0))

    return loads, dumps


_loads, _dumps = _codec()


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
    return _write_result(_dumps(outcome))


def _write_result(text):
    """Write ``text`` over the result file; True, or False if over the file limit."""
    fd = os.open(OUT_PATH, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        try:
            _write_all(fd, text.encode())
            return True
        except OSError as exc:  # Python ignores SIGXFSZ: the write fails instead
            if exc.errno != errno.EFBIG:
                raise
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, _dumps(_too_large(len(text))).encode())
        return False
    finally:
        os.close(fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _too_large(size):
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return {"ok": False, "kind": "encode", "exc_type": "ResultTooLarge", "exc_module": "jobyard",
            "message": f"result of {size} characters is over the job's {limit}-byte file limit",
            "traceback": "", "peak_memory": _peak_memory()}


def _install_tasks_stub():
    """Let user modules ``from tasks import job`` where jobyard is not installed.

    Inside the container a decorated function is just the function: the stub's
    ``job`` returns it unchanged and ``command_job`` returns None.
    """
    try:
        __import__("tasks.job")
        return
    except ImportError:
        pass
    stub = type(sys)("tasks")

    def job(fn=None, **_options):
        return fn if fn is not None else (lambda f: f)

    stub.job = job
    stub.command_job = lambda *args, **kwargs: None
    stub.__path__ = []
    sys.modules["tasks"] = stub


def _load(entry):
    module_name, _, qualname = entry.partition(":")
    __import__(module_name)
    target = sys.modules[module_name]
    for part in qualname.split("."):
        target = getattr(target, part)
    # A @job-decorated function is a JobFunction; run the plain function inside.
    return getattr(target, "fn", None) or target


def _failure(kind, exc):
    import traceback

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
        call = _loads(handle.read())
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
        encoded = _dumps(value)
    except (TypeError, ValueError) as exc:
        _write(_failure("encode", exc))
        return 2
    text = '{"ok": true, "peak_memory": %s, "value": %s}' % (_dumps(_peak_memory()), encoded)
    return 0 if _write_result(text) else 2


if __name__ == "__main__":
    sys.exit(main())
