"""The loop with real agents on the local provider: scale out, finish, scale back."""

import time

from tests.conftest import wait_for

Mi = 1024**2


def _published(redis_client, provider):
    return [h.name for h in provider.hosts() if redis_client.exists(f"jobyard:agent:{h.name}")]


def test_burst_from_zero_scales_out_within_seconds_and_back_to_min(fleet, run_loop, queue_name, redis_client):
    from sample_jobs import sleep_for

    hosts = fleet(cpus=1.0, memory=512 * Mi, queues=[queue_name], max_jobs=2).provider
    loop, ticks = run_loop(hosts, [queue_name], minimum=0, maximum=2, poll=0.5, stabilisation=3, cooldown=1)
    wait_for(lambda: ticks.ticks, 10, message="the first poll")
    assert hosts.hosts() == [], "an idle queue started hosts"

    sent = time.monotonic()
    results = [sleep_for.apply_async((0.5,), queue=queue_name, cpus=0.5) for _ in range(10)]
    wait_for(lambda: ticks.actions, 5, message="a scale-out decision")
    first = ticks.actions[0]
    assert first.direction == "out" and first.count == 2, first
    assert "capped at max 2" in first.reason, first.reason
    wait_for(lambda: _published(redis_client, hosts), 30, message="a host to come up")
    up_after = time.monotonic() - sent
    assert up_after < 20, f"first host up after {up_after:.1f}s"

    assert [r.get(timeout=120) for r in results] == [0.5] * 10
    assert max(t.current for t in ticks.ticks) == 2, "went past max"
    assert len({r.id for r in results}) == 10
    wait_for(lambda: not hosts.hosts(), 40, message="the fleet to return to min (0)")
    ins = [a for a in ticks.actions if a.direction == "in"]
    assert ins and sum(a.count for a in ins) == 2, ticks.actions
    loop.stop()
    assert not redis_client.zrange("jobyard:draining", 0, -1)


def test_min_is_kept_and_a_host_that_never_comes_up_is_replaced(fleet, run_loop, queue_name, redis_client):
    from tests.support.services import free_port

    # Agents of this fleet point at a broker port nothing listens on: they never heartbeat.
    dead = fleet(queues=[queue_name], env={"JOBYARD_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}).provider
    loop, ticks = run_loop(dead, [queue_name], minimum=1, maximum=1, poll=0.5, stabilisation=0, cooldown=0,
                           boot_timeout=3)
    first = wait_for(lambda: ticks.actions, 10, message="a scale-out to min")[0]
    assert (first.direction, first.count) == ("out", 1) and "raised to min 1" in first.reason
    wait_for(lambda: len(ticks.actions) >= 2, 20, message="the silent host replaced")
    assert first.hosts[0] not in [h.name for h in dead.hosts()]
    assert all(t.current <= 1 for t in ticks.ticks), "went past max"
    assert all(t.current >= 1 for t in ticks.ticks), "went below min"
    loop.stop()
