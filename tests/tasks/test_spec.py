"""Table tests for spec validation, memory parsing and argv rendering (pure)."""

import pytest

from tasks.errors import InvalidJobSpec
from tasks.spec import JobSpec, render_command
from tasks.units import format_memory, parse_memory

pytestmark = pytest.mark.pure

MI = 1024**2
GI = 1024**3


@pytest.mark.parametrize("text, expected", [
    ("512m", 512 * MI), ("512M", 512 * MI), ("1g", GI), ("1G", GI), ("256Mi", 256 * MI),
    ("1Gi", GI), ("1.5Gi", int(1.5 * GI)), ("100k", 100 * 1024), ("64mb", 64 * MI),
    ("1048576", MI), (1048576, MI), ("2Ti", 2 * 1024**4), (" 8 Mi ", 8 * MI),
])
def test_parse_memory_accepts_docker_and_kubernetes_forms(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "12xb", "-5m", "1.2.3g", "Mi", True, None, [1]])
def test_parse_memory_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_format_memory_round_numbers():
    assert format_memory(256 * MI) == "256Mi"
    assert format_memory(int(1.5 * GI)) == "1.5Gi"
    assert format_memory(512) == "512B"


def _spec(**overrides):
    values = dict(name="reports.grade", kind="python", entry="reports:grade", image="jobyard/python:latest")
    values.update(overrides)
    return JobSpec.build(**values)


@pytest.mark.parametrize("field, value", [
    ("memory", "lots"), ("memory", "1k"), ("memory", -1), ("cpus", 0), ("cpus", -1), ("cpus", "x"),
    ("cpus", True), ("pids", 0), ("pids", "many"), ("timeout", 0), ("timeout", 10**9),
    ("image", "Bad Image!"), ("image", ""), ("network", "host"), ("queue", "no spaces"),
    ("env", {"1BAD": "x"}), ("env", {"JOBYARD_ATTEMPT": "9"}), ("env", {"OK": 3}), ("env", "A=1"),
    ("retries", -1), ("priority", 12), ("entry", "no_colon"), ("name", "has space"),
    ("memory_limit", "1Mi"), ("cpus_limit", 0.1), ("bogus", 1), ("pull", "sometimes"), ("pull", ["always"]),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(InvalidJobSpec) as info:
        _spec(**{field: value})
    assert info.value.field == field
    assert field in str(info.value)


def test_command_must_be_an_argv_not_a_shell_string():
    with pytest.raises(InvalidJobSpec) as info:
        JobSpec.build(name="x", kind="command", image="busybox", command="echo hi; rm -rf /")
    assert info.value.field == "command"


def test_good_spec_round_trips_through_its_wire_form():
    spec = _spec(memory="256Mi", memory_limit="512Mi", cpus="500m", env={"MODE": "fast"}, priority=3)
    assert spec.memory == 256 * MI and spec.effective_memory_limit == 512 * MI
    assert spec.cpus == 0.5 and spec.effective_cpus_limit == 0.5
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_overrides_reset_limits_that_followed_the_request():
    spec = _spec(memory="128Mi")
    bigger = spec.with_overrides(memory="1Gi")
    assert bigger.memory == GI and bigger.effective_memory_limit == GI
    with pytest.raises(InvalidJobSpec) as info:
        spec.with_overrides(entry="other:fn")
    assert info.value.field == "entry"


def test_pull_defaults_to_missing_and_is_overridable_per_call():
    spec = _spec()
    assert spec.pull == "missing"
    again = JobSpec.from_dict(spec.with_overrides(pull="always").to_dict())
    assert again.pull == "always"


def test_from_dict_refuses_non_objects():
    for raw in (None, "spec", [1, 2]):
        with pytest.raises(InvalidJobSpec):
            JobSpec.from_dict(raw)


@pytest.mark.parametrize("command, args, kwargs, expected", [
    (("echo", "{msg}"), (), {"msg": "a b; rm -rf /"}, ["echo", "a b; rm -rf /"]),
    (("cp", "{src}", "{dst}"), (), {"src": "x", "dst": 2}, ["cp", "x", "2"]),
    (("ls",), ("-l", "/tmp"), {}, ["ls", "-l", "/tmp"]),
    (("tool", "--n={n}"), ("extra",), {"n": 5}, ["tool", "--n=5", "extra"]),
    (("awk", "{{print $1}}", "{f}"), (), {"f": "x"}, ["awk", "{print $1}", "x"]),
])
def test_render_command_makes_one_argument_per_value(command, args, kwargs, expected):
    assert render_command(command, args, kwargs) == expected


@pytest.mark.parametrize("command, args, kwargs, field", [
    (("echo", "{missing}"), (), {}, "command"),
    (("echo",), (), {"unused": 1}, "kwargs"),
    (("echo",), ({"a": 1},), {}, "args"),
])
def test_render_command_refuses_what_cannot_be_an_argument(command, args, kwargs, field):
    with pytest.raises(InvalidJobSpec) as info:
        render_command(command, args, kwargs)
    assert info.value.field == field
