"""A Redis Sentinel set of our own: a primary, replicas and three sentinels on loopback.

Every process is ours and is stopped by its pid. Sentinels decide fast
(``down-after-milliseconds`` 1000, ``failover-timeout`` 3000), so a failover takes a
few seconds. :class:`SentinelSet` can kill, stop (SIGSTOP) and resume the primary,
ask the sentinels for a failover, and bring a dead server back as a replica.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

import redis

from tests.support.services import RedisServer, free_port, stop_process, temp_dir

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
#: Every server refuses writes with fewer than one replica acknowledging within 2 s:
#: an old primary back from a partition refuses instead of taking writes it would lose.
MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "2")


@dataclass
class SentinelProcess:
    """One ``redis-server FILE --sentinel`` of ours, with its own writable config file."""

    port: int
    workdir: str
    process: subprocess.Popen | None = None
    #: TLS only, when given: redis config lines (``tls-cert-file`` ...) and the client's options.
    tls_config: dict[str, str] = field(default_factory=dict)
    tls_client: dict = field(default_factory=dict)

    def start(self, primary_port: int, quorum: int = 2, timeout: float = 10.0) -> "SentinelProcess":
        os.makedirs(self.workdir, exist_ok=True)
        config = os.path.join(self.workdir, "sentinel.conf")
        ports = f"port 0\ntls-port {self.port}\n" if self.tls_config else f"port {self.port}\n"
        ports += "".join(f"{name} {value}\n" for name, value in self.tls_config.items())
        with open(config, "w") as handle:
            handle.write(f"{ports}bind 127.0.0.1\ndir {self.workdir}\n"
                         f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {quorum}\n"
                         f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                         f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                         f"sentinel parallel-syncs {MASTER} 2\n")
        self.process = subprocess.Popen([shutil.which("redis-server"), config, "--sentinel"],
                                        stdout=open(os.path.join(self.workdir, "sentinel.log"), "ab"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"sentinel did not start on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True, **self.tls_client)

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class SentinelSet:
    """A primary, ``replicas`` replicas and three sentinels watching them as :data:`MASTER`."""

    replicas: int = 2
    #: Arguments every server of the set gets (by default: refuse writes without a replica).
    server_args: tuple[str, ...] = MIN_REPLICAS
    workdir: str = field(default_factory=lambda: temp_dir("jobyard-sentinel-"))
    servers: dict[int, RedisServer] = field(default_factory=dict)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    def start(self) -> "SentinelSet":
        primary = self._server(free_port()).start()
        for _ in range(self.replicas):
            self._server(free_port(), primary.port).start()
        self.wait_replicas(self.replicas)
        for index in range(3):
            port = free_port()
            self.sentinels.append(SentinelProcess(port, os.path.join(self.workdir, f"s{index}-{port}"))
                                  .start(primary.port))
        self.wait_known()
        return self

    def _server(self, port: int, replica_of: int | None = None) -> RedisServer:
        args = ("--replicaof", "127.0.0.1", str(replica_of)) if replica_of else ()
        args += self.server_args
        server = RedisServer(port, os.path.join(self.workdir, f"r{port}"), args)
        self.servers[port] = server
        return server

    def url(self, db: int = 0) -> str:
        """The Sentinel URL of this set, in Celery's form."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client().sentinel_get_master_addr_by_name(MASTER)[1])
            except (redis.exceptions.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def primary(self) -> RedisServer:
        return self.servers[self.primary_port()]

    def client(self, port: int | None = None) -> redis.Redis:
        """A plain client of one server (the primary by default), for the test's own checks."""
        return redis.Redis(port=port or self.primary_port(), socket_timeout=5, decode_responses=True)

    def wait_replicas(self, count: int, timeout: float = 20.0) -> None:
        """Until the primary has ``count`` replicas online and every sentinel sees them up
        (a replica a sentinel still thinks down is not reconfigured by the next failover)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = self.client(self._first_primary()).info("replication")
                online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
                if len(online) >= count and all(self._replicas_up(sentinel) >= count for sentinel in self.sentinels):
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the primary has fewer than {count} replicas online that every sentinel sees")

    @staticmethod
    def _replicas_up(sentinel: SentinelProcess) -> int:
        return sum(not replica["is_sdown"] and not replica["is_disconnected"]
                   and replica.get("master-link-status") == "ok"
                   for replica in sentinel.client().sentinel_slaves(MASTER))

    def _first_primary(self) -> int:
        if self.sentinels:
            return self.primary_port()
        return next(iter(self.servers))

    def wait_known(self, timeout: float = 20.0) -> None:
        """Until every sentinel knows the replicas and the other sentinels."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(int(s.client().sentinel_master(MASTER)["num-other-sentinels"]) == len(self.sentinels) - 1
                       and int(s.client().sentinel_master(MASTER)["num-slaves"]) >= self.replicas
                       for s in self.sentinels):
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not find each other and the replicas")

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Until every sentinel names a primary other than ``old_port`` that answers as a master; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = {int(s.client().sentinel_get_master_addr_by_name(MASTER)[1]) for s in self.sentinels}
                if len(ports) == 1 and old_port not in ports:
                    port = ports.pop()
                    if self.client(port).info("replication")["role"] == "master":
                        return port
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no failover away from port {old_port} within {timeout}s")

    def signal_primary(self, signum: int) -> RedisServer:
        server = self.primary()
        os.kill(server.process.pid, signum)
        return server

    def restart_as_replica(self, server: RedisServer) -> None:
        """Bring a killed server back, replicating the current primary."""
        server.args = ("--replicaof", "127.0.0.1", str(self.primary_port()), *self.server_args)
        server.start()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            if server.process and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
