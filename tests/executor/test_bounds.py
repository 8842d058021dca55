"""What the agent keeps of job-written text and result files: table tests (no containers)."""

import json
import os

import pytest

from executor.bounds import (CUT, ERROR_BYTES, LINE_BYTES, MESSAGE_BYTES, NAME_BYTES, TRACEBACK_BYTES,
                             clip_facts, head, result_problem, tail, text)
from executor.container import JobCall, Outcome
from executor.deadletter import DeadLetters
from executor.results import _read_result
from executor.verdict import verdict
from tasks.errors import JobFailed, ResultTooLarge
from tasks.spec import JobSpec

KIB = 1024
MIB = 1024 * KIB


@pytest.mark.parametrize("value, limit, expected", [
    ("short", 10, "short"),
    ("exactly10!", 10, "exactly10!"),
    ("eleven char", 10, "eleven ..."),
    ("ééééé", 10, "ééééé"),         # 10 bytes: fits
    ("éééééé", 10, "ééé..."),       # 12 bytes: cut on a character boundary
    ("€€€€", 8, "€..."),
    ("", 4, ""),
])
def test_head_keeps_the_start_within_the_byte_limit(value, limit, expected):
    assert head(value, limit) == expected
    assert len(head(value, limit).encode()) <= limit


@pytest.mark.parametrize("value, limit, expected", [
    ("short", 10, "short"),
    ("frame 1\nframe 2\nValueError", 13, "...ValueError"),
    ("éééééé", 10, "...ééé"),
    ("x" * 8 * MIB + "end", 16, "...xxxxxxxxxxend"),
])
def test_tail_keeps_the_end_within_the_byte_limit(value, limit, expected):
    assert tail(value, limit) == expected
    assert len(tail(value, limit).encode()) <= limit


@pytest.mark.parametrize("value, expected", [
    (None, ""),
    ("ValueError", "ValueError"),
    (["a", "list"], "['a', 'list']"),
    ({"k": 1}, "{'k': 1}"),
    (12, "12"),
    ("\ud800lone surrogate" * 100, None),   # not encodable as UTF-8: must not raise
])
def test_text_turns_any_json_field_into_bounded_text(value, expected):
    out = text(value, 64)
    assert len(out.encode("utf-8", "replace")) <= 64
    if expected is not None:
        assert out == expected


def test_clip_facts_cuts_each_known_fact_to_its_size_and_others_to_the_error_size():
    big = "y" * MIB
    clipped = clip_facts({"exc_type": big, "exc_module": big, "remote_message": big, "traceback": big + "end",
                          "log_tail": big + "tail", "image": big, "exit_code": 1, "peak_memory": None})
    assert len(clipped["exc_type"]) <= NAME_BYTES and len(clipped["exc_module"]) <= NAME_BYTES
    assert len(clipped["remote_message"]) <= MESSAGE_BYTES
    assert len(clipped["traceback"]) <= TRACEBACK_BYTES and clipped["traceback"].endswith("end")
    assert len(clipped["log_tail"]) <= 4 * KIB and clipped["log_tail"].endswith("tail")
    assert len(clipped["image"]) <= ERROR_BYTES and clipped["image"].endswith(CUT)
    assert clipped["exit_code"] == 1 and clipped["peak_memory"] is None


@pytest.mark.parametrize("raw, problem", [
    (json.dumps({"value": list(range(1000))}), None),
    (json.dumps("a,b:[{" * 50_000), None),                         # structure inside a string is text
    (json.dumps(['\\"],[{' * 1000]), None),                        # escaped quotes stay inside the string
    ("[" + ",".join(["[]"] * 349_000) + "]", "values"),            # 1 MiB of [[],[],...]
    ('{"a": ' * 200_000 + "{}" + "}" * 200_000, "values"),         # 1.2 MB of {"a":{"a":...}}
    (json.dumps(list(range(200_000))), "values"),
    ("[" * 101 + "]" * 101, "depth"),
    ("[" * 100 + "]" * 100, None),
    ('["]]]]]",' + "[" * 101 + "]" * 101 + "]", "depth"),         # closers inside a string cannot hide depth
])
def test_result_problem_refuses_json_too_costly_to_parse(raw, problem):
    found = result_problem(raw.encode(), MIB)
    assert (found and next(iter(found))) == problem


def _outcome_of(tmp_path, content: bytes, cap=MIB):
    path = os.path.join(tmp_path, "result.json")
    with open(path, "wb") as handle:
        handle.write(content)
    result, refusal = _read_result(path, cap)
    return Outcome(container_id="c" * 64, exit_code=0 if result and result.get("ok") else 1,
                   result=result, refusal=refusal, logs="some output\nlast line")


def _call():
    return JobCall("t1", JobSpec.from_dict({"name": "jobs.f", "kind": "python", "entry": "jobs:f",
                                            "image": "img"}), (), {})


@pytest.mark.parametrize("content, size_over", [
    (json.dumps({"ok": True, "value": "x" * 2 * MIB}).encode(), True),
    (("[" * 5000 + "]" * 5000).encode(), False),      # today: RecursionError, not a typed error
    (b'{"ok": true, "value": [' + b"[]," * 300_000 + b"[]]}", False),
])
def test_a_refused_result_is_a_typed_error_naming_size_and_cap(tmp_path, content, size_over):
    outcome = _outcome_of(tmp_path, content)
    with pytest.raises(ResultTooLarge) as info:
        verdict(_call(), outcome, "host")
    assert isinstance(info.value, JobFailed)
    assert info.value.size == len(content) and info.value.limit == MIB
    if size_over:
        assert str(len(content)) in str(info.value) and str(MIB) in str(info.value)


@pytest.mark.parametrize("forged", [
    {"ok": False, "kind": "raised", "exc_type": "T" * 200_000, "exc_module": "M" * 200_000,
     "message": "E" * 200_000, "traceback": "F" * 200_000 + "last frame"},
    {"ok": False, "kind": ["unhashable"], "exc_type": {"a": "b" * 10_000}, "exc_module": 7,
     "message": ["m" * 10_000], "traceback": None},
])
def test_every_job_written_field_of_a_failure_is_cut(forged):
    outcome = Outcome(container_id="c" * 64, exit_code=1, result=forged)
    with pytest.raises(JobFailed) as info:
        verdict(_call(), outcome, "host")
    error = info.value
    assert len(error.exc_type) <= NAME_BYTES and len(error.exc_module) <= NAME_BYTES
    assert len(error.remote_message) <= MESSAGE_BYTES
    assert len(error.traceback) <= TRACEBACK_BYTES
    assert len(str(error).encode()) <= NAME_BYTES + MESSAGE_BYTES + 100
    if forged["traceback"]:
        assert error.traceback.endswith("last frame")


def test_a_command_jobs_exit_message_quotes_a_bounded_last_line():
    spec = JobSpec.from_dict({"name": "tools.fail", "kind": "command", "command": ["false"], "image": "img"})
    outcome = Outcome(container_id="c" * 64, exit_code=3, logs="first\n" + "L" * 8 * MIB + "\n")
    with pytest.raises(JobFailed) as info:
        verdict(JobCall("t2", spec, (), {}), outcome, "host")
    assert len(str(info.value)) <= LINE_BYTES + 100 and "code 3" in str(info.value)
    assert len(info.value.log_tail) <= 4 * KIB


def test_the_dead_letter_store_keeps_bounded_error_text(redis_client):
    task_id = "bounds-dead-letter-test"
    big = "e" * 8 * MIB
    record = {"name": "jobs.f", "reason": "failed", "error": big, "why": big,
              "details": {"remote_message": big, "log_tail": big, "exc_type": big, "exit_code": 1}}
    store = DeadLetters(redis_client)
    try:
        store.add(task_id, record, None, None)
        stored = redis_client.hgetall(f"jobyard:dead:{task_id}")
        assert sum(len(v) for v in stored.values()) <= 20 * KIB
        assert json.loads(stored["details"])["exit_code"] == 1
    finally:
        store.purge([task_id])
