"""Start and stop real services for tests: redis-server on a free port, agents.

Everything started here is stopped by its pid; containers are removed only when
they carry this session's own agent names.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import redis


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """Terminate a process of ours by its pid; kill it if it will not stop within ``timeout``."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server process of our own."""

    port: int
    workdir: str
    args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (run: bash deploy/setup.sh test)")
        os.makedirs(self.workdir, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, *self.args],
            stdout=open(os.path.join(self.workdir, "redis.log"), "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return self
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class AgentProcess:
    """A ``jobyard agent`` subprocess of our own."""

    hostname: str
    args: list[str]
    env: dict[str, str]
    log_path: str
    process: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)
    #: The module run with ``-m``: the ``jobyard`` command, or a bench's own agent.
    module: str = "jobyard.cli"

    def start(self, client: redis.Redis, timeout: float = 30.0) -> "AgentProcess":
        command = [sys.executable, "-m", self.module, "agent", "--hostname", self.hostname, *self.args]
        self.process = subprocess.Popen(command, env=self.env, stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent {self.hostname} exited: {self.log()[-3000:]}")
            if client.exists(f"jobyard:agent:{self.hostname}") and "ready." in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"agent {self.hostname} did not become ready: {self.log()[-3000:]}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def state(self, client: redis.Redis) -> dict | None:
        raw = client.get(f"jobyard:agent:{self.hostname}")
        return json.loads(raw) if raw else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it will not stop."""
        if not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            self.process.wait()


def temp_dir(prefix: str) -> str:
    """A fresh scratch directory, removed when the test process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass
class PrivateDockerd:
    """A Docker Engine of our own, on its own socket and data root, so a test can
    stop and restart it without touching the machine's engine."""

    workdir: str
    process: subprocess.Popen | None = None
    bridge: str = ""

    @property
    def socket(self) -> str:
        return f"unix://{self.workdir}/docker.sock"

    def _make_bridge(self) -> None:
        # A bridge of its own: with --bridge=none a second engine deletes the
        # machine engine's docker0 at start.
        if self.bridge:
            return
        self.bridge = f"jy{os.getpid() % 100000}"
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"10.254.{os.getpid() % 250}.1/24", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def remove_bridge(self) -> None:
        """Delete the engine's own bridge (after the engine stopped for good)."""
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], check=False)
            self.bridge = ""

    def start(self, timeout: float = 60.0) -> "PrivateDockerd":
        import docker

        binary = shutil.which("dockerd")
        if binary is None:
            raise RuntimeError("dockerd is not installed (run: bash deploy/setup.sh test)")
        os.makedirs(self.workdir, exist_ok=True)
        self._make_bridge()
        self.process = subprocess.Popen(
            [binary, "--host", self.socket, "--data-root", f"{self.workdir}/root", "--exec-root",
             f"{self.workdir}/exec", "--pidfile", f"{self.workdir}/docker.pid", "--bridge", self.bridge,
             "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--shutdown-timeout", "2"],
            stdout=open(os.path.join(self.workdir, "dockerd.log"), "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private dockerd exited; see {self.workdir}/dockerd.log")
            try:
                docker.DockerClient(base_url=self.socket, timeout=5).ping()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise RuntimeError("private dockerd did not come up")

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.socket, timeout=120)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
