"""One pull per image per engine, pull policies and the pull bound, against a real loopback registry."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import tarfile
import threading
import time

import docker
import pytest
import redis

from executor.credentials import DockerConfig
from executor.pulls import ImageObserver, PullCoordinator, engine_id, ref_hash
from tasks import keys
from tasks.errors import ImageNotFound, ImagePullFailed, InvalidJobSpec
from tasks.images import parse_image_ref
from tests.conftest import BUSYBOX_IMAGE, wait_for

_TAG = os.environ.get("JOBYARD_TEST_IMAGE_TAG", "latest")


def _variant_tar(token: str) -> bytes:
    """A busybox rootfs with one file of its own, so each variant is a distinct image."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
        data = token.encode()
        info = tarfile.TarInfo("variant")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Variants:
    """Small distinct images pushed to the test registry; every tag made here is removed again."""

    def __init__(self, client, registry):
        self.client, self.registry = client, registry
        self.session = secrets.token_hex(3)
        self.references: list[str] = []
        self.local: list[str] = []

    def build(self, name: str) -> str:
        """A variant present locally only (never pulled): ``jobyard-test/variant:<tag>-<name>``."""
        reference = f"jobyard-test/variant:{_TAG}-{self.session}-{name}"
        repository, tag = reference.split(":")
        self.client.api.import_image_from_data(_variant_tar(secrets.token_hex(8)), repository=repository, tag=tag)
        self.local.append(reference)
        return reference

    def push(self, name: str, tag: str = "v1") -> tuple[str, str]:
        """Push a new variant as ``HOST/team/<session>-<name>:<tag>``, absent locally; (reference, digest)."""
        local = self.build(f"{name}-{tag}-{secrets.token_hex(2)}")
        repository = f"team/{self.session}-{name}"
        digest = self.registry.push(self.client, local, repository, tag)
        reference = f"{self.registry.host}/{repository}:{tag}"
        self.references += [reference, f"{self.registry.host}/{repository}@{digest}"]
        self.registry.untag(self.client, reference)
        self._remove(local)
        return reference, digest

    def _remove(self, reference: str) -> None:
        try:
            self.client.api.remove_image(reference)
        except docker.errors.NotFound:
            pass

    def cleanup(self) -> None:
        for reference in self.references:
            self.registry.untag(self.client, reference)
        for reference in self.local:
            self._remove(reference)


@pytest.fixture
def variants(docker_client, registry):
    made = Variants(docker_client, registry)
    yield made
    made.cleanup()


@pytest.fixture
def engine(docker_client, redis_client):
    """The engine's id, with an empty image record: what other tests' agents recorded on this
    engine is not this test's (their images are still there); what this test leaves is deleted."""
    found = engine_id(docker_client)
    redis_client.delete(keys.images(found))
    yield found
    redis_client.delete(keys.images(found))
    for key in redis_client.scan_iter(keys.pull_lock(found, "*")):
        redis_client.delete(key)


def credentials_for(registry) -> DockerConfig:
    """A Docker config with the registry's good credentials under ``auths``."""
    return DockerConfig({"auths": {registry.host: registry.auth_config}})


def pull_events(client, reference_prefix: str, since: float) -> list[dict]:
    """Image pull events on the engine whose reference starts with ``reference_prefix``."""
    # The pull event is sent before the pull's response ends, so "until now" has it.
    events = client.events(decode=True, since=f"{since:.3f}", until=f"{time.time():.3f}",
                           filters={"type": "image", "event": "pull"})
    return [event for event in events if event.get("Actor", {}).get("ID", "").startswith(reference_prefix)]


class Timeline(ImageObserver):
    """When each pull of this process started and ended."""

    def __init__(self):
        self.started: dict[str, float] = {}
        self.spans: list[tuple[str, float, float, str]] = []

    def pull_started(self, ref: str) -> None:
        self.started[ref] = time.monotonic()

    def pull_finished(self, ref: str, seconds: float, outcome: str) -> None:
        self.spans.append((ref, self.started[ref], time.monotonic(), outcome))


def _outcome(call):
    """``call()``'s result, or the exception it raised."""
    try:
        return call()
    except BaseException as exc:
        return exc


def _run_together(calls) -> list:
    """Run zero-argument callables in threads released at once; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        results[index] = _outcome(call)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_five_jobs_on_two_agents_of_one_engine_share_one_pull(docker_client, redis_server, redis_client, registry,
                                                              variants, engine):
    reference, digest = variants.push("five")
    other_redis = redis.Redis.from_url(redis_server.url, decode_responses=True)
    agents = [PullCoordinator(docker.from_env(), client, engine, credentials=credentials_for(registry))
              for client in (redis_client, other_redis)]
    since = time.time()
    seen: list[str] = []
    results = _run_together([lambda a=agents[i % 2]: a.ensure(reference, "missing", on_progress=seen.append)
                             for i in range(5)])
    assert results == [digest] * 5
    pulls = pull_events(docker_client, reference, since)
    assert len(pulls) == 1, pulls
    assert 0 < redis_client.pttl(keys.pull_lock(engine, ref_hash(parse_image_ref(reference)))) <= 10_000


def test_missing_pulls_only_when_absent_and_never_for_a_local_image(docker_client, redis_client, registry, variants,
                                                                    busybox_image, engine):
    coordinator = PullCoordinator(docker_client, redis_client, engine, credentials=credentials_for(registry))
    since = time.time()
    local = docker_client.api.inspect_image(busybox_image)
    for policy in ("missing", "never"):
        assert coordinator.ensure(busybox_image, policy) == local["Id"]
    reference, digest = variants.push("missing")
    assert coordinator.ensure(reference) == digest
    assert coordinator.ensure(reference, "missing") == digest
    assert coordinator.ensure(reference, "never") == digest
    assert len(pull_events(docker_client, reference, since)) == 1
    assert pull_events(docker_client, BUSYBOX_IMAGE.split(":")[0], since) == []
    assert pull_events(docker_client, f"docker.io/{BUSYBOX_IMAGE.split(':')[0]}", since) == []


def test_never_with_an_absent_image_is_image_not_found(docker_client, redis_client, registry, variants, engine):
    coordinator = PullCoordinator(docker_client, redis_client, engine, credentials=credentials_for(registry))
    reference, _ = variants.push("never")
    since = time.time()
    with pytest.raises(ImageNotFound) as caught:
        coordinator.ensure(reference, "never")
    assert not isinstance(caught.value, ImagePullFailed)
    assert pull_events(docker_client, reference, since) == []
    with pytest.raises(InvalidJobSpec) as caught:
        coordinator.ensure(reference, "sometimes")
    assert caught.value.field == "pull"


def test_always_runs_the_new_digest_after_a_push_of_the_same_tag(docker_client, redis_client, registry, variants,
                                                                engine):
    coordinator = PullCoordinator(docker_client, redis_client, engine, credentials=credentials_for(registry))
    reference, first = variants.push("always")
    assert coordinator.ensure(reference, "always") == first
    again, second = variants.push("always")
    assert again == reference and second != first
    name, tag = reference.rsplit(":", 1)
    # The old version back under the tag: present, and stale.
    assert coordinator.ensure(f"{name}@{first}") == first
    docker_client.api.tag(f"{name}@{first}", name, tag)
    assert coordinator.ensure(reference, "missing") == first
    assert coordinator.ensure(reference, "always") == second


def test_max_pulls_one_never_overlaps_two_images(docker_client, redis_client, registry, variants, engine):
    timeline = Timeline()
    coordinator = PullCoordinator(docker_client, redis_client, engine, max_pulls=1,
                                  credentials=credentials_for(registry), observer=timeline)
    (one, first), (two, second) = variants.push("serial-a"), variants.push("serial-b")
    results = _run_together([lambda: coordinator.ensure(one), lambda: coordinator.ensure(two)])
    assert results == [first, second]
    (_, start_a, end_a, outcome_a), (_, start_b, end_b, outcome_b) = sorted(timeline.spans, key=lambda s: s[1])
    assert (outcome_a, outcome_b) == ("pulled", "pulled")
    assert end_a <= start_b, f"pulls overlapped: {timeline.spans}"


def test_a_dead_agents_pull_is_taken_over_and_a_failure_is_shared(docker_client, redis_client, registry, variants,
                                                                  engine):
    reference, digest = variants.push("takeover")
    key = keys.pull_lock(engine, ref_hash(parse_image_ref(reference)))
    redis_client.set(key, json.dumps({"state": "pulling", "token": "dead-agent"}), px=1000)
    coordinator = PullCoordinator(docker_client, redis_client, engine, credentials=credentials_for(registry))
    started = time.monotonic()
    assert coordinator.ensure(reference) == digest
    assert 0.8 <= time.monotonic() - started < 15
    docker_client.api.remove_image(reference)

    # Another agent pulls it and fails: we wait for its pull and end with its failure, pulling nothing.
    redis_client.set(key, json.dumps({"state": "pulling", "token": "other-agent"}), px=30_000)
    since = time.time()
    results: list = []
    waiter = threading.Thread(target=lambda: results.append(_outcome(lambda: coordinator.ensure(reference))))
    waiter.start()
    time.sleep(0.5)
    failure = {"state": "failed", "reason": "auth", "message": f"image pull failed (auth): {reference}: denied"}
    redis_client.set(key, json.dumps(failure), px=10_000)
    waiter.join(15)
    assert len(results) == 1 and isinstance(results[0], ImagePullFailed), results
    assert (results[0].reason, results[0].message) == ("auth", failure["message"])
    assert pull_events(docker_client, reference, since) == []


def test_a_credentials_error_is_an_auth_failure_for_every_agent_waiting_on_the_pull(docker_client, redis_client,
                                                                                   variants, engine):
    reference, _ = variants.push("badhelper")
    registry = parse_image_ref(reference).registry
    broken = DockerConfig({"credHelpers": {registry: "jobyard-no-such-helper"}})
    coordinator = PullCoordinator(docker_client, redis_client, engine, credentials=broken)
    with pytest.raises(ImagePullFailed) as caught:
        coordinator.ensure(reference)
    assert (caught.value.reason, caught.value.registry) == ("auth", registry)
    # What the agents waiting on this pull read, from the engine's shared record of it.
    shared = json.loads(redis_client.get(keys.pull_lock(engine, ref_hash(parse_image_ref(reference)))))
    assert (shared["state"], shared["reason"]) == ("failed", "auth"), shared


def test_max_pulls_is_shared_by_the_agents_of_one_engine(docker_client, redis_server, redis_client, registry,
                                                         variants, engine):
    timeline = Timeline()
    other_redis = redis.Redis.from_url(redis_server.url, decode_responses=True)
    agents = [PullCoordinator(docker.from_env(), client, engine, max_pulls=1, credentials=credentials_for(registry),
                              observer=timeline) for client in (redis_client, other_redis)]
    (one, first), (two, second) = variants.push("host-a"), variants.push("host-b")
    results = _run_together([lambda: agents[0].ensure(one), lambda: agents[1].ensure(two)])
    assert results == [first, second]
    (_, start_a, end_a, _), (_, start_b, end_b, _) = sorted(timeline.spans, key=lambda s: s[1])
    assert end_a <= start_b, f"two agents of one engine pulled at once under --max-pulls 1: {timeline.spans}"
    assert redis_client.zcard(keys.pull_slots(engine)) == 0


def test_an_agent_waiting_on_another_agents_pull_is_woken_when_it_ends(docker_client, redis_server, redis_client,
                                                                       registry, pushed, engine):
    from tests.images.test_agent_pull import PausingProxy

    proxy = PausingProxy(registry.port)  # holds the leader's pull until released
    reference = f"127.0.0.1:{proxy.port}/{pushed.repository}:{pushed.tag}"
    config = DockerConfig({"auths": {f"127.0.0.1:{proxy.port}": registry.auth_config}})
    leader = PullCoordinator(docker.from_env(), redis_client, engine, credentials=config)
    # A poll this long would leave the follower waiting long after the pull ended.
    follower = PullCoordinator(docker.from_env(), redis.Redis.from_url(redis_server.url, decode_responses=True),
                               engine, credentials=config, poll_interval=60)
    ended: dict[str, float] = {}

    def run(name, coordinator):
        ended[name] = (coordinator.ensure(reference), time.monotonic())

    try:
        threads = [threading.Thread(target=run, args=("leader", leader))]
        threads[0].start()
        wait_for(lambda: proxy.connections > 0, timeout=20, message="the leader's pull to reach the proxy")
        threads.append(threading.Thread(target=run, args=("follower", follower)))
        threads[1].start()
        time.sleep(0.5)  # the follower sees the pull and waits for it
        proxy.released.set()
        for thread in threads:
            thread.join(10)
        assert "follower" in ended, "the follower slept through the end of the pull"
        assert ended["leader"][0] == ended["follower"][0] == pushed.digest
        assert ended["follower"][1] - ended["leader"][1] < 3, "the follower slept through the end of the pull"
    finally:
        proxy.close()
        try:
            docker_client.api.remove_image(reference)
        except docker.errors.NotFound:
            pass
