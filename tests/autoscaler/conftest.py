"""Fixtures for autoscaler tests: local fleets named with the session token, and
a loop running in a thread."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import threading

import pytest

from tests.conftest import SESSION
from tests.support.services import temp_dir

_names = itertools.count()


class Fleet:
    """A LocalProvider whose agents carry the session token; stopped at teardown."""

    def __init__(self, redis_server, cpus, memory, queues, max_jobs, env=None):
        from autoscaler.providers.local import LocalProvider
        from autoscaler.shape import HostShape

        self.state_dir = temp_dir("jobyard-fleet-")
        self.prefix = f"{SESSION}-as{next(_names)}"
        env = {**os.environ, "JOBYARD_BROKER_URL": redis_server.url, **(env or {})}
        self.provider = LocalProvider(HostShape(cpus, memory), self.state_dir, prefix=self.prefix,
                                      queues=tuple(queues), agent_args=("--max-jobs", str(max_jobs)), env=env)

    def stop(self):
        for host in self.provider.hosts():
            self.provider.remove(host.name)
        shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def fleet(redis_server, redis_client, docker_client, python_image):
    """Factory: ``fleet(cpus=1, memory=512Mi, queues=[q], max_jobs=2)``."""
    made = []

    def make(cpus=1.0, memory=512 * 1024**2, queues=("default",), max_jobs=2, env=None):
        made.append(Fleet(redis_server, cpus, memory, queues, max_jobs, env))
        return made[-1]

    yield make
    for one in made:
        one.stop()


@pytest.fixture
def acl_user(redis_client, redis_server):
    """An ACL user with a password on the session's Redis: (name, password, URL of db 0)."""
    name, password = f"{SESSION}-u{next(_names)}", f"pw-{secrets.token_hex(12)}"
    redis_client.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all", "-@dangerous")
    yield name, password, f"redis://{name}:{password}@127.0.0.1:{redis_server.port}/0"
    redis_client.execute_command("ACL", "DELUSER", name)


@pytest.fixture
def queue_name():
    """A queue no other test uses."""
    return f"{SESSION}-q{next(_names)}"


class Ticks:
    """Collects every tick of a loop (a listener)."""

    def __init__(self):
        self.ticks = []

    def observe(self, tick):
        self.ticks.append(tick)

    @property
    def actions(self):
        return [t.action for t in self.ticks if t.action.direction != "hold"]


class LoopThread:
    """An Autoscaler running in a thread until stopped."""

    def __init__(self, autoscaler):
        self.autoscaler = autoscaler
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=autoscaler.run, args=(self.stop_event,), daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the autoscaler loop did not stop"


@pytest.fixture
def run_loop(redis_client, celery_app):
    """Factory: ``run_loop(provider, queues, **policy)`` -> (LoopThread, Ticks)."""
    from autoscaler.drain import Drainer
    from autoscaler.loop import Autoscaler, Policy
    from autoscaler.metrics import BrokerMetrics
    from tasks.state import state_client

    loops = []

    def start(provider, queues, strategy=None, **policy):
        client = state_client()
        ticks = Ticks()
        autoscaler = Autoscaler(BrokerMetrics(client, queues), provider, Drainer(celery_app, client),
                                Policy(**policy), strategy=strategy, listeners=[ticks])
        loops.append(LoopThread(autoscaler).start())
        return loops[-1], ticks

    yield start
    for loop in loops:
        loop.stop_event.set()
    for loop in loops:
        loop.thread.join(30)


AGENT_IMAGE = f"jobyard-test/agent:{SESSION}"


def _closure(names):
    """Distributions ``names`` need at run time (markers evaluated, no extras)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen, todo = {}, list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[name] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen.values()


def _bundle_libraries(code):
    """Copy the shared libraries that compiled modules in ``code`` link to into
    ``code/.libs`` (the job image carries only the interpreter's own)."""
    import re
    import subprocess

    libs = os.path.join(code, ".libs")
    os.makedirs(libs, exist_ok=True)
    for folder, _dirs, files in os.walk(code):
        for name in files:
            if ".so" not in name:
                continue
            output = subprocess.run(["ldd", os.path.join(folder, name)], capture_output=True, text=True).stdout
            for soname, path in re.findall(r"^\s*(\S+) => (/\S+)", output, re.M):
                if not os.path.exists(os.path.join(libs, soname)):
                    shutil.copy(path, os.path.join(libs, soname))


#: Environment an agent container from AGENT_IMAGE needs.
AGENT_IMAGE_ENV = {"LD_LIBRARY_PATH": "/app/code/.libs", "PYTHONTZPATH": "/app/code/.zoneinfo"}


@pytest.fixture(scope="session")
def agent_image(docker_client):
    """An agent image built from local files: the job image's Python runtime plus
    jobyard's source and its installed dependencies (no registry, no pip download)."""
    from executor.image import build_image
    from tests.conftest import ROOT

    code = temp_dir("jobyard-agent-image-")
    for dist in _closure(["celery", "kombu", "redis", "docker", "psutil", "click", "flower", "prometheus-client", "packaging"]):
        for file in dist.files or ():
            source = str(dist.locate_file(file))
            if ".." in str(file) or not os.path.isfile(source) or "__pycache__" in str(file):
                continue
            target = os.path.join(code, str(file))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
    _bundle_libraries(code)
    shutil.copytree("/usr/share/zoneinfo", os.path.join(code, ".zoneinfo"), symlinks=True)
    for package in ("tasks", "executor", "autoscaler", "jobyard"):
        shutil.copytree(os.path.join(ROOT, package), os.path.join(code, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    try:
        build_image(docker_client, tag=AGENT_IMAGE, code=code)
    finally:
        shutil.rmtree(code, ignore_errors=True)
    yield AGENT_IMAGE
    docker_client.images.remove(AGENT_IMAGE, force=True)
