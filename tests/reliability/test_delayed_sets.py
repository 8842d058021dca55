"""Delayed sets at the script level: the publish defers an eta still to come, the take
moves due jobs to the head of their list exactly once and defers eta messages it finds.

A real redis-server of the module's own (test_transport's fixtures); the real publish
(a kombu producer on jobyard's transport) and the real take script.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone

import pytest
import redis
from kombu import Connection, Exchange, Queue

from executor.channel import TAKING_TRANSPORT
from executor.take import TAKE, take_arguments
from tasks import keys
from tasks.transport import BELL_CAP, PUBLISH
from tests.reliability.test_transport import client, server  # noqa: F401 - the same own redis-server fixtures


def now(client) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def iso(when: float, tz: timezone = timezone.utc) -> str:
    return datetime.fromtimestamp(when, tz).isoformat()


def envelope(queue: str, eta: str | None = None) -> dict:
    return {"body": "x", "content-encoding": "utf-8", "content-type": "text/plain",
            "headers": {"id": uuid.uuid4().hex, "eta": eta},
            "properties": {"delivery_tag": uuid.uuid4().hex, "body_encoding": "base64",
                           "delivery_info": {"exchange": queue, "routing_key": queue}, "priority": 0}}


def take(client, queue: str):
    """One unsized take over ``queue``'s lists, as a consumer of ``queue``."""
    pairs = [(queue, key) for key in keys.priority_lists(queue)]
    script_keys, argv = take_arguments(["unacked", "unacked_index", keys.SKIPPED, keys.rejected()], pairs,
                                       [keys.reservations(queue)] * len(pairs), [keys.bell(queue)], None)
    return client.eval(TAKE, len(script_keys), *script_keys, *argv)


def taken_id(reply) -> str:
    return json.loads(reply[1])["headers"]["id"]


def test_a_published_countdown_waits_in_its_lists_delayed_set_scored_by_its_eta(client, server):
    due = now(client) + 30
    queue = Queue("later", Exchange("later"), "later")
    with Connection(server.url, transport=TAKING_TRANSPORT) as connection, connection.Producer() as producer:
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="later", declare=[queue],
                         headers={"id": "later-1", "eta": iso(due)})
        producer.publish({"n": 2}, exchange=queue.exchange, routing_key="later", priority=9,
                         headers={"id": "later-2", "eta": iso(due + 1)})
        producer.publish({"n": 3}, exchange=queue.exchange, routing_key="later",
                         headers={"id": "later-3", "eta": iso(due - 3600)})  # already due: queued
    assert client.llen("later") == 1 and client.llen(keys.bell("later")) == 1
    (raw, score), = client.zrange(keys.delayed("later"), 0, -1, withscores=True)
    assert json.loads(raw)["headers"]["id"] == "later-1" and score == pytest.approx(due, abs=1e-5)
    assert client.zcard(keys.delayed(keys.priority_lists("later")[-1])) == 1  # priority 9's own set
    assert client.exists(keys.published("later-1", 0))


@pytest.mark.parametrize("text, offset", [
    ("2031-02-28T23:59:59.250000+00:00", 0), ("2032-02-29T12:00:00+05:30", 5.5 * 3600),
    ("2031-12-31T22:00:00-02:00", -2 * 3600), ("2031-06-01T10:00:00Z", 0), ("2031-06-01 10:00", 0),
    ("2031-06-01T10:00:00+0100", 3600), ("2031-06-01T10:00:00-07", -7 * 3600)])
def test_the_scripts_read_eta_forms_as_python_does(client, text, offset):
    expected = datetime.fromisoformat(text.replace("Z", "+00:00"))
    expected = expected.replace(tzinfo=expected.tzinfo or timezone.utc).timestamp()
    message = json.dumps(envelope("forms", text))
    client.eval(PUBLISH, 3, "forms", keys.bell("forms"), keys.delayed("forms"), message, BELL_CAP, 60, text)
    assert client.zscore(keys.delayed("forms"), message) == pytest.approx(expected, abs=1e-5)


def test_an_unreadable_eta_is_queued_for_celery_to_refuse(client):
    message = json.dumps(envelope("odd", "next tuesday"))
    client.eval(PUBLISH, 3, "odd", keys.bell("odd"), keys.delayed("odd"), message, BELL_CAP, 60, "next tuesday")
    assert client.lrange("odd", 0, -1) == [message] and not client.exists(keys.delayed("odd"))


def test_the_take_defers_an_eta_message_it_finds_byte_for_byte_and_says_when_one_is_due(client):
    later = json.dumps(envelope("found", iso(now(client) + 20)))
    ready = envelope("found")
    client.lpush("found", later, json.dumps(ready))  # the eta message is the oldest
    client.lpush(keys.bell("found"), 1)
    assert taken_id(take(client, "found")) == ready["headers"]["id"]
    assert client.zrange(keys.delayed("found"), 0, -1) == [later] and client.llen("found") == 0
    assert json.loads(later)["properties"]["delivery_tag"] not in client.hgetall("unacked")
    due_in = float(take(client, "found"))  # empty: the consumer waits on doorbells no longer than this
    assert 18 < due_in <= 20 and not client.exists(keys.bell("found"))


def test_due_jobs_go_to_the_head_of_their_list_earliest_first_ringing_the_doorbell(client):
    current = now(client)
    first, second, waiting = envelope("due"), envelope("due"), envelope("due")
    client.zadd(keys.delayed("due"), {json.dumps(second): current - 1, json.dumps(first): current - 2,
                                      json.dumps(waiting): current + 60})
    queued = envelope("due")
    client.lpush("due", json.dumps(queued))
    assert taken_id(take(client, "due")) == first["headers"]["id"]
    assert client.llen(keys.bell("due")) == 2  # one ring per moved job, for other consumers
    assert [taken_id(take(client, "due")) for _ in range(2)] == [second["headers"]["id"], queued["headers"]["id"]]
    assert client.zcard(keys.delayed("due")) == 1 and isinstance(take(client, "due"), str)


def test_concurrent_takers_move_and_take_each_due_job_exactly_once(client, server):
    current = now(client)
    jobs = [envelope("many") for _ in range(300)]
    client.zadd(keys.delayed("many"), {json.dumps(job): current - 1 + n / 1000 for n, job in enumerate(jobs)})
    got: list[str] = []
    lock = threading.Lock()

    def taker():
        own = redis.Redis(port=server.port, decode_responses=True)
        while True:
            reply = take(own, "many")
            if not isinstance(reply, list):
                break
            with lock:
                got.append(taken_id(reply))
        own.close()

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(got) == sorted(job["headers"]["id"] for job in jobs)  # each once, none lost
    assert client.hlen("unacked") == 300 and client.zcard(keys.delayed("many")) == 0 and client.llen("many") == 0


def test_a_retry_with_a_countdown_is_deferred_with_its_marks_in_one_step(client):
    retry = envelope("again", iso(now(client) + 30))
    retry["headers"].update(id="again-1", retries=1)
    script_keys = ["again", keys.bell("again"), keys.delayed("again"), keys.published("again-1", 1),
                   keys.retried("again-1")]
    for _ in range(2):  # the second is Celery retrying a publish whose reply was lost: a no-op
        client.eval(PUBLISH, len(script_keys), *script_keys, json.dumps(retry), BELL_CAP, 60,
                    retry["headers"]["eta"], 1, keys.DELIVERY_TTL)
    assert client.zcard(keys.delayed("again")) == 1 and client.llen("again") == 0
    assert client.get(keys.retried("again-1")) == "1" and client.exists(keys.published("again-1", 1))
