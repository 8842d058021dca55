"""jobyard's Redis transport: taking a message records it in the same step; doorbells wake consumers.

Real redis-server of the module's own (so its memory limit can be squeezed), real
kombu connections on the agent's taking transport (``executor.channel``).
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import redis
from kombu import Connection, Exchange, Queue

from executor.retry import MEMORY_SCALE_HEADER as SCALE_HEADER
from executor.channel import TAKING_TRANSPORT
from executor.take import LOOK_AHEAD, TAKE, TakeLimits, release_reservations, take_arguments
from tasks import keys
from tasks.transport import RESERVATION_LIFETIME, queue_of
from tasks.names import SPEC_HEADER
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
    with Connection(server.url, transport=TAKING_TRANSPORT) as conn:
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


def take(client, lists: list[str], queues: list[str], limits: TakeLimits | None = None):
    """Run the take script over ``lists`` as a consumer of ``queues`` would."""
    pairs = [(queue_of(key), key) for key in lists]
    script_keys, argv = take_arguments(["unacked", "unacked_index", keys.SKIPPED, keys.rejected()], pairs,
                                                 [keys.reservations(q) for q, _ in pairs],
                                                 [keys.bell(q) for q in queues], limits, SPEC_HEADER, SCALE_HEADER)
    return client.eval(TAKE, len(script_keys), *script_keys, *argv)


def test_a_taken_message_is_recorded_before_its_reply_leaves_redis(client):
    payload = envelope("q")
    client.lpush("q", json.dumps(payload))
    key, item, tag = take(client, ["q"], ["q"])
    # The reply could now be lost: the job is recorded, so a lease sweep requeues it.
    assert (key, tag) == ("q", payload["properties"]["delivery_tag"])
    assert client.llen("q") == 0
    record = json.loads(client.hget("unacked", tag))
    assert record == [payload, "q", "q"] and json.loads(item) == payload
    assert client.zscore("unacked_index", tag) == pytest.approx(time.time(), abs=5)  # the server's clock


def test_take_keeps_kombus_order_and_sets_aside_what_is_not_an_envelope(client):
    client.lpush("q", json.dumps(envelope("q", "later")), json.dumps(envelope("q", "first")))
    client.lpush("q\x06\x163", json.dumps(envelope("q", "low priority")))
    client.lpush("other", "not json")
    order = ["q", "other", "q\x06\x163"]
    assert json.loads(take(client, order, ["q", "other"])[1])["body"] == "later"  # FIFO: first pushed
    assert json.loads(take(client, order, ["q", "other"])[1])["body"] == "first"
    assert take(client, order, ["q", "other"])[:3] == ["other", None, None]  # set aside, not returned
    assert json.loads(take(client, order, ["q", "other"])[1])["body"] == "low priority"
    assert client.hlen("unacked") == 3 and client.llen(keys.rejected()) == 1


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


MI = 1024**2


def job(queue: str, cpus: float, memory_mi: int, **headers) -> dict:
    """An envelope whose spec header requests ``cpus`` and ``memory_mi`` MiB."""
    payload = envelope(queue, f"{cpus}/{memory_mi}")
    payload["headers"] = {SPEC_HEADER: {"cpus": cpus, "memory": memory_mi * MI}, **headers}
    return payload


def limits(free=(1.0, 512), host=(2.0, 1024), largest=(4.0, 2048), bound=30.0, holder="a",
           reserving=1) -> TakeLimits:
    return TakeLimits(free_cpus=free[0], free_memory=free[1] * MI, host_cpus=host[0],
                                host_memory=host[1] * MI, bound=bound, largest={"q": (largest[0], largest[1] * MI)},
                                holder=holder, reserving={"q": reserving})


def alive(client, *hosts: str) -> None:
    """Publish a (bare) state for ``hosts``: a reservation is live only while its holder's is."""
    for host in hosts:
        client.set(keys.agent(host), "{}", ex=60)


def queued(client, *payloads: dict) -> None:
    """Queue ``payloads`` on list q, the first one oldest."""
    client.lpush("q", *[json.dumps(p) for p in payloads])


def body(reply) -> str:
    return json.loads(reply[1])["body"]


def test_take_passes_over_what_does_not_fit_now_for_the_oldest_that_does(client):
    queued(client, job("q", 0.5, 900), job("q", 2.0, 100), job("q", 0.5, 256), job("q", 0.25, 64))
    assert body(take(client, ["q"], ["q"], limits())) == "0.5/256"
    # Both passed-over jobs could run on this host later: their wait is on the clock.
    assert client.zcard(keys.SKIPPED) == 2
    assert [json.loads(i)["body"] for i in client.lrange("q", 0, -1)] == ["0.25/64", "2.0/100", "0.5/900"]


def test_nothing_fitting_leaves_every_message_and_doorbell_in_place(client):
    queued(client, job("q", 0.5, 900), job("q", 2.0, 100))
    client.lpush(keys.bell("q"), 1)
    assert take(client, ["q"], ["q"], limits()) == 0
    assert client.llen("q") == 2 and client.llen(keys.bell("q")) == 1 and client.hlen("unacked") == 0


def test_a_job_passed_over_past_the_bound_reserves_one_host_while_others_backfill(client):
    big = job("q", 0.5, 900)
    tag = big["properties"]["delivery_tag"]
    queued(client, big, job("q", 0.25, 64), job("q", 0.25, 64))
    alive(client, "a", "b")
    client.zadd(keys.SKIPPED, {tag: time.time() - 31})
    # Host a looks first: it reserves itself for the starving job and takes nothing behind it.
    assert take(client, ["q"], ["q"], limits(bound=30, holder="a")) == 1
    assert take(client, ["q"], ["q"], limits(bound=30, holder="a")) == 1
    assert client.hget(keys.reservations("q"), tag).startswith("a ")
    # Host b keeps backfilling: one host drains for the job, not the whole fleet.
    assert body(take(client, ["q"], ["q"], limits(bound=30, holder="b"))) == "0.25/64"
    # Once a's capacity frees, the starving job itself is what a takes; the reservation ends.
    assert body(take(client, ["q"], ["q"], limits(free=(2.0, 1024), bound=30, holder="a"))) == "0.5/900"
    assert client.zcard(keys.SKIPPED) == 0 and client.hlen(keys.reservations("q")) == 0
    assert body(take(client, ["q"], ["q"], limits(bound=30, holder="a"))) == "0.25/64"


def test_reservations_per_queue_are_capped_and_one_per_host(client):
    first, second, small = job("q", 0.5, 900), job("q", 0.5, 900), job("q", 0.25, 64)
    queued(client, first, second, small)
    alive(client, "a", "b", "c")
    client.zadd(keys.SKIPPED, {m["properties"]["delivery_tag"]: time.time() - 31 for m in (first, second)})
    assert take(client, ["q"], ["q"], limits(holder="a", reserving=2)) == 1
    # b may reserve the second starving job (cap 2); c may not (cap reached) and backfills.
    assert take(client, ["q"], ["q"], limits(holder="b", reserving=2)) == 1
    holders = {v.split()[0]: t for t, v in client.hgetall(keys.reservations("q")).items()}
    assert holders == {"a": first["properties"]["delivery_tag"], "b": second["properties"]["delivery_tag"]}
    assert body(take(client, ["q"], ["q"], limits(holder="c", reserving=2))) == "0.25/64"


def test_a_reservation_whose_holder_is_gone_passes_to_a_live_host(client):
    big = job("q", 0.5, 900)
    tag = big["properties"]["delivery_tag"]
    queued(client, big, job("q", 0.25, 64))
    client.zadd(keys.SKIPPED, {tag: time.time() - 31})
    alive(client, "b")
    client.hset(keys.reservations("q"), tag, f"dead {time.time()}")  # its holder's state has expired
    assert take(client, ["q"], ["q"], limits(holder="b")) == 1
    assert client.hget(keys.reservations("q"), tag).startswith("b ")
    # A holder that stops looking at the job loses it after the reservation's lifetime.
    client.hset(keys.reservations("q"), tag, f"b {time.time() - RESERVATION_LIFETIME - 1}")
    alive(client, "c")
    assert take(client, ["q"], ["q"], limits(holder="c")) == 1
    assert client.hget(keys.reservations("q"), tag).startswith("c ")


def test_a_job_no_host_can_hold_is_taken_to_be_rejected_and_one_for_a_bigger_host_is_left(client):
    queued(client, job("q", 1.0, 1500), job("q", 1.0, 4096), job("q", 0.25, 64))
    # 1500Mi fits only the bigger host: left for it, and not on this host's clock.
    assert body(take(client, ["q"], ["q"], limits())) == "1.0/4096"
    assert body(take(client, ["q"], ["q"], limits())) == "0.25/64"
    assert client.zcard(keys.SKIPPED) == 0 and client.llen("q") == 1


def test_a_retry_with_scaled_memory_is_sized_at_its_scaled_request(client):
    queued(client, job("q", 0.5, 300, **{SCALE_HEADER: 2.0}), job("q", 0.5, 400))
    assert body(take(client, ["q"], ["q"], limits())) == "0.5/400"  # 600Mi does not fit 512Mi free


def test_look_ahead_is_bounded(client):
    queued(client, *[job("q", 0.5, 900) for _ in range(LOOK_AHEAD)], job("q", 0.25, 64))
    assert take(client, ["q"], ["q"], limits()) == 0
    assert client.llen("q") == LOOK_AHEAD + 1


def test_a_draining_host_releases_its_reservations(client):
    client.hset(keys.reservations("q"), mapping={"t1": f"a {time.time()}", "t2": f"b {time.time()}"})
    client.hset(keys.reservations("r"), "t3", f"a {time.time()}")
    assert release_reservations(client, ["q", "r"], "a") == 2
    assert list(client.hgetall(keys.reservations("q"))) == ["t2"] and not client.exists(keys.reservations("r"))


def test_acknowledging_through_a_closed_channel_leaves_the_record_instead_of_raising(connection, client):
    # A broker restart closes the consumer's channel while its job runs; Celery then
    # acknowledges through it from the worker's event loop, where an exception is fatal.
    body = base64.b64encode(json.dumps({"n": 1}).encode()).decode()
    client.lpush("closing", json.dumps({**envelope("closing"), "body": body, "content-type": "application/json"}))
    message = received(connection, "closing", timeout=5)[0]
    message.channel.close()
    message.channel._disconnect_pools()  # as kombu leaves a channel whose connection was lost
    message.ack()
    message.channel.basic_reject(message.delivery_tag, requeue=True)
    # Still recorded or back on its queue: either way the job is not lost.
    assert client.hlen("unacked") + client.llen("closing") == 1


def test_publish_and_take_run_after_the_server_lost_its_script_cache(client, connection):
    # SCRIPT FLUSH is what a restart or a failover to a replica leaves: scripts run
    # earlier on this same connection must still run, not fail with NOSCRIPT.
    queue = Queue("flushed", Exchange("flushed"), "flushed")
    with connection.Producer() as producer:
        for n in (1, 2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="flushed", declare=[queue],
                             headers={"id": f"flushed-{n}"})
            got = received(connection, "flushed", timeout=5)
            assert [m.payload for m in got] == [{"n": n}]
            got[0].ack()
            client.script_flush()
    assert client.hlen("unacked") == 0 and client.exists(keys.published("flushed-2", 0))


def publish_retry(connection, queue_name: str, task_id: str, retries: int) -> None:
    """Publish what Celery's retry number ``retries`` of ``task_id`` sends (its queue declared)."""
    queue = Queue(queue_name, Exchange(queue_name), queue_name)
    with connection.Producer() as producer:
        producer.publish({"n": retries}, exchange=queue.exchange, routing_key=queue_name,
                         headers={"id": task_id, "retries": retries})


def test_a_retrys_mark_is_written_with_its_message_and_only_raised(client, connection):
    Queue("marked", Exchange("marked"), "marked")(connection.default_channel).declare()
    publish_retry(connection, "marked", "marked-1", 2)
    assert client.llen("marked") == 1 and client.get(keys.retried("marked-1")) == "2"
    assert client.ttl(keys.retried("marked-1")) > 0
    publish_retry(connection, "marked", "marked-1", 1)  # an older retry, published late
    assert client.llen("marked") == 2 and client.get(keys.retried("marked-1")) == "2"


def test_a_refused_retry_publish_leaves_no_mark(client, connection):
    Queue("refused", Exchange("refused"), "refused")(connection.default_channel).declare()
    client.set("refused", "not a list")  # the queue's key is the wrong type: the push is refused
    with pytest.raises(Exception, match="WRONGTYPE"):
        publish_retry(connection, "refused", "refused-1", 1)
    assert not client.exists(keys.retried("refused-1"), keys.published("refused-1", 1))
    client.delete("refused")
    publish_retry(connection, "refused", "refused-1", 1)  # sent again, it is queued with its mark
    assert client.llen("refused") == 1 and client.get(keys.retried("refused-1")) == "1"


def deliverable(payload: dict) -> dict:
    """``payload`` with its body base64-encoded, as its envelope says, so a consumer can decode it."""
    return {**payload, "body": base64.b64encode(payload["body"].encode()).decode()}


def test_a_sized_take_reserves_after_the_server_lost_its_script_cache(client, server):
    alive(client, "a")
    options = {"take_limits": lambda queues: limits(holder="a", bound=0)}
    with Connection(server.url, transport=TAKING_TRANSPORT, transport_options=options) as sized:
        sized.default_channel.spec_header = SPEC_HEADER
        queued(client, deliverable(job("q", 0.25, 64)))
        assert [m.body for m in received(sized, "q", 5)] == [b"0.25/64"]
        client.script_flush()
        big = deliverable(job("q", 0.5, 900))
        queued(client, big)
        assert received(sized, "q", 1.5) == []  # 900Mi does not fit 512Mi free: this host reserves for it
    assert client.hget(keys.reservations("q"), big["properties"]["delivery_tag"]).startswith("a ")


def test_a_spec_with_a_lone_surrogate_escape_is_recorded_by_the_script_that_took_it(client):
    # Python's JSON reads a lone surrogate escape; Redis' cjson refuses it.
    payload = job("q", 0.25, 64)
    payload["headers"][SPEC_HEADER]["name"] = "\ud800"
    raw = json.dumps(payload)
    assert "\\ud800" in raw
    client.lpush("q", raw)
    tag = payload["properties"]["delivery_tag"]
    for sizing in (None, limits()):
        key, item, taken = take(client, ["q"], ["q"], sizing)
        # The script's reply is its one round trip: what it left in Redis is all a lost reply leaves.
        assert (key, item, taken) == ("q", raw, tag)
        assert client.llen("q") == 0 and json.loads(client.hget("unacked", tag))[0] == payload
        assert client.zscore("unacked_index", tag) is not None
        client.delete("unacked", "unacked_index")
        client.lpush("q", raw)


def test_basic_get_takes_through_the_script_so_a_refused_record_loses_nothing(client, connection):
    payload = deliverable(envelope("got"))
    client.lpush("got", json.dumps(payload))
    client.set("ballast", "x" * 2_000_000)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1_000_000)
    channel = connection.default_channel
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        channel.basic_get("got")
    client.config_set("maxmemory", 0)
    assert json.loads(client.lindex("got", 0)) == payload, "popped but never recorded: the job is lost"
    message = channel.basic_get("got")
    assert message.delivery_tag == payload["properties"]["delivery_tag"]
    assert client.llen("got") == 0 and client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
    message.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


GARBAGE = {
    "not JSON": (b"not json at all", "not JSON"),
    "not UTF-8": (b"\x00\xff\xfe garbage", "not UTF-8"),
    "JSON array": (b'["a", 1]', "not an object"),
    "no properties": (b'{"body": "e30="}', "no properties"),
    "no delivery tag": (b'{"properties": {"delivery_info": {}}}', "no delivery_tag"),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_is_set_aside_by_the_take_script_itself(case, server):
    raw, reason = GARBAGE[case]
    client = redis.Redis(port=server.port)
    client.flushdb()
    client.lpush("q", raw)
    take(client, ["q"], ["q"])
    assert client.llen("q") == 0 and client.hlen("unacked") == 0
    refusal = json.loads(client.lindex(keys.rejected(), 0))
    assert reason in refusal["reason"] and refusal["queue"] == "q" and refusal["size"] == len(raw)
    shown = raw.decode() if refusal["raw_encoding"] == "utf-8" else base64.b64decode(refusal["raw"])
    assert shown == (raw.decode() if refusal["raw_encoding"] == "utf-8" else raw)
    assert 0 < client.ttl(keys.rejected()) <= keys.REJECTED_TTL
    client.close()
