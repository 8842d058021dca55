"""Typed records: each writes today's wire layout, reads it back, and skips what is malformed."""

import json
import logging

import pytest

from tasks.errors import JobyardError, RecordError
from tasks.records import (AgentState, DeadLetter, Decision, HeldJob, HostOffer, JobFacts, RejectedMessage,
                           Resources)

pytestmark = pytest.mark.pure

Mi = 1024**2

#: What executor.agent.Agent.state() has always published, field for field and in order.
AGENT_WIRE = {
    "hostname": "h1", "worker": "jobyard@h1", "draining": False, "max_jobs": 16,
    "waiting": [{"task_id": "w1", "name": "big", "cpus": 2.0, "memory": 512 * Mi, "started": 5.5, "timeout": 60.0}],
    "queues": ["default", "gpu"], "capacity": {"cpus": 4.0, "memory": 2048 * Mi},
    "reserved": {"cpus": 0.5, "memory": 64 * Mi},
    "running": [{"task_id": "r1", "name": "small", "cpus": 0.5, "memory": 64 * Mi, "started": 1.0, "timeout": 30.0}],
    "heartbeat": 1700000000.25, "pid": 4242,
}
#: What autoscaler.report.RedisReporter has always pushed for one tick.
DECISION_WIRE = {
    "time": 12.5, "ready": 3, "in_flight": 1, "running": 1, "waiting": 3, "demand_cpus": 1.5,
    "demand_memory": 3 * Mi, "hosts_current": 1, "hosts_desired": 2, "draining": 0, "decision": "scale-out",
    "count": 1, "reason": "backlog", "hosts": ["local-1"], "removed": [],
}
REJECTED_WIRE = {"reason": "not JSON", "queue": "default", "host": "h1", "at": 3.0, "size": 5, "truncated": False,
                 "raw_encoding": "utf-8", "raw": "hello"}


@pytest.mark.parametrize("cls, wire", [
    (AgentState, AGENT_WIRE),
    (Decision, DECISION_WIRE),
    (RejectedMessage, REJECTED_WIRE),
    (HostOffer, {"cpus": 2.0, "memory": 1024 * Mi, "queues": ["default"]}),
    (Resources, {"cpus": 1.5, "memory": 64 * Mi}),
    (HeldJob, AGENT_WIRE["running"][0]),
])
def test_json_records_write_todays_bytes_and_read_them_back(cls, wire):
    record = cls.from_json(json.dumps(wire))
    assert record.to_json() == json.dumps(wire)
    assert cls.from_json(record.to_json()) == record


@pytest.mark.parametrize("cls, fields", [
    (JobFacts, {"name": "f", "host": "h1", "state": "running", "attempt": 1, "cpus": 0.5, "memory": 64 * Mi,
                "container_id": None, "exit_code": 0, "oom_killed": False, "image_digest": "sha256:ab"}),
    (JobFacts, {"state": "SUCCESS", "something_new": {"kept": True}}),
    (DeadLetter, {"task_id": "t1", "died_at": 9.0, "name": "f", "reason": "oom", "attempt": 3,
                  "details": {"exit_code": 137}, "message": {"headers": {}}, "queue_key": "default",
                  "something_new": [1]}),
])
def test_hash_records_write_one_json_value_per_field_and_read_them_back(cls, fields):
    record = cls.from_json(fields)
    stored = record.to_redis()
    assert stored == {key: json.dumps(value) for key, value in fields.items() if value is not None}
    assert cls.from_redis(stored) == record
    assert record.get("something_new") == fields.get("something_new")


def test_agent_state_reads_older_states_with_fields_missing():
    state = AgentState.from_json({"hostname": "old", "capacity": {"cpus": 1, "memory": Mi}})
    assert state.worker == "jobyard@old" and state.queues == () and not state.busy
    assert state.reserved == Resources(0.0, 0) and state.has_room(Resources(1.0, Mi))
    assert state.capacity.cpus == 1.0 and isinstance(state.capacity.cpus, float)


def test_fields_a_newer_writer_adds_do_not_make_an_entry_malformed():
    assert Decision.from_json({**DECISION_WIRE, "new_field": 1}) == Decision.from_json(DECISION_WIRE)
    assert AgentState.from_json({**AGENT_WIRE, "new_field": 1}) == AgentState.from_json(AGENT_WIRE)


def test_a_hash_value_that_is_not_json_is_kept_as_text():
    assert JobFacts.from_redis({"state": "running", "exit_code": "0"}) == JobFacts(state="running", exit_code=0)


def _broken(wire, **changes):
    return {**wire, **changes}


@pytest.mark.parametrize("cls, raw", [
    (AgentState, "not json"),
    (AgentState, "[1, 2]"),
    (AgentState, json.dumps(_broken(AGENT_WIRE, hostname=None))),
    (AgentState, json.dumps(_broken(AGENT_WIRE, hostname=""))),
    (AgentState, json.dumps({"hostname": "h1"})),  # no capacity
    (AgentState, json.dumps(_broken(AGENT_WIRE, capacity={"cpus": "lots", "memory": 1}))),
    (AgentState, json.dumps(_broken(AGENT_WIRE, running=[{"cpus": 1}]))),  # a job without a task id
    (AgentState, json.dumps(_broken(AGENT_WIRE, running="r1"))),
    (AgentState, json.dumps(_broken(AGENT_WIRE, queues="default"))),
    (AgentState, json.dumps(_broken(AGENT_WIRE, pid="4242"))),
    (Resources, json.dumps({"cpus": True, "memory": 1})),
    (Resources, json.dumps({"cpus": 1, "memory": 1.5})),
    (HostOffer, json.dumps({"cpus": 1, "memory": Mi, "queues": [1]})),
    (HostOffer, json.dumps({"memory": Mi})),
    (Decision, json.dumps(_broken(DECISION_WIRE, time="yesterday"))),
    (Decision, json.dumps(_broken(DECISION_WIRE, hosts="local-1"))),
    (RejectedMessage, json.dumps({"raw": "x"})),
    (RejectedMessage, json.dumps(_broken(REJECTED_WIRE, at="now"))),
    (DeadLetter, {"task_id": 5, "died_at": 1.0}),
    (DeadLetter, {"task_id": "t", "died_at": "then"}),
    (DeadLetter, {"task_id": "t", "died_at": 1.0, "bogus": object()}.items()),  # not a mapping
])
def test_malformed_entries_are_skipped_with_a_warning(cls, raw, caplog):
    with pytest.raises(RecordError) as caught:
        cls.from_json(raw)
    assert isinstance(caught.value, JobyardError) and cls.__name__ in str(caught.value)
    with caplog.at_level(logging.WARNING, logger="tasks.records"):
        assert cls.parse(raw) is None
    assert "malformed" in caplog.text


def test_a_malformed_hash_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.records"):
        assert DeadLetter.parse_redis({"task_id": "7", "died_at": '"then"'}) is None
    assert "DeadLetter" in caplog.text


def test_rejected_message_keeps_a_bounded_sample_as_text_or_base64():
    text = RejectedMessage.of(b"abc" * 10, "why", "q", "h", sample_bytes=4)
    assert (text.raw, text.raw_encoding, text.size, text.truncated) == ("abca", "utf-8", 30, True)
    binary = RejectedMessage.of(b"\xff\xfe", "why", None, None)
    assert (binary.raw, binary.raw_encoding, binary.truncated) == ("//4=", "base64", False)


def test_dead_letter_listing_leaves_the_stored_message_out():
    record = DeadLetter(task_id="t1", died_at=1.0, reason="oom", message={"headers": {}}, queue_key="q")
    assert record.listed() == {"task_id": "t1", "died_at": 1.0, "reason": "oom", "queue_key": "q"}


def test_empty_facts_read_as_no_facts():
    assert not JobFacts.from_redis({}) and JobFacts(state="running").running


@pytest.mark.parametrize("offer, queue, serves", [
    (HostOffer(Resources(1.0, Mi), ("a", "b")), "a", True),
    (HostOffer(Resources(1.0, Mi), ("a",)), "b", False),
    (HostOffer(Resources(1.0, Mi)), "any", True),
])
def test_host_offer_serves_its_queues(offer, queue, serves):
    assert offer.serves(queue) is serves


@pytest.mark.parametrize("request_, fits", [
    (Resources(2.0, 1024 * Mi), True),
    (Resources(2.0 + 1e-12, 1024 * Mi), True),  # float sums of requests: within the CPU epsilon
    (Resources(2.1, 1024 * Mi), False),
    (Resources(0.1, 1024 * Mi + 1), False),
])
def test_resources_hold_what_fits(request_, fits):
    assert Resources(2.0, 1024 * Mi).holds(request_) is fits


def test_agent_capacity_and_autoscaler_host_shape_are_one_record():
    from autoscaler.errors import ConfigError
    from autoscaler.shape import HostShape, host_shape
    from executor.capacity import Capacity

    assert Capacity is HostShape is Resources
    assert Capacity.detect(cpus=2, memory=Mi) == Resources(2.0, Mi)
    assert Resources(2.0, 1024 * Mi).describe() == "2 cpus, 1Gi"
    with pytest.raises(ConfigError):
        host_shape(0, Mi)
