"""Agents pull job images from a real loopback registry, end to end (issue 15).

One busybox image is pushed once (the ``pushed`` fixture); agents of this module's own
consume queues of their own, with registry configs written here.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import threading
import time

import pytest
from click.testing import CliRunner

from tasks import command_job
from tasks.errors import ImageNotFound, ImagePullFailed, JobRejected
from tasks.state import job_facts
from tests.conftest import BUSYBOX_IMAGE, wait_for
from tests.images.test_pulls import Variants, pull_events
from tests.support.services import free_port, temp_dir


def _auth(username: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


def _write_config(content: dict) -> str:
    path = os.path.join(temp_dir("jobyard-regconf-"), "config.json")
    with open(path, "w") as handle:
        json.dump(content, handle)
    os.chmod(path, 0o600)
    return path


class PausingProxy:
    """A TCP proxy of our own on loopback that holds every connection until released,
    then relays at most ``rate`` bytes a second from the target (None: unthrottled)."""

    def __init__(self, target_port: int, rate: int | None = None):
        self.target_port = target_port
        self.rate = rate
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(32)
        self.port = self.server.getsockname()[1]
        self.released = threading.Event()
        self.connections = 0
        #: Bytes relayed from the target so far.
        self.relayed = 0
        threading.Thread(target=self._accept, name="pausing-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client = self.server.accept()[0]
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.released.wait(60)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:  # the target is down: so is the connection
            client.close()
            return
        for source, sink, rate in ((client, upstream, None), (upstream, client, self.rate)):
            threading.Thread(target=self._pipe, args=(source, sink, rate), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        try:
            while data := source.recv(65536 if rate is None else max(1024, rate // 20)):
                sink.sendall(data)
                if rate is not None:
                    self.relayed += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.released.set()
        self.server.close()


@pytest.fixture(scope="module")
def proxy(registry):
    server = PausingProxy(registry.port)
    yield server
    server.close()


@pytest.fixture(scope="module")
def closed_port():
    """A loopback port nothing listens on: a registry that is down."""
    return free_port()


@pytest.fixture(scope="module")
def flower(redis_server):
    """Flower, started before this module's agents so it sees every job's events."""
    from tests.observability.conftest import start_flower

    server = start_flower(redis_server.url)
    yield server
    server.stop()


def _flower_page(flower, path: str) -> str:
    import requests

    response = requests.get(f"{flower.url}{path}", timeout=10)
    return response.text if response.status_code == 200 else ""


@pytest.fixture(scope="module")
def main_agent(flower, agents, registry, proxy):
    """Good credentials for the registry (and its proxy), wrong ones for ``localhost:PORT``."""
    config = _write_config({"auths": {
        registry.host: _auth(registry.username, registry.password),
        f"127.0.0.1:{proxy.port}": _auth(registry.username, registry.password),
        f"localhost:{registry.port}": _auth(registry.username, "wrong-password"),
    }})
    agent = agents.start("pull", "--cpus", "1", "--memory", "1Gi", "--queues", "pull", "--registry-config", config,
                         "--pull-timeout", "60")
    agent.extra["config"] = config
    return agent


@pytest.fixture(scope="module")
def helper_agent(agents, registry):
    """Credentials from a ``docker-credential-*`` helper script of our own, on the agent's PATH."""
    bin_dir = temp_dir("jobyard-credhelper-")
    secret_file = os.path.join(bin_dir, "secret")
    with open(secret_file, "w") as handle:
        handle.write(registry.password)
    calls = os.path.join(bin_dir, "calls")
    script = os.path.join(bin_dir, "docker-credential-jobyardtest")
    with open(script, "w") as handle:
        handle.write(f"""#!/bin/sh
[ "$1" = get ] || exit 1
read server
echo "$server" >> {calls}
printf '{{"ServerURL":"%s","Username":"{registry.username}","Secret":"%s"}}' "$server" "$(cat {secret_file})"
""")
    os.chmod(script, stat.S_IRWXU)
    config = _write_config({"credHelpers": {registry.host: "jobyardtest"}})
    agent = agents.start("helper", "--cpus", "1", "--memory", "1Gi", "--queues", "helper",
                         "--registry-config", config, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    agent.extra["calls"] = calls
    return agent


def _job(image: str, queue: str = "pull", command: tuple = ("echo", "ran"), **options):
    return command_job("pulls.echo", image=image, command=list(command), cpus=0.1, memory="16Mi",
                       queue=queue, **options)


def test_a_registry_only_image_runs_and_its_facts_carry_the_pushed_digest(main_agent, absent, redis_client,
                                                                           flower):
    result = _job(absent.reference).delay()
    assert result.get(timeout=60)["exit_code"] == 0
    facts = job_facts(result.id, redis_client)
    assert facts["image_digest"] == absent.digest
    wait_for(lambda: f"image_digest={absent.digest}" in _flower_page(flower, f"/task/{result.id}"), timeout=15,
             message="Flower's container row to show the digest")
    from jobyard.cli import main

    shown = CliRunner().invoke(main, ["job", result.id])
    assert absent.digest in shown.output, shown.output


def test_wrong_credentials_fail_fast_as_auth_and_are_not_retried(main_agent, registry, redis_client):
    started = time.monotonic()
    result = _job(f"localhost:{registry.port}/team/app:v1", retries=2, retry_delay=0.1).delay()
    with pytest.raises(ImagePullFailed) as info:
        result.get(timeout=30)
    assert info.value.reason == "auth"
    assert time.monotonic() - started < 15
    facts = job_facts(result.id, redis_client)
    assert facts["attempt"] == 1 and facts["state"] == "image_pull_failed"
    assert registry.password not in str(info.value)


def test_a_missing_tag_is_not_found(main_agent, pushed):
    result = _job(f"{pushed.registry.host}/{pushed.repository}:no-such-tag", retries=1, retry_delay=0.1).delay()
    with pytest.raises(ImagePullFailed) as info:
        result.get(timeout=30)
    assert info.value.reason == "not_found"


def test_a_registry_that_is_down_is_unreachable_and_the_retry_policy_applies(main_agent, closed_port, redis_client):
    result = _job(f"127.0.0.1:{closed_port}/team/app:v1", retries=1, retry_delay=0.1).delay()
    with pytest.raises(ImagePullFailed) as info:
        result.get(timeout=60)
    assert info.value.reason == "unreachable"
    assert job_facts(result.id, redis_client)["attempt"] == 2


def _large_image(client) -> str:
    """A local image with a 24 MiB layer of random bytes (incompressible), for pulls that take a while."""
    import io
    import shutil
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
        data = os.urandom(24 << 20)
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    reference = f"jobyard-test/large:{os.environ.get('JOBYARD_TEST_IMAGE_TAG', 'latest')}-{os.urandom(3).hex()}"
    repository, tag = reference.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return reference


def test_the_registry_stopped_mid_pull_is_unreachable_at_once_and_the_retry_policy_applies(agents, docker_client,
                                                                                            redis_client):
    from tests.support.registry import Registry

    own = Registry().start()
    local = _large_image(docker_client)
    throttle = PausingProxy(own.port, rate=4 << 20)  # 24 MiB take ~6 s: the registry is stopped well within
    throttle.released.set()
    reference = f"127.0.0.1:{throttle.port}/team/large:v1"
    try:
        own.push(docker_client, local, "team/large", "v1")
        own.untag(docker_client, f"{own.host}/team/large:v1")
        docker_client.api.remove_image(local)
        agents.start("midpull", "--cpus", "1", "--memory", "1Gi", "--queues", "midpull", "--pull-timeout", "60",
                     "--registry-config", _write_config({"auths": {
                         f"127.0.0.1:{throttle.port}": _auth(own.username, own.password)}}))
        result = _job(reference, queue="midpull", retries=1, retry_delay=0.1).delay()
        wait_for(lambda: throttle.relayed > 2 << 20, timeout=30, interval=0.05, message="the layer to be downloading")
        stopped = time.monotonic()
        own.stop()
        with pytest.raises(ImagePullFailed) as info:
            result.get(timeout=60)
        # The engine would retry the layer for 75 s; the agent ends the pull and the job's policy retries.
        assert info.value.reason == "unreachable", info.value
        assert time.monotonic() - stopped < 20
        facts = job_facts(result.id, redis_client)
        assert (facts["attempt"], facts["state"]) == (2, "image_pull_failed")
    finally:
        throttle.close()
        own.remove()
        _remove(docker_client, reference)
        _remove(docker_client, local)


def test_never_with_an_absent_image_stays_image_not_found(main_agent, absent):
    with pytest.raises(ImageNotFound):
        _job(absent.reference, pull="never").delay().get(timeout=30)


def test_five_jobs_of_one_image_on_a_cold_host_pull_it_once(main_agent, absent, docker_client):
    since = time.time()
    results = [_job(absent.reference).delay() for _ in range(5)]
    assert [r.get(timeout=60)["exit_code"] for r in results] == [0] * 5
    assert len(pull_events(docker_client, absent.reference, since)) == 1


def test_always_runs_the_new_digest_after_a_push_of_the_same_tag(main_agent, docker_client, registry,
                                                                   redis_client):
    variants = Variants(docker_client, registry)
    try:
        reference, first = variants.push("always", "v1")
        variant = ("/bin/busybox", "true")  # a variant holds busybox alone, no applet links
        one = _job(reference, pull="always", command=variant).delay()
        one.get(timeout=60)
        _, second = variants.push("always", "v1")
        assert second != first
        two = _job(reference, pull="always", command=variant).delay()
        two.get(timeout=60)
        assert job_facts(one.id, redis_client)["image_digest"] == first
        assert job_facts(two.id, redis_client)["image_digest"] == second
    finally:
        variants.cleanup()


def test_a_job_waiting_on_a_pull_holds_no_capacity_and_is_published_as_waiting(main_agent, pushed, proxy,
                                                                                docker_client, redis_client):
    slow_image = f"127.0.0.1:{proxy.port}/{pushed.repository}:{pushed.tag}"
    try:
        slow = command_job("pulls.slow", image=slow_image, command=["echo", "slow"], cpus=1, memory="16Mi",
                           queue="pull").delay()
        wait_for(lambda: proxy.connections > 0, timeout=20, message="the pull to reach the proxy")
        # Published as waiting for its image: the autoscaler's drain and `jobyard status` see it.
        waiting = wait_for(lambda: [job for job in (main_agent.state(redis_client) or {}).get("waiting", [])
                                    if job["task_id"] == slow.id], timeout=10,
                           message="the pulling job in the agent's published waiting list")
        assert waiting[0]["pulling"] is True and waiting[0]["cpus"] == 1
        fast = command_job("pulls.fast", image=BUSYBOX_IMAGE, command=["echo", "fast"], cpus=1, memory="16Mi",
                           queue="pull").delay()
        assert fast.get(timeout=30)["exit_code"] == 0
        assert not slow.ready()
        proxy.released.set()
        assert slow.get(timeout=60)["exit_code"] == 0
    finally:
        proxy.released.set()
        _remove(docker_client, slow_image)


def _remove(client, reference: str) -> None:
    import docker.errors

    try:
        client.api.remove_image(reference)
    except docker.errors.NotFound:
        pass


def test_a_host_allowing_another_registry_refuses_before_any_pull(agents, absent, docker_client):
    agents.start("policy", "--cpus", "1", "--memory", "1Gi", "--queues", "policy",
                 "--allow-image", "otherhost:5000/*")
    since = time.time()
    with pytest.raises(JobRejected) as info:
        _job(absent.reference, queue="policy").delay().get(timeout=30)
    assert info.value.details.get("reason") == "policy"
    assert pull_events(docker_client, absent.reference, since) == []


def test_a_credential_helper_is_used(helper_agent, absent, registry, redis_client):
    result = _job(absent.reference, queue="helper").delay()
    assert result.get(timeout=60)["exit_code"] == 0
    assert job_facts(result.id, redis_client)["image_digest"] == absent.digest
    with open(helper_agent.extra["calls"]) as handle:
        assert registry.host in handle.read()


def test_the_cache_budget_evicts_the_unused_pulled_image_and_metrics_count_it(agents, docker_client, registry,
                                                                                 redis_client):
    import urllib.request

    import docker.errors

    port = free_port()
    agent = agents.start("cache", "--cpus", "1", "--memory", "1Gi", "--queues", "cache", "--image-cache", "1",
                         "--metrics-port", str(port), "--registry-config",
                         _write_config({"auths": {registry.host: _auth(registry.username, registry.password)}}))
    variants = Variants(docker_client, registry)
    variant = ("/bin/busybox", "true")
    try:
        first, _ = variants.push("cache-a")
        second, _ = variants.push("cache-b")
        _job(first, queue="cache", command=variant).delay().get(timeout=60)
        _job(second, queue="cache", command=variant).delay().get(timeout=60)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.api.inspect_image(first)
        docker_client.api.inspect_image(second)  # it was in use when the cache evicted
        docker_client.api.inspect_image(BUSYBOX_IMAGE)  # never pulled by jobyard: never evicted
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        host = agent.hostname
        assert f'jobyard_agent_image_pulls_total{{host="{host}",outcome="pulled"}} 2.0' in scrape, scrape
        assert f'jobyard_agent_image_evictions_total{{host="{host}"}} 1.0' in scrape
        assert registry.password not in scrape
    finally:
        variants.cleanup()
        from executor.pulls import engine_id
        from tasks import keys

        redis_client.delete(keys.images(engine_id(docker_client)))  # this agent's record of what it pulled


@pytest.mark.pure
@pytest.mark.parametrize("reason, retried", [("unreachable", True), ("timeout", True), ("auth", False),
                                             ("not_found", False), ("policy", False)])
def test_only_transient_pull_failures_are_of_retry_class_image(reason, retried):
    from executor.retry import decide, failure_class
    from tasks.spec import JobSpec

    error = ImagePullFailed("image pull failed", reason=reason)
    spec = JobSpec.build(name="pulls.echo", kind="command", image="busybox", command=["true"], retries=1)
    assert (failure_class(error) == "image") is retried
    assert decide(spec, error, 0).retry is retried


def test_no_credential_shows_in_logs_facts_or_status(main_agent, helper_agent, registry, redis_client, flower):
    """Runs last: greps everything the module's jobs and agents left, and Flower's answers."""
    from jobyard.cli import main

    secrets = (registry.password, _auth(registry.username, registry.password)["auth"])
    outputs = [main_agent.log(), helper_agent.log(),
               CliRunner().invoke(main, ["status"]).output,
               json.dumps(main_agent.state(redis_client)), _flower_page(flower, "/api/tasks")]
    outputs += [_flower_page(flower, f"/task/{task_id}") for task_id in json.loads(outputs[-1] or "{}")]
    for key in redis_client.scan_iter("jobyard:job:*"):
        outputs.append(json.dumps(redis_client.hgetall(key)))
    for key in redis_client.scan_iter("jobyard:dead:*"):
        outputs.append(json.dumps(redis_client.hgetall(key)))
    for text in outputs:
        for secret in secrets:
            assert secret not in text


def test_the_cache_never_removes_the_image_of_a_job_another_agent_on_the_engine_holds(agents, docker_client,
                                                                                       registry, redis_client):
    from executor.pulls import engine_id
    from tasks import keys
    from tests.support.dockerproxy import DockerSocketProxy

    config = _write_config({"auths": {registry.host: _auth(registry.username, registry.password)}})
    proxy = DockerSocketProxy(os.path.join(temp_dir("jobyard-held-proxy-"), "docker.sock")).start()
    agents.start("evicting", "--cpus", "1", "--memory", "1Gi", "--queues", "evicting", "--image-cache", "1",
                 "--registry-config", config)
    agents.start("holding", "--cpus", "1", "--memory", "1Gi", "--queues", "holding", "--registry-config", config,
                 env={"DOCKER_HOST": proxy.url})
    variants = Variants(docker_client, registry)
    variant = ("/bin/busybox", "true")
    try:
        first, _ = variants.push("held-a")
        second, _ = variants.push("held-b")
        _job(first, queue="evicting", command=variant).delay().get(timeout=60)  # pulled and recorded by the cache
        # The holding agent admits a job of that image; its container create is held at the engine's door.
        proxy.stall(60, after="/containers/create")
        held = _job(first, queue="holding", command=variant).delay()
        wait_for(lambda: proxy.seen("/containers/create"), timeout=20, message="the held job's create")
        _job(second, queue="evicting", command=variant).delay().get(timeout=60)  # a pull, then an eviction pass
        docker_client.api.inspect_image(first)  # another agent's admitted job uses it: never evicted
        proxy.release()
        assert held.get(timeout=30)["exit_code"] == 0
    finally:
        proxy.release()
        proxy.stop()
        variants.cleanup()
        redis_client.delete(keys.images(engine_id(docker_client)))
