"""jobyard's Redis transport: taking a message records it in the same step; doorbells wake consumers.

Real redis-server of the module's own (so its memory limit can be squeezed), real
kombu connections on the ``redis-jobyard`` transport.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tasks import keys, transport
from tests.support.services import RedisServer, free_port, temp_dir


@pytest.fixture(scope="module")
def server():
    own = RedisServer(free_port(), temp_dir("jobyard-transport-")).start()
    yield own
    own.stop()


@pytest.fixture()
def client(server):
    made = redis.Redis(port=server.port, decode_responses=True)
    made.flushdb()
    yield made
    made.config_set("maxmemory", 0)
    made.close()


@pytest.fixture()
def connection(server):
    with Connection(server.url, transport="redis-jobyard") as conn:
        yield conn


def received(connection, queue: str, timeout: float) -> list:
    """Messages one consumer on ``queue`` gets within ``timeout`` seconds (left unacknowledged)."""
    got = []
    with connection.Consumer(Queue(queue, Exchange(queue), queue), callbacks=[lambda body, m: got.append(m)]):
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return got


def envelope(queue: str, body: str = "x") -> dict:
    """A kombu Redis envelope as a publisher leaves it on ``queue``'s list."""
    return {"body": body, "content-encoding": "utf-8", "content-type": "text/plain", "headers": {},
            "properties": {"delivery_tag": uuid.uuid4().hex, "body_encoding": "base64",
                           "delivery_info": {"exchange": queue, "routing_key": queue}, "priority": 0}}


def take(client, lists: list[str], queues: list[str]):
    """Run the take script over ``lists`` as a consumer of ``queues`` would."""
    bells = [keys.bell(q) for q in queues]
    return client.eval(transport.TAKE, 2 + len(lists) + len(bells), "unacked", "unacked_index", *lists, *bells,
                       time.time(), len(lists))


def test_a_taken_message_is_recorded_before_its_reply_leaves_redis(client):
    payload = envelope("q")
    client.lpush("q", json.dumps(payload))
    key, item, tag = take(client, ["q"], ["q"])
    # The reply could now be lost: the job is recorded, so a lease sweep requeues it.
    assert (key, tag) == ("q", payload["properties"]["delivery_tag"])
    assert client.llen("q") == 0
    record = json.loads(client.hget("unacked", tag))
    assert record == [payload, "q", "q"] and json.loads(item) == payload
    assert client.zscore("unacked_index", tag) == pytest.approx(time.time(), abs=5)


def test_take_keeps_kombus_order_and_refuses_to_record_what_is_not_an_envelope(client):
    client.lpush("q", json.dumps(envelope("q", "later")), json.dumps(envelope("q", "first")))
    client.lpush("q\x06\x163", json.dumps(envelope("q", "low priority")))
    client.lpush("other", "not json")
    order = ["q", "other", "q\x06\x163"]
    assert json.loads(take(client, order, ["q", "other"])[1])["body"] == "later"  # FIFO: first pushed
    assert json.loads(take(client, order, ["q", "other"])[1])["body"] == "first"
    assert take(client, order, ["q", "other"]) == ["other", "not json", None]  # returned unrecorded
    assert json.loads(take(client, order, ["q", "other"])[1])["body"] == "low priority"
    assert client.hlen("unacked") == 3


def test_an_empty_take_silences_its_queues_doorbells_only(client):
    client.lpush(keys.bell("q"), 1)
    client.lpush(keys.bell("elsewhere"), 1)
    assert take(client, ["q"], ["q"]) is None
    assert not client.exists(keys.bell("q")) and client.exists(keys.bell("elsewhere"))


def test_a_full_noeviction_redis_refuses_the_take_without_losing_the_message(client):
    payload = envelope("q")
    client.lpush("q", json.dumps(payload))
    client.set("ballast", "x" * 2_000_000)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1_000_000)
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        take(client, ["q"], ["q"])
    client.config_set("maxmemory", 0)
    assert json.loads(client.lindex("q", 0)) == payload and client.hlen("unacked") == 0


def test_publishing_rings_the_queues_doorbell_in_the_same_transaction(client, connection):
    queue = Queue("rung", Exchange("rung"), "rung")
    with connection.Producer() as producer:
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="rung", declare=[queue])
    assert client.llen("rung") == 3 and client.llen(keys.bell("rung")) == 3


def test_a_consumer_takes_through_the_script_and_acks_clear_the_record(client, connection):
    queue = Queue("consumed", Exchange("consumed"), "consumed")
    with connection.Producer() as producer:
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="consumed", declare=[queue])
    got = received(connection, "consumed", timeout=5)
    assert [m.payload for m in got] == [{"n": 1}]
    assert client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
    got[0].ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_a_message_pushed_without_ringing_is_still_taken_within_the_doorbell_timeout(client, connection):
    queue = Queue("silent", Exchange("silent"), "silent")
    with connection.Consumer(queue):  # declares the binding
        pass
    assert received(connection, "silent", timeout=0.5) == []  # the consumer now waits on the doorbell
    body = base64.b64encode(json.dumps({"n": 2}).encode()).decode()
    client.lpush("silent", json.dumps({**envelope("silent"), "body": body, "content-type": "application/json"}))
    started = time.monotonic()
    got = received(connection, "silent", timeout=5)
    assert len(got) == 1 and got[0].payload == {"n": 2}
    assert time.monotonic() - started < connection.default_channel.brpop_timeout + 1.5
