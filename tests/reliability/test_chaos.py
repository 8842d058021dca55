"""Chaos: the short form of bench/chaos.py passes; broker outages neither lose nor repeat a job.

The short form runs as a subprocess with its own redis-server (AOF always), its own
agents and its own image: 80 jobs, 3 agent SIGKILLs, one Redis SIGKILL + restart.
The other tests put a loopback proxy between one agent and the session's Redis and
cut it at an exact moment, to pin down what the chaos run can only hit by chance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tasks.state import job_facts
from tests.conftest import ARTIFACTS, ROOT, SESSION, wait_for
from tests.support.services import AgentProcess, free_port, temp_dir

CHAOS = os.path.join(ROOT, "bench", "chaos.py")


@pytest.mark.slow
def test_short_chaos_run_loses_nothing_and_leaves_nothing(tmp_path):
    figures_path = tmp_path / "chaos.json"
    completed = subprocess.run([sys.executable, CHAOS, "--short", "--no-write", "--json", str(figures_path)],
                               capture_output=True, text=True, timeout=600,
                               env={**os.environ, "CHAOS_KEEP_LOGS": os.path.join(ARTIFACTS, "chaos-short")})
    assert figures_path.exists(), f"the bench wrote no figures:\n{completed.stderr[-4000:]}"
    figures = json.loads(figures_path.read_text())
    summary = completed.stdout[-4000:]
    assert figures["agent_kills"] >= 2 and figures["redis_restarts"] == 1, summary
    assert figures["lost"] == [], summary
    assert figures["changed"] == [] and figures["extra_terminal_writes"] == [], summary
    assert figures["reruns"] <= figures["in_flight_agent_kills"] + figures["in_flight_redis_kill"], summary
    assert figures["runs_after_terminal"] == [], summary
    assert figures["orphans_running"] == [] and figures["orphans_stopped"] == [], summary
    assert figures["agent_exits"] == [] and figures["untyped"] == [], summary
    assert completed.returncode == 0, summary


class CuttingProxy:
    """A loopback TCP proxy to Redis that plays a broker crash at one exact moment.

    When Redis replies with ``needle`` (the take that hands a job to the agent),
    it drops that reply and every connection and refuses new ones for ``outage``
    seconds: what an agent sees when Redis dies just after executing a pop.
    """

    def __init__(self, target_port: int, outage: float, on_request: bool = False):
        self.target_port = target_port
        self.outage = outage
        self.needle: bytes | None = None
        #: Watch what clients send instead: let a command carrying ``needle`` reach
        #: Redis, then drop its reply (Redis dying just after executing it).
        self.on_request = on_request
        self.muted = False
        self.tripped = threading.Event()
        self.refuse_until = 0.0
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            if time.time() < self.refuse_until:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_redis: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_redis != self.on_request and self.needle and self.needle in data \
                        and not self.tripped.is_set():
                    if self.on_request:
                        self.muted = True  # until the cut: the reply must not get through
                        sink.sendall(data)
                        time.sleep(0.2)  # Redis executes it; its reply dies with the connection
                    return self.cut()  # from Redis: it has taken the job; the reply dies likewise
                if from_redis and self.muted:
                    continue
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """Drop every connection now and refuse new ones for the outage."""
        self.refuse_until = time.time() + self.outage
        self.tripped.set()
        self._drop()
        self.muted = False

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self.listener.close()
        self._drop()

    def _drop(self) -> None:
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.slow
def test_job_popped_just_before_a_broker_outage_still_runs(behind_proxy, redis_client):
    from sample_jobs import add

    proxy, _agent, queue = behind_proxy("popped", outage=3.0)
    task_id = str(uuid.uuid4())
    proxy.needle = task_id.encode()
    result = add.apply_async((1, 2), queue=queue, task_id=task_id)
    wait_for(proxy.tripped.is_set, timeout=30, message="the agent popping the job")
    time.sleep(proxy.outage + 1)
    held = where_held(redis_client, task_id, queue)
    # Lease (10 s) plus two sweeps and slack: a job Redis still held has run by now.
    ran = wait_for_result(result, timeout=40)
    assert ran, f"job {task_id}: no result; after the outage Redis held it in {held or 'no key'}"
    assert result.get(timeout=5) == 3


def test_a_publish_whose_reply_is_lost_queues_the_job_once(redis_server, redis_client):
    # Celery retries a publish that raised a connection error; the first one may have run.
    import dataclasses

    from tasks.app import RUN_TASK, SPEC_HEADER, create_app
    from tasks.config import Settings

    proxy = CuttingProxy(redis_server.port, outage=0.25, on_request=True)
    caller = create_app(dataclasses.replace(Settings.from_env(),
                                            broker_url=f"redis://127.0.0.1:{proxy.port}/0"))
    queue, task_id = f"publish-{SESSION}", str(uuid.uuid4())
    try:
        proxy.needle = task_id.encode()
        caller.send_task(RUN_TASK, args=[1, 2], task_id=task_id, queue=queue,
                         headers={SPEC_HEADER: {"name": "x"}})
        assert proxy.tripped.is_set(), "the proxy never saw the publish"
        held = [item for item in redis_client.lrange(queue, 0, -1) if task_id in item]
        assert len(held) == 1, f"the job was queued {len(held)} times"
    finally:
        redis_client.delete(queue)
        proxy.close()


@pytest.mark.slow
def test_running_job_runs_once_across_a_broker_connection_blip(behind_proxy, redis_client):
    from sample_jobs import sleep_for

    proxy, _agent, queue = behind_proxy("blip", outage=0.0)
    result = sleep_for.apply_async((8,), queue=queue)
    wait_for(lambda: job_facts(result.id).get("container_id"), timeout=30, message="the job running")
    proxy.cut()
    assert wait_for_result(result, timeout=60) and result.get(timeout=5) == 8
    starts = redis_client.get(f"jobyard:attempts:{result.id}")
    assert starts == "1", f"job {result.id} started {starts} times after one connection blip"


@pytest.mark.slow
def test_a_job_waiting_for_its_eta_when_the_connection_drops_still_runs(behind_proxy, redis_client):
    # Celery cancels the ETA timers of a consumer whose connection closed, expecting the
    # broker to deliver those messages again; the agent held them and renewed their leases.
    from sample_jobs import add

    proxy, agent, queue = behind_proxy("eta", outage=0.0)
    result = add.apply_async((2, 2), queue=queue, countdown=3)
    wait_for(lambda: where_held(redis_client, result.id, queue) == ["hash unacked"] and "received" in agent.log(),
             timeout=30, message="the agent holding the job until its eta")
    proxy.cut()
    # Lease (10 s) plus a sweep and a container start: the lease brings it back once let go.
    ran = wait_for_result(result, timeout=30)
    assert ran, f"job {result.id} never ran; Redis holds it in {where_held(redis_client, result.id, queue)}"
    assert result.get(timeout=5) == 4


@pytest.mark.slow
def test_dead_hosts_job_comes_back_in_seconds_after_a_kill_inside_a_sweep(agents, redis_client, docker_client):
    from sample_jobs import sleep_for

    queue = f"sweep-{SESSION}"
    doomed = agents.start("sweeper", "--cpus", "1", "--memory", "512Mi", "--queues", queue)
    result = sleep_for.apply_async((20,), queue=queue)
    wait_for(lambda: job_facts(result.id).get("container_id"), timeout=30, message="the job running")
    rescuer = agents.start("rescuer", "--cpus", "1", "--memory", "512Mi", "--queues", queue)
    # What a sweeping agent leaves when it is SIGKILLed between taking the lock and releasing it.
    from tasks import app

    expire = app.conf.broker_transport_options.get("unacked_mutex_expire", 300)  # kombu's default
    redis_client.set("unacked_mutex", "held-by-a-killed-agent", ex=expire)
    doomed.kill()
    try:
        # Lease 10 s, sweeps every 2 s, container start: as test_leases allows, plus load slack.
        wait_for(lambda: job_facts(result.id).get("host") == rescuer.hostname, timeout=30,
                 message="the job requeued to the rescuer")
    finally:
        redis_client.delete("unacked_mutex")  # the rest of the session must not wait 5 minutes
        result.revoke(terminate=True)
        for host in (doomed.hostname, rescuer.hostname):
            wait_for(lambda: _stop_containers(docker_client, host), timeout=30, message=f"{host}'s containers gone")


@pytest.fixture
def behind_proxy(redis_server, redis_client, docker_client, python_image):
    """Start agents whose broker connection goes through a :class:`CuttingProxy`; stop both at teardown.

    ``behind_proxy(name, outage)`` returns (proxy, agent, queue). The agent has room
    for two jobs, so while one runs it waits on its own queue (a doorbell wait, tasks.transport).
    """
    started = []

    def start(name: str, outage: float) -> tuple[CuttingProxy, AgentProcess, str]:
        proxy = CuttingProxy(redis_server.port, outage)
        queue, hostname = f"{name}-{SESSION}", f"{SESSION}-{name}-0"
        env = {**os.environ, "JOBYARD_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        os.makedirs(ARTIFACTS, exist_ok=True)
        agent = AgentProcess(hostname, ["--state-dir", temp_dir("jobyard-state-"), "--cpus", "2", "--memory", "1Gi",
                                        "--queues", queue], env, os.path.join(ARTIFACTS, f"agent-{hostname}.log"))
        started.append((proxy, agent))
        return proxy, agent.start(redis_client), queue

    yield start
    for proxy, agent in started:
        agent.stop(timeout=20)
        proxy.close()


def where_held(client, task_id: str, queue: str) -> list[str]:
    """The Redis keys still holding ``task_id``'s message: its queue list, kombu's unacked hash."""
    places = [f"list {queue}"] if any(task_id in item for item in client.lrange(queue, 0, -1)) else []
    return places + (["hash unacked"] if any(task_id in item for item in client.hvals("unacked")) else [])


def wait_for_result(result, timeout: float) -> bool:
    """Poll ``result`` until it is ready (True) or ``timeout`` passes (False)."""
    try:
        wait_for(result.ready, timeout=timeout, interval=0.5, message="a result")
    except AssertionError:
        return False
    return True


def _stop_containers(docker_client, host):
    """Remove the containers labelled with ``host``; True once none is left."""
    for container in docker_client.api.containers(all=True, filters={"label": f"jobyard.agent={host}"}):
        try:
            docker_client.api.remove_container(container["Id"], force=True)
        except Exception:  # noqa: BLE001 - it may be going away by itself
            pass
    return not docker_client.api.containers(all=True, filters={"label": f"jobyard.agent={host}"})
