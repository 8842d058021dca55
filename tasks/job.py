"""``@job`` and ``command_job``: declare container jobs from Python.

A declared job is a :class:`JobFunction`. Calling it directly runs the function
here, as plain Python; ``.delay()`` / ``.apply_async()`` / ``.s()`` send it to an
agent, which runs it in its own cgroup-limited container. Resources may be
overridden per call: ``grade.apply_async((x,), memory="1Gi")`` or
``grade.options(memory="1Gi").delay(x)``.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

from celery import Celery
from celery.canvas import Signature
from celery.result import AsyncResult

from .app import app as default_app
from .errors import InvalidJobSpec, PayloadTooLarge
from .names import RUN_TASK, SPEC_HEADER
from .spec import COMMAND, PYTHON, RESOURCE_FIELDS, JobSpec, render_command


class JobFunction:
    """A job: a spec plus, for Python jobs, the function it names."""

    def __init__(self, spec: JobSpec, fn: Callable[..., Any] | None = None, app: Celery | None = None):
        self.spec = spec
        self.fn = fn
        self.app = app or default_app
        if fn is not None:
            functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        """The job's own name, as logs, events and Flower show it."""
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise TypeError(f"command job {self.name} runs only in a container: use .delay()")
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<job {self.spec.describe()}>"

    def options(self, **overrides: Any) -> "JobFunction":
        """A copy of this job with per-call resource overrides (validated now)."""
        return JobFunction(self.spec.with_overrides(**overrides), self.fn, self.app)

    def signature(self, args: tuple = (), kwargs: dict | None = None, **options: Any) -> Signature:
        """A Celery signature for canvas use (``chain``, ``group``, ``chord``)."""
        spec, celery_options = self._split(options)
        return self.app.signature(RUN_TASK, args=tuple(args), kwargs=dict(kwargs or {}),
                                  **_message_options(spec, celery_options))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A partial signature: a chain may prepend the previous result."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: ignores the previous result in a chain."""
        return self.signature(args, kwargs).set(immutable=True)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send the job with these call arguments."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: tuple | list = (), kwargs: dict | None = None, **options: Any) -> AsyncResult:
        """Send the job; resource fields in ``options`` override the spec for this call."""
        spec, celery_options = self._split(options)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        check_payload(spec, args, kwargs, self.app.jobyard_settings.max_payload)
        # By name: the task body is registered only on agents (executor.task).
        return self.app.send_task(RUN_TASK, args, kwargs, **_message_options(spec, celery_options))

    def _split(self, options: dict[str, Any]) -> tuple[JobSpec, dict[str, Any]]:
        overrides = {k: options.pop(k) for k in list(options) if k in RESOURCE_FIELDS}
        spec = self.spec.with_overrides(**overrides) if overrides else self.spec
        return spec, options


def job(fn: Callable[..., Any] | None = None, *, name: str | None = None, image: str | None = None,
        app: Celery | None = None, **resources: Any):
    """Declare a Python function as a container job.

    ``@job`` or ``@job(image=..., cpus=1, memory="256Mi", timeout=60, queue=...)``.
    The function must be importable as ``module:qualname`` inside the image (build
    one with ``jobyard image build --code DIR``). Bad options raise
    :class:`InvalidJobSpec` naming the field.
    """
    def declare(func: Callable[..., Any]) -> JobFunction:
        module, qualname = func.__module__, func.__qualname__
        the_app = app or default_app
        spec = JobSpec.build(
            name=name or f"{module}.{qualname}".replace("<locals>", "locals"), kind=PYTHON,
            entry=f"{module}:{qualname}", image=image or the_app.jobyard_settings.default_image, **resources)
        if module == "__main__":
            raise InvalidJobSpec(
                f"{qualname}: a job function must be importable inside the image: define it in a "
                "module, not in __main__", field="entry")
        return JobFunction(spec, func, the_app)

    return declare(fn) if fn is not None else declare


def command_job(name: str, *, command: list[str], image: str | None = None, app: Celery | None = None,
                **resources: Any) -> JobFunction:
    """Declare a job that runs an argv in a container.

    ``{name}`` placeholders in the argv are filled from the call's keyword
    arguments, positional arguments are appended; each value is one argument and no
    shell is involved. The result is ``{"exit_code": 0, "output": "<log tail>"}``.
    """
    the_app = app or default_app
    spec = JobSpec.build(name=name, kind=COMMAND, command=command,
                         image=image or the_app.jobyard_settings.default_image, **resources)
    return JobFunction(spec, None, the_app)


def check_payload(spec: JobSpec, args: tuple, kwargs: dict, max_payload: int) -> None:
    """Refuse arguments that are not JSON or exceed the payload cap, before sending."""
    try:
        size = len(json.dumps([args, kwargs]).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidJobSpec(f"{spec.name}: call arguments are not JSON-serialisable: {exc}",
                             field="args") from None
    if size > max_payload:
        raise PayloadTooLarge(
            f"{spec.name}: call payload is {size} bytes, over the {max_payload}-byte cap "
            "(pass a reference to the data instead)", {"size": size, "cap": max_payload}, field="args")
    if spec.kind == COMMAND:
        render_command(spec.command, args, kwargs)


def _message_options(spec: JobSpec, options: dict[str, Any]) -> dict[str, Any]:
    headers = dict(options.pop("headers", None) or {})
    headers[SPEC_HEADER] = spec.to_dict()
    out = {"shadow": spec.name, "queue": spec.queue, "headers": headers, **options}
    if spec.priority is not None:
        out.setdefault("priority", spec.priority)
    return out
