"""The intake's screening rules, table-driven (no services)."""

import json

import pytest

from executor.intake import call_problem, envelope_problem, headers_problem, raw_problem, rejection
from tests.reliability.messages import call_body, envelope, run_headers

pytestmark = pytest.mark.pure

GOOD = envelope(call_body([1], {"a": 2}), run_headers("id-1"))


def _with(**changes) -> dict:
    message = json.loads(GOOD)
    for dotted, value in changes.items():
        target = message
        *path, last = dotted.split("__")
        for part in path:
            target = target[part]
        target[last.replace("_", "-") if last in ("content_type", "content_encoding") else last] = value
    return message


def test_a_kombu_message_passes():
    assert raw_problem(GOOD, 1 << 20) is None


@pytest.mark.parametrize("raw, words", [
    (b"\xff\xfe", "not UTF-8"),
    (b"", "not JSON"),
    (b"[1]", "JSON list"),
    (b'"text"', "JSON str"),
    (b"x" * 101, "oversized"),
])
def test_raw_items_refused(raw, words):
    assert words in raw_problem(raw, 100)


@pytest.mark.parametrize("message, words", [
    ({}, "no properties"),
    (_with(properties=[]), "no properties"),
    (_with(properties__delivery_tag=5), "delivery_tag"),
    (_with(properties__delivery_tag=""), "delivery_tag"),
    (_with(properties__delivery_info=None), "delivery_info"),
    (_with(properties__delivery_info={"exchange": ""}), "delivery_info"),
    (_with(content_type=1), "content-type"),
    (_with(headers="x"), "headers"),
    (_with(body=5), "body is not a string"),
    (_with(body="!!"), "not base64"),
    (_with(properties__body_encoding="rot13"), "body_encoding"),
])
def test_envelopes_refused(message, words):
    assert words in envelope_problem(message)


@pytest.mark.parametrize("headers, words", [
    (None, "no headers"),
    ({"task": "jobyard.run"}, "lack task and id"),
    ({"task": ["x"], "id": "1"}, "lack task and id"),
])
def test_headers_refused(headers, words):
    assert words in headers_problem(headers)


@pytest.mark.parametrize("headers, body, words", [
    (run_headers("1", spec=None), [[], {}, {}], "no jobyard_spec"),
    (run_headers("1", spec=[1]), [[], {}, {}], "no jobyard_spec"),
    (run_headers("1"), {"args": []}, "not [args, kwargs, embed]"),
    (run_headers("1"), [[], {}], "not [args, kwargs, embed]"),
    (run_headers("1"), ["ab", {}, {}], "args is a str"),
    (run_headers("1"), [[], [], {}], "kwargs is a list"),
    (run_headers("1"), [[], {}, "x"], "embed"),
    (run_headers("1", retries="2"), [[], {}, {}], "retries"),
    (run_headers("1", retries=-1), [[], {}, {}], "retries"),
])
def test_calls_refused(headers, body, words):
    assert words in call_problem(headers, body)


def test_a_call_with_a_bad_spec_still_passes_to_the_task():
    assert call_problem(run_headers("1", spec={"name": 5}), [[], {}, None]) is None


def test_rejection_keeps_a_bounded_sample():
    record = json.loads(rejection(b"\xff" * 100_000, "why", "q", "h"))
    assert record["truncated"] and record["size"] == 100_000 and record["raw_encoding"] == "base64"
    assert len(record["raw"]) < 30_000
