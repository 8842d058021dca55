"""The job spec: what a job runs and what it may use.

A spec is validated twice: at submit time on the caller's side (so a bad value is an
:class:`~tasks.errors.InvalidJobSpec` naming the field, with nothing enqueued) and
again on the agent, which never trusts what arrives from the queue.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidJobSpec
from .images import parse_image_ref
from .units import format_memory, parse_memory

PYTHON = "python"
COMMAND = "command"

MIN_MEMORY = 6 * 1024**2  # the smallest limit Docker accepts
#: Slack when comparing CPU amounts: requests are floats summed by every side.
CPU_EPSILON = 1e-9
MAX_TIMEOUT = 7 * 24 * 3600.0
#: The most retries a spec may ask for.
MAX_RETRIES = 100
NETWORK_MODES = ("none", "bridge")

_NAME = re.compile(r"^[A-Za-z_][\w.-]{0,199}$")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")

#: Spec fields a caller may override per call (``apply_async(..., memory="1Gi")``).
RESOURCE_FIELDS = (
    "image", "cpus", "cpus_limit", "memory", "memory_limit", "pids", "timeout",
    "network", "env", "queue", "retries", "tmpfs", "priority", "pull",
    "retry_on", "retry_delay", "retry_memory_factor", "retry_memory_max",
)

#: Failure classes a retry policy can name (besides exit codes).
RETRY_CLASSES = ("oom", "timeout", "failed", "backend", "image")
DEFAULT_RETRY_ON = ("oom", "timeout", "failed", "backend", "image")
#: When the agent pulls the job's image (Docker's vocabulary).
PULL_POLICIES = ("missing", "always", "never")


def _fail(field_name: str, message: str) -> InvalidJobSpec:
    return InvalidJobSpec(f"invalid job spec: {field_name}: {message}", field=field_name)


@dataclass(frozen=True)
class JobSpec:
    """A validated, immutable description of one job.

    ``cpus``/``memory`` are requests (what admission reserves); ``cpus_limit`` and
    ``memory_limit`` are the cgroup limits the container gets and default to the
    requests. Memory values are bytes once validated.
    """

    name: str
    kind: str
    image: str
    entry: str | None = None
    command: tuple[str, ...] = ()
    cpus: float = 1.0
    cpus_limit: float | None = None
    memory: int = 256 * 1024**2
    memory_limit: int | None = None
    pids: int = 256
    timeout: float = 3600.0
    network: str = "none"
    env: dict[str, str] = field(default_factory=dict)
    queue: str = "default"
    retries: int = 0
    retry_on: tuple[str | int, ...] = DEFAULT_RETRY_ON
    retry_delay: float = 1.0
    retry_memory_factor: float | None = None
    retry_memory_max: int | None = None
    tmpfs: int = 64 * 1024**2
    priority: int | None = None
    pull: str = "missing"

    @classmethod
    def build(cls, **values: Any) -> "JobSpec":
        """Validate raw values (sizes as strings allowed) and return a spec."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise _fail(unknown[0], "unknown job option")
        values = {k: v for k, v in values.items() if v is not None or k in ("entry",)}
        spec = cls(**_normalise(values))
        spec.validate()
        return spec

    @classmethod
    def from_dict(cls, data: Any) -> "JobSpec":
        """Rebuild a spec from its wire form, validating everything."""
        if not isinstance(data, dict):
            raise _fail("spec", "missing or not an object")
        try:
            return cls.build(**data)
        except InvalidJobSpec:
            raise
        except (TypeError, ValueError, AttributeError) as exc:  # e.g. a required field missing
            raise _fail("spec", f"malformed: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON wire form."""
        data = dataclasses.asdict(self)
        data["command"] = list(self.command)
        data["retry_on"] = list(self.retry_on)
        return data

    def with_overrides(self, **overrides: Any) -> "JobSpec":
        """A copy with per-call overrides applied and validated."""
        bad = sorted(set(overrides) - set(RESOURCE_FIELDS))
        if bad:
            raise _fail(bad[0], "cannot be overridden per call")
        data = self.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        if "memory" in overrides and "memory_limit" not in overrides:
            data["memory_limit"] = None
        if "cpus" in overrides and "cpus_limit" not in overrides:
            data["cpus_limit"] = None
        return JobSpec.build(**data)

    @property
    def effective_memory_limit(self) -> int:
        """The container's memory limit in bytes (memory+swap is set equal)."""
        return self.memory_limit or self.memory

    @property
    def effective_cpus_limit(self) -> float:
        """The container's CPU quota, in CPUs."""
        return self.cpus_limit or self.cpus

    def scaled_memory(self, scale: float) -> "JobSpec":
        """A copy whose memory request and limit are ``scale`` times larger, capped."""
        if scale <= 1:
            return self
        cap = self.retry_memory_max or max(self.effective_memory_limit, self.memory) * 1024
        memory = min(int(self.memory * scale), cap)
        limit = min(int(self.effective_memory_limit * scale), cap)
        return dataclasses.replace(self, memory=memory, memory_limit=max(limit, memory))

    def describe(self) -> str:
        """One line for logs: name, image and resources."""
        return (
            f"{self.name} image={self.image} cpus={self.cpus:g} "
            f"memory={format_memory(self.memory)} limit={format_memory(self.effective_memory_limit)} "
            f"timeout={self.timeout:g}s"
        )

    def validate(self) -> None:
        """Raise :class:`InvalidJobSpec` naming the first bad field."""
        self._validate_what()
        self._validate_resources()
        self._validate_placement()
        self._validate_retries()
        self._validate_rest()

    def _validate_what(self) -> None:
        _check(isinstance(self.name, str) and bool(_NAME.match(self.name)), "name",
               f"{self.name!r} is not a job name (letters, digits, '._-')")
        _check(self.kind in (PYTHON, COMMAND), "kind", f"must be {PYTHON!r} or {COMMAND!r}")
        parse_image_ref(self.image)  # the image stays as given; policy and pulls normalise it

    def _validate_resources(self) -> None:
        _check_number("cpus", self.cpus, 0.0, 1024.0)
        if self.cpus_limit is not None:
            _check_number("cpus_limit", self.cpus_limit, 0.0, 1024.0)
            _check(self.cpus_limit >= self.cpus, "cpus_limit", "must not be below cpus")
        _check(self.memory >= MIN_MEMORY, "memory", f"must be at least {format_memory(MIN_MEMORY)}")
        if self.memory_limit is not None:
            _check(self.memory_limit >= self.memory, "memory_limit", "must not be below memory")
        _check(isinstance(self.pids, int) and 8 <= self.pids <= 1_000_000, "pids", "must be an integer from 8")
        _check_number("timeout", self.timeout, 0.0, MAX_TIMEOUT)

    def _validate_placement(self) -> None:
        _check(self.pull in PULL_POLICIES, "pull", f"must be one of {', '.join(PULL_POLICIES)}")
        _check(self.network in NETWORK_MODES, "network", f"must be one of {', '.join(NETWORK_MODES)}")
        _check(isinstance(self.env, dict), "env", "must be a mapping of names to strings")
        for key, value in self.env.items():
            _check(isinstance(key, str) and bool(_ENV_NAME.match(key)), "env", f"{key!r} is not a variable name")
            _check(not key.startswith("JOBYARD_"), "env", f"{key!r}: JOBYARD_* names are reserved")
            _check(isinstance(value, str), "env", f"{key}: value must be a string")
        _check(isinstance(self.queue, str) and bool(_QUEUE.match(self.queue)), "queue",
               f"{self.queue!r} is not a queue name")

    def _validate_retries(self) -> None:
        _check(isinstance(self.retries, int) and not isinstance(self.retries, bool)
               and 0 <= self.retries <= MAX_RETRIES, "retries", f"must be 0..{MAX_RETRIES}")
        for item in self.retry_on:
            ok = item in RETRY_CLASSES or (isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= 255)
            _check(ok, "retry_on", f"{item!r} is not one of {', '.join(RETRY_CLASSES)} or an exit code 1..255")
        _check(isinstance(self.retry_delay, (int, float)) and 0 <= self.retry_delay <= 3600, "retry_delay",
               "must be 0..3600 seconds")
        if self.retry_memory_factor is not None:
            _check(isinstance(self.retry_memory_factor, (int, float)) and 1 <= self.retry_memory_factor <= 16,
                   "retry_memory_factor", "must be from 1 to 16")
        if self.retry_memory_max is not None:
            _check(self.retry_memory_max >= self.memory, "retry_memory_max", "must not be below memory")

    def _validate_rest(self) -> None:
        _check(isinstance(self.tmpfs, int) and MIN_MEMORY <= self.tmpfs <= 64 * 1024**3, "tmpfs",
               "must be a size from 6Mi")
        if self.priority is not None:
            _check(isinstance(self.priority, int) and 0 <= self.priority <= 9, "priority", "must be 0..9")
        if self.kind == PYTHON:
            _check(isinstance(self.entry, str) and bool(_ENTRY.match(self.entry)), "entry",
                   f"{self.entry!r} is not 'module:function' (a function defined at module level)")
        else:
            _check(bool(self.command) and all(isinstance(a, str) for a in self.command), "command",
                   "must be a non-empty list of strings (an argv, never a shell string)")


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise _fail(field_name, message)


def _check_number(field_name: str, value: Any, low: float, high: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high
    _check(ok, field_name, f"must be a number above {low:g} and at most {high:g}, got {value!r}")


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in ("memory", "memory_limit", "tmpfs", "retry_memory_max"):
        if out.get(name) is not None:
            try:
                out[name] = parse_memory(out[name])
            except ValueError as exc:
                raise _fail(name, str(exc)) from None
    if "command" in out:
        command = out["command"]
        if isinstance(command, str):
            raise _fail("command", "must be a list of arguments, not a shell string")
        try:
            out["command"] = tuple(command)
        except TypeError:
            raise _fail("command", "must be a list of strings") from None
    if "retry_on" in out:
        if isinstance(out["retry_on"], (str, int)):
            out["retry_on"] = (out["retry_on"],)
        try:
            out["retry_on"] = tuple(out["retry_on"])
        except TypeError:
            raise _fail("retry_on", "must be a list of failure classes or exit codes") from None
    if "env" in out and out["env"] is not None and not isinstance(out["env"], dict):
        raise _fail("env", "must be a mapping of names to strings")
    if isinstance(out.get("cpus"), str):
        out["cpus"] = _parse_cpus(out["cpus"], "cpus")
    if isinstance(out.get("cpus_limit"), str):
        out["cpus_limit"] = _parse_cpus(out["cpus_limit"], "cpus_limit")
    return out


def _parse_cpus(text: str, field_name: str) -> float:
    """CPUs as '0.5', '2' or Kubernetes millicores '500m'."""
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 1000.0
        return float(text)
    except ValueError:
        raise _fail(field_name, f"{text!r} is not a CPU count") from None


def render_command(command: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Fill ``{name}`` placeholders from ``kwargs`` and append ``args`` to the argv.

    Every value becomes exactly one argument; nothing passes through a shell.
    ``{{`` and ``}}`` stand for literal braces.
    """
    def fill(arg: str) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key is None:
                return match.group(0)[0]
            if key not in kwargs:
                raise _fail("command", f"placeholder {{{key}}} has no value in the call")
            return _argument(kwargs[key], key)
        return _PLACEHOLDER.sub(one, arg)

    used = {m.group(1) for arg in command for m in _PLACEHOLDER.finditer(arg) if m.group(1)}
    extra = sorted(set(kwargs) - used)
    if extra:
        raise _fail("kwargs", f"{extra[0]!r} matches no placeholder in the command")
    return [fill(arg) for arg in command] + [_argument(a, "args") for a in args]


def _argument(value: Any, field_name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(field_name, f"command arguments must be strings or numbers, got {type(value).__name__}")
    return str(value)
