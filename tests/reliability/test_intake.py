"""Bad input pushed straight into the Redis queue: refused once, set aside, never run.

Each message goes onto the agent's queue with LPUSH, exactly as kombu's Redis
transport would put it there (or not, for garbage). Before ``executor.intake``
several of these killed the agent outright (garbage, a JSON array, a body that is
not base64), and one of them came back after every restart.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import uuid

import pytest
from celery.exceptions import NotRegistered
from celery.result import AsyncResult

from tasks import keys
from tasks.errors import InvalidJobSpec
from tests.conftest import wait_for
from tests.reliability.messages import call_body, envelope, run_headers

QUEUE = "intake-test"
CAP = 256 * 1024
MARKER = os.path.join("/tmp", f"jobyard-intake-{uuid.uuid4().hex}")


class Exploit:
    """Unpickling this runs a shell command: proof that nothing unpickles it."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _queued(body: bytes, headers: dict | None, **options) -> bytes:
    return envelope(body, headers, queue=QUEUE, **options)


def _raw_dict(task_id: str) -> bytes:
    return json.dumps({"body": "e30=", "headers": run_headers(task_id)}).encode()


def _bad_base64(task_id: str) -> bytes:
    message = json.loads(_queued(call_body(), run_headers(task_id)))
    message["body"] = "!!not base64!!"
    return json.dumps(message).encode()


def _headers_list(task_id: str) -> bytes:
    message = json.loads(_queued(call_body(), run_headers(task_id)))
    message["headers"] = [task_id]
    return json.dumps(message).encode()


#: name -> (raw message for a task id, words in the refusal reason, error the caller sees)
CASES = {
    "garbage bytes": (lambda tid: b"\x00\xff\xfe garbage " + tid.encode(), "not UTF-8", None),
    "not JSON": (lambda tid: b"{{{ " + tid.encode(), "not JSON", None),
    "JSON array": (lambda tid: json.dumps([tid, 1, 2]).encode(), "not an object", None),
    "no properties": (_raw_dict, "no properties", None),
    "body not base64": (_bad_base64, "not base64", None),
    "headers not an object": (_headers_list, "headers are not an object", None),
    "no task headers": (lambda tid: _queued(call_body(), {"id": tid}), "lack task and id", None),
    "pickle content type": (lambda tid: _queued(pickle.dumps(Exploit()), run_headers(tid),
                                                content_type="application/x-python-serialize"),
                            "content type refused", None),
    "unknown task": (lambda tid: _queued(call_body(["id"]), run_headers(tid, task="os.system")),
                     "unknown task 'os.system'", NotRegistered),
    "celery built-in task": (lambda tid: _queued(call_body(), run_headers(tid, task="celery.backend_cleanup")),
                             "'celery.backend_cleanup' is not run by agents", NotRegistered),
    "no spec header": (lambda tid: _queued(call_body(), run_headers(tid, spec=None)),
                       "no jobyard_spec header", InvalidJobSpec),
    "spec header not an object": (lambda tid: _queued(call_body(), run_headers(tid, spec="echo pwned")),
                                  "no jobyard_spec header", InvalidJobSpec),
    "args not a list": (lambda tid: _queued(json.dumps(["abc", {}, {}]).encode(), run_headers(tid)),
                        "args is a str", InvalidJobSpec),
    "kwargs not an object": (lambda tid: _queued(json.dumps([[], [1], {}]).encode(), run_headers(tid)),
                             "kwargs is a list", InvalidJobSpec),
    "body not a call": (lambda tid: _queued(json.dumps({"args": []}).encode(), run_headers(tid)),
                        "body is not [args, kwargs, embed]", InvalidJobSpec),
    "body not JSON": (lambda tid: _queued(b"{{{", run_headers(tid)), "undecodable body", None),
    "oversized": (lambda tid: _queued(call_body(["A" * (CAP + 1)]), run_headers(tid)), "oversized", None),
}


@pytest.fixture(scope="module")
def intake_agent(agents):
    return agents.start("intake", "--cpus", "1", "--memory", "1Gi", "--queues", QUEUE,
                        env={"JOBYARD_MAX_MESSAGE": str(CAP)})


def _refusals(redis_client) -> list[dict]:
    return [json.loads(item) for item in redis_client.lrange(keys.rejected(), 0, -1)]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_message_is_refused_once_set_aside_and_never_run(case, intake_agent, redis_client, celery_app):
    build, reason, caller_error = CASES[case]
    task_id = str(uuid.uuid4())
    raw = build(task_id)
    seen = len(intake_agent.log())
    before = len(_refusals(redis_client))

    redis_client.lpush(QUEUE, raw)

    wait_for(lambda: len(_refusals(redis_client)) > before, timeout=15, message=f"{case} to be set aside")
    refusal = _refusals(redis_client)[0]
    assert reason in refusal["reason"], refusal["reason"]
    assert refusal["queue"] == QUEUE and refusal["size"] == len(raw)
    assert refusal["host"] == f"jobyard@{intake_agent.hostname}"
    time.sleep(0.5)  # a second log line or a crash would show by now
    new_log = intake_agent.log()[seen:]
    assert new_log.count("refused a message") == 1, new_log
    assert "Traceback" not in new_log and "CRITICAL" not in new_log, new_log
    assert intake_agent.alive
    assert redis_client.llen(QUEUE) == 0 and not _unacked_on(redis_client, QUEUE), "it must not come back"
    assert not redis_client.exists(keys.job_facts(task_id)), "the agent must never run it"
    assert not os.path.exists(MARKER), "a pickle was deserialised"
    if caller_error is not None:
        with pytest.raises(caller_error):
            AsyncResult(task_id, app=celery_app).get(timeout=10)


def _unacked_on(redis_client, queue: str) -> list:
    entries = [json.loads(v) for v in redis_client.hvals("unacked")]
    return [e for e in entries if e[2] == queue]


def test_refused_raw_message_is_kept_for_inspection(intake_agent, redis_client):
    from click.testing import CliRunner

    from jobyard.cli import main

    raw = b"not a message " + uuid.uuid4().hex.encode()
    redis_client.lpush(QUEUE, raw)
    wait_for(lambda: any(r["raw"] == raw.decode() for r in _refusals(redis_client)), timeout=15,
             message="the raw message in the rejected list")
    shown = CliRunner().invoke(main, ["rejected", "list"], catch_exceptions=False)
    assert shown.exit_code == 0 and QUEUE in shown.output and "not JSON" in shown.output, shown.output
    listed = CliRunner().invoke(main, ["rejected", "list", "--json"], catch_exceptions=False)
    assert any(r["raw"] == raw.decode() for r in json.loads(listed.output))
    purged = CliRunner().invoke(main, ["rejected", "purge"], catch_exceptions=False)
    assert purged.exit_code == 0 and "purged" in purged.output and not redis_client.exists(keys.rejected())


def test_well_formed_call_with_a_bad_spec_ends_as_invalid_job_spec(intake_agent, redis_client, celery_app):
    task_id = str(uuid.uuid4())
    spec = {"name": "bad.spec", "kind": "command", "command": ["echo"]}  # no image
    redis_client.lpush(QUEUE, _queued(call_body(), run_headers(task_id, spec=spec)))
    with pytest.raises(InvalidJobSpec) as caught:
        AsyncResult(task_id, app=celery_app).get(timeout=30)
    assert caught.value.field == "spec"
    assert not any(task_id in r["raw"] for r in _refusals(redis_client))


def test_good_jobs_run_after_bad_input_and_after_a_restart(intake_agent, agents, redis_client):
    from sample_jobs import add

    for case in CASES:
        redis_client.lpush(QUEUE, CASES[case][0](str(uuid.uuid4())))
    assert add.apply_async((2, 3), queue=QUEUE).get(timeout=60) == 5
    assert intake_agent.alive
    intake_agent.stop(timeout=20)
    restarted = agents.start("intake-again", "--cpus", "1", "--memory", "1Gi", "--queues", QUEUE,
                             env={"JOBYARD_MAX_MESSAGE": str(CAP)})
    assert add.apply_async((4, 5), queue=QUEUE).get(timeout=60) == 9
    assert "refused a message" not in restarted.log(), "a refused message came back after a restart"
