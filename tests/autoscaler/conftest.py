"""Fixtures for autoscaler tests: local fleets named with the session token, and
a loop running in a thread."""

from __future__ import annotations

import itertools
import os
import shutil
import threading

import pytest

from tests.conftest import SESSION
from tests.support.services import temp_dir

_names = itertools.count()


class Fleet:
    """A LocalProvider whose agents carry the session token; stopped at teardown."""

    def __init__(self, redis_server, cpus, memory, queues, max_jobs):
        from autoscaler.providers.local import LocalProvider
        from autoscaler.shape import HostShape

        self.state_dir = temp_dir("jobyard-fleet-")
        self.prefix = f"{SESSION}-as{next(_names)}"
        env = {**os.environ, "JOBYARD_BROKER_URL": redis_server.url}
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

    def make(cpus=1.0, memory=512 * 1024**2, queues=("default",), max_jobs=2):
        made.append(Fleet(redis_server, cpus, memory, queues, max_jobs))
        return made[-1]

    yield make
    for one in made:
        one.stop()


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
