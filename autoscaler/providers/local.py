"""Hosts as ``jobyard agent`` processes on this machine.

Each host is an agent process with its own hostname, capacity slice and state
directory. A pidfile per host in ``state_dir`` lets a restarted autoscaler find
its agents again; a pid counts only while ``/proc/<pid>/cmdline`` still names the
host, so a reused pid is never mistaken for an agent. Agents get the broker and
result-backend URLs as ``JOBYARD_*_FILE`` paths of 0600 files in
``state_dir/.secrets``, not in their environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from tasks.units import format_memory

from ..errors import ProviderError
from ..shape import HostShape
from . import (Host, HostProvider, agent_options, autoscaler_state_dir, host_prefix, host_shape, without_secrets,
               write_secrets)

if TYPE_CHECKING:
    from ..run import AutoscaleConfig

#: Seconds a removed agent gets for its warm shutdown before SIGKILL.
STOP_TIMEOUT = 30.0


def from_config(config: AutoscaleConfig) -> LocalProvider:
    """The provider ``jobyard autoscale --provider local`` asks for."""
    return LocalProvider(host_shape(config), config.state_dir or autoscaler_state_dir(), host_prefix(config),
                         config.queues, config.agent_args)


class LocalProvider(HostProvider):
    """Starts and stops agent processes named ``<prefix>-<n>``."""

    def __init__(self, shape: HostShape, state_dir: str, prefix: str = "local", queues: tuple[str, ...] = ("default",),
                 agent_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.shape = shape
        self.state_dir = os.path.abspath(state_dir)
        self.prefix = prefix
        self.queues = tuple(queues)
        self.agent_args = tuple(agent_args)
        self.env = dict(env or os.environ)
        self._children: dict[str, subprocess.Popen] = {}
        os.makedirs(self.state_dir, exist_ok=True)

    def hosts(self) -> list[Host]:
        """Agents whose pidfile names a live process of that agent."""
        found = []
        for entry in sorted(os.listdir(self.state_dir)):
            if not entry.endswith(".pid"):
                continue
            record = self._read(entry[:-4])
            if record and _alive(record["pid"], record["name"]):
                found.append(Host(record["name"], record["created"], str(record["pid"])))
            elif record:
                self._forget(record["name"])
        return found

    def add(self, count: int) -> list[Host]:
        """Start ``count`` agents, each with a new name and its own state directory."""
        return [self._start(self._next_name()) for _ in range(count)]

    def remove(self, name: str) -> None:
        """Warm-shut-down the agent ``name`` (SIGTERM), SIGKILL after STOP_TIMEOUT."""
        record = self._read(name)
        if record is None:
            return
        pid = record["pid"]
        try:
            if _alive(pid, name):
                os.kill(pid, signal.SIGTERM)
                if not self._wait(name, pid, STOP_TIMEOUT):
                    os.kill(pid, signal.SIGKILL)
                    self._wait(name, pid, 5.0)
        except ProcessLookupError:
            pass  # it exited on its own in between
        except OSError as exc:
            raise ProviderError(f"cannot stop agent {name} (pid {pid}): {exc}") from exc
        self._forget(name)

    def _start(self, name: str) -> Host:
        command = [sys.executable, "-m", "jobyard.cli", "agent",
                   *agent_options(name, self.shape, self.queues, self.state_dir, self.agent_args)]
        try:
            env = {**without_secrets(self.env), **write_secrets(self.env, os.path.join(self.state_dir, ".secrets"))}
            with open(os.path.join(self.state_dir, f"{name}.log"), "ab") as log:
                process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise ProviderError(f"cannot start agent {name}: {exc}") from exc
        self._children[name] = process
        record = {"name": name, "pid": process.pid, "created": time.time(), "cpus": self.shape.cpus,
                  "memory": self.shape.memory, "command": command}
        self._write(name, record)
        return Host(name, record["created"], str(process.pid))

    def _next_name(self) -> str:
        counter = os.path.join(self.state_dir, "counter")
        try:
            with open(counter) as handle:
                number = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            number = 0
        with open(counter, "w") as handle:
            handle.write(str(number + 1))
        return f"{self.prefix}-{number}"

    def _wait(self, name: str, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = self._children.get(name)
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return True
            if child is None and not _alive(pid, name):
                return True
            time.sleep(0.1)
        return False

    def _pidfile(self, name: str) -> str:
        return os.path.join(self.state_dir, f"{name}.pid")

    def _read(self, name: str) -> dict | None:
        try:
            with open(self._pidfile(name)) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def _write(self, name: str, record: dict) -> None:
        temp = self._pidfile(name) + ".tmp"
        with open(temp, "w") as handle:
            json.dump(record, handle)
        os.replace(temp, self._pidfile(name))

    def _forget(self, name: str) -> None:
        child = self._children.pop(name, None)
        if child is not None and child.poll() is None:
            child.wait(1)
        try:
            os.unlink(self._pidfile(name))
        except FileNotFoundError:
            pass

    def describe(self) -> str:
        """For logs."""
        return f"local agents {self.prefix}-N of {self.shape.cpus:g} cpus, {format_memory(self.shape.memory)}"


def _alive(pid: int, name: str) -> bool:
    """Whether ``pid`` is a running (not zombie) agent process for host ``name``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and name.encode() in argv
