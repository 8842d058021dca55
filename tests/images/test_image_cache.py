"""The image cache's budget on a real engine: LRU removal of jobyard-pulled images only, never one in use."""

from __future__ import annotations

import itertools

import docker
import pytest
import redis
from prometheus_client import CollectorRegistry

from executor.image_cache import ImageCache, parse_budget
from executor.metrics import ImageMetrics
from executor.pulls import PullCoordinator, combined
from tasks import keys
from tests.conftest import SESSION
from tests.images.test_pulls import credentials_for, engine, variants  # noqa: F401 (fixtures)


def _present(client, reference: str) -> bool:
    try:
        client.api.inspect_image(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def test_budget_evicts_the_least_recently_used_unused_pulled_image_only(docker_client, redis_server, redis_client,
                                                                       registry, variants, engine):
    clock = itertools.count(1_000_000).__next__
    in_use: set[str] = set()
    metrics = CollectorRegistry()
    observer = ImageMetrics("h", metrics)
    cache = ImageCache(docker_client, redis_client, engine, "1Gi", in_use=lambda: in_use, observer=observer,
                       now=clock)
    coordinator = PullCoordinator(docker_client, redis_client, engine, credentials=credentials_for(registry),
                                  cache=cache, observer=observer)
    cache.in_use = combined(lambda: in_use, coordinator.pulling)
    oldest, middle, newest = (variants.push(name)[0] for name in ("lru-a", "lru-b", "lru-c"))
    local = variants.build("lru-local")
    for reference in (oldest, middle, newest, local):
        coordinator.ensure(reference)
    assert [ref for ref, _ in cache.entries()] == [oldest, middle, newest]
    assert 0 < redis_client.ttl(cache.key) <= keys.IMAGES_TTL
    sizes = {ref: docker_client.api.inspect_image(ref)["Size"] for ref in (oldest, middle, newest)}
    assert cache.usage() == sum(sizes.values())
    assert metrics.get_sample_value("jobyard_agent_image_pulls_total", {"host": "h", "outcome": "pulled"}) == 3
    assert metrics.get_sample_value("jobyard_agent_image_pull_seconds_count", {"host": "h"}) == 3

    cache.budget = sizes[oldest] + sizes[newest] + sizes[middle] // 2
    in_use.add(oldest)
    evicted = cache.evict()
    assert [e.refs for e in evicted] == [(middle,)]
    assert not _present(docker_client, middle)
    assert all(_present(docker_client, ref) for ref in (oldest, newest, local))
    assert metrics.get_sample_value("jobyard_agent_image_evictions_total", {"host": "h"}) == 1
    assert metrics.get_sample_value("jobyard_agent_image_cache_bytes", {"host": "h"}) == sizes[oldest] + sizes[newest]

    # A new agent on the same engine: the record is still there, and in-use ids count too.
    oldest_id = docker_client.api.inspect_image(oldest)["Id"]
    restarted = ImageCache(docker.from_env(), redis.Redis.from_url(redis_server.url, decode_responses=True), engine,
                           parse_budget("0"), in_use=lambda: {oldest_id})
    assert [ref for ref, _ in restarted.entries()] == [oldest, newest]
    assert [e.refs for e in restarted.evict()] == [(newest,)]
    assert _present(docker_client, oldest) and _present(docker_client, local)

    # An image a container was created from is in use, whatever the callable says.
    container = docker_client.api.create_container(oldest, command=["true"],
                                                   labels={"jobyard.agent": f"{SESSION}-cache"})
    try:
        restarted.in_use = lambda: ()
        assert restarted.evict() == []
    finally:
        docker_client.api.remove_container(container["Id"], force=True)
    assert [e.refs for e in restarted.evict()] == [(oldest,)]
    assert restarted.entries() == [] and _present(docker_client, local)


def test_budget_and_in_use_entries_are_validated(docker_client, redis_client, engine):
    with pytest.raises(ValueError):
        ImageCache(docker_client, redis_client, engine, "lots")
    with pytest.raises(ValueError):
        ImageCache(docker_client, redis_client, "bad engine id", "1Gi")
    cache = ImageCache(docker_client, redis_client, engine, 0)
    redis_client.zadd(cache.key, {"garbage ref": 1})
    assert cache.entries() == [("garbage ref", 1.0)]
    assert cache.evict() == [] and cache.entries() == []


def test_images_in_use_are_shared_renewed_dropped_after_the_job_and_lapse(redis_client, engine):
    from executor.image_cache import ImagesInUse

    clock = [1_000_000.0]
    mine = ImagesInUse(redis_client, engine, f"{SESSION}-mine", now=lambda: clock[0])
    other = ImagesInUse(redis_client, engine, f"{SESSION}-other", now=lambda: clock[0])
    try:
        mine.add("task-a", "docker.io/team/a:v1")
        other.add("task-b", "docker.io/team/b:v1")
        assert mine.shared() == other.shared() == {"docker.io/team/a:v1", "docker.io/team/b:v1"}
        assert mine.refs() == {"docker.io/team/a:v1"}
        mine.discard("task-a")
        assert mine.refs() == set() and "docker.io/team/a:v1" in other.shared()  # until the next heartbeat
        pipe = redis_client.pipeline()
        mine.renew(pipe)
        pipe.execute()
        assert other.shared() == {"docker.io/team/b:v1"}
        clock[0] += keys.IMAGES_IN_USE_TTL + 1  # the other agent died: its entry lapses
        assert mine.shared() == set() and redis_client.zcard(mine.key) == 0
    finally:
        redis_client.delete(mine.key)
