"""Agents on brokers of our own (the shared ``agents`` fixture watches the session Redis)."""

from __future__ import annotations

import os
import shutil

import pytest
import redis

from tests.conftest import ARTIFACTS, SESSION
from tests.support.services import AgentProcess, temp_dir


class OwnAgents:
    """Start ``jobyard agent`` processes on any Redis; stop them all at teardown."""

    def __init__(self):
        self.started: list[AgentProcess] = []
        self.state_root = temp_dir("jobyard-state-")

    def start(self, name: str, client: redis.Redis, env: dict, *args: str) -> AgentProcess:
        """An agent named ``<session>-<name>-<n>``, ready once it heartbeats into ``client``'s Redis."""
        hostname = f"{SESSION}-{name}-{len(self.started)}"
        os.makedirs(ARTIFACTS, exist_ok=True)
        agent = AgentProcess(hostname, ["--state-dir", os.path.join(self.state_root, hostname), "--loglevel", "INFO",
                                        "--cpus", "1", "--memory", "1Gi", *args], {**os.environ, **env},
                             os.path.join(ARTIFACTS, f"agent-{hostname}.log"))
        self.started.append(agent)
        return agent.start(client)

    def stop_all(self) -> None:
        for agent in self.started:
            agent.stop(timeout=20)
        shutil.rmtree(self.state_root, ignore_errors=True)


@pytest.fixture(scope="module")
def own_agents(docker_client, python_image, busybox_image):
    factory = OwnAgents()
    yield factory
    factory.stop_all()
