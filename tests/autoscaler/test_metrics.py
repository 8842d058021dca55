"""The metric source against a real Redis and a real agent: every place a job can be."""

import json

from tests.conftest import wait_for

Mi = 1024**2
Gi = 1024**3


def test_ready_counts_every_priority_list_and_sums_requests(redis_client, queue_name):
    from sample_jobs import add

    from autoscaler.metrics import BrokerMetrics
    from bench.keda_like import ListLengthMetrics
    from tasks.keys import priority_lists as priority_keys
    from tasks.state import state_client

    for priority, cpus in ((None, 0.5), (0, 0.25), (5, 1.0), (9, 2.0)):
        options = {} if priority is None else {"priority": priority}
        add.apply_async((1, 2), queue=queue_name, cpus=cpus, memory="100Mi", **options)
    used = [key for key in priority_keys(queue_name) if redis_client.llen(key)]
    assert len(used) >= 2, f"priorities did not reach sub-lists: {used}"

    observation = BrokerMetrics(state_client(), [queue_name]).read()
    (depth,) = observation.queues
    assert (depth.ready, depth.reserved, depth.running) == (4, 0, 0)
    assert observation.demand.cpus == 3.75
    assert observation.demand.memory == 4 * 100 * Mi
    assert redis_client.llen(queue_name) + sum(redis_client.llen(k) for k in used if k != queue_name) == 4, \
        "reading consumed messages"
    keda = ListLengthMetrics(state_client(), [queue_name]).read()
    assert keda.ready == redis_client.llen(queue_name) < 4, "the LLEN-only baseline should miss priority lists"


def test_queued_running_and_too_big_jobs_are_counted(agents, redis_client, queue_name):
    from sample_jobs import sleep_for

    from autoscaler.metrics import BrokerMetrics
    from tasks.state import state_client

    redis_client.set("jobyard:autoscaler:shape", json.dumps({"cpus": 2, "memory": 2 * Gi, "queues": [queue_name]}),
                     ex=60)
    host = agents.start("metrics", "--cpus", "0.5", "--memory", "512Mi", "--queues", queue_name)
    source = BrokerMetrics(state_client(), [queue_name])
    first = sleep_for.apply_async((6,), queue=queue_name, cpus=0.5)
    wait_for(lambda: (host.state(redis_client) or {}).get("running"), 20, message="a running job")
    big = sleep_for.apply_async((1,), queue=queue_name, cpus=1.5)  # too big for this host, not for the shape
    second = sleep_for.apply_async((4,), queue=queue_name, cpus=0.5)

    # The host is full: its intake gate leaves both new jobs in the queue.
    seen = source.read()
    assert (seen.queues[0].ready, seen.queues[0].reserved, seen.queues[0].running) == (2, 0, 1), seen.queues
    assert sorted(r.task_id for r in seen.demand.waiting) == sorted([big.id, second.id])
    assert [r.task_id for r in seen.demand.running] == [first.id]
    assert seen.demand.cpus == 2.0 and seen.agents[host.hostname].busy

    # Once the first ends, the second runs; the big one stays queued, in its place, for a
    # host that can hold it (agents take only what fits them), and is still demand.
    assert first.get(timeout=30) == 6

    def settled():
        now = source.read()
        return now if (now.queues[0].ready, now.queues[0].reserved, now.running) == (1, 0, 1) else None

    seen = wait_for(settled, 15, message="the second running, the big job still queued")
    assert [r.task_id for r in seen.demand.waiting] == [big.id] and seen.demand.cpus == 1.5
    assert [r.task_id for r in seen.demand.running] == [second.id]
    assert second.get(timeout=30) == 4
    redis_client.delete("jobyard:autoscaler:shape")
    big.revoke(terminate=True)


def test_a_job_no_host_can_hold_is_reported_not_scaled_for(fleet, queue_name, redis_client, celery_app):
    from sample_jobs import add

    from autoscaler.drain import Drainer
    from autoscaler.loop import Autoscaler, Policy
    from autoscaler.metrics import BrokerMetrics
    from autoscaler.report import RedisReporter
    from tasks.state import state_client

    hosts = fleet(cpus=1.0, memory=512 * Mi, queues=[queue_name]).provider
    huge = add.apply_async((1, 2), queue=queue_name, cpus=4)
    client = state_client()
    loop = Autoscaler(BrokerMetrics(client, [queue_name]), hosts, Drainer(celery_app, client),
                      Policy(minimum=0, maximum=3), listeners=[RedisReporter(client, hosts.shape, (queue_name,))])
    for _ in range(3):
        tick = loop.tick()
    assert (tick.desired, tick.action.direction, hosts.hosts()) == (0, "hold", [])
    reason = redis_client.get(f"jobyard:unfit:{huge.id}")
    assert reason and "cpus=4" in reason and redis_client.ttl(f"jobyard:unfit:{huge.id}") > 0
    assert json.loads(redis_client.get("jobyard:autoscaler:shape"))["cpus"] == 1.0
    redis_client.delete(queue_name)


def test_delayed_jobs_are_counted_apart_and_as_demand_only_once_due_within_the_look_ahead(redis_client, queue_name):
    from sample_jobs import add

    from autoscaler.metrics import DUE_LOOK_AHEAD, BrokerMetrics
    from tasks import keys
    from tasks.state import state_client

    soon = add.apply_async((1, 2), queue=queue_name, cpus=0.25, memory="100Mi", countdown=DUE_LOOK_AHEAD / 2)
    add.apply_async((1, 2), queue=queue_name, cpus=1.0, memory="200Mi", countdown=DUE_LOOK_AHEAD + 300)
    observation = BrokerMetrics(state_client(), [queue_name]).read()
    (depth,) = observation.queues
    assert (depth.ready, depth.delayed, depth.reserved, depth.running) == (0, 2, 0, 0)
    assert [r.task_id for r in observation.demand.waiting] == [soon.id]
    assert observation.demand.cpus == 0.25 and observation.demand.memory == 100 * Mi
    redis_client.delete(*keys.delayed_sets(queue_name))  # no agent serves this queue: leave nothing behind
