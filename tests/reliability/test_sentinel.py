"""Redis Sentinel: callers, an agent, the state reads and ``jobyard status`` on a Sentinel
URL, and failovers under load that lose no accepted job.

One Sentinel set for the module (tests/support/sentinel.py): a primary, two replicas and
three sentinels on loopback, deciding in about a second. One agent with real containers
consumes through it. Each failover test submits jobs, fails the primary over while
some run and more are being submitted, and then checks that every accepted job ends
SUCCESS with its own value, that the agent never exited, and how often jobs started.

Job writes wait for a replica (``WAIT``, tasks/durable.py; the set's default of one), so
the primary is SIGKILLed while the caller publishes and the agent takes, runs and
settles: a write the dead primary had not replicated was not confirmed to anyone.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from tasks import job
from tasks.app import create_app
from tasks.clients import broker_client
from tasks.config import Settings
from tasks.errors import BrokerUnavailable, PublishNotDurable
from tasks.state import state_client
from tests.conftest import PYTHON_IMAGE, ROOT, wait_for
from tests.support.sentinel import SentinelSet
from tests.support.services import temp_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sentinels():
    """The module's Sentinel set; set up before the agents, so torn down after them."""
    group = SentinelSet().start()
    yield group
    gc.collect()  # the tests' results unsubscribe while the set runs, not from a later test or at exit
    group.stop()


@pytest.fixture(scope="module")
def fleet(sentinels, own_agents):
    """(env, caller app, agent) on the Sentinel URL."""
    env = {"JOBYARD_BROKER_URL": sentinels.url(), "JOBYARD_LEASE_SECONDS": "6", "JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE}
    settings = Settings.from_env(env)
    agent = own_agents.start("sentinel", broker_client(settings), env, "--cpus", "4", "--memory", "2Gi")
    return env, create_app(settings), agent


def jobs_of(app):
    from sample_jobs import add, sleep_for

    return (job(app=app, memory="64Mi", cpus=0.25, timeout=60)(add.fn),
            job(app=app, memory="64Mi", cpus=0.25, timeout=60)(sleep_for.fn))


class Publisher(threading.Thread):
    """Submits ``add(i, 1000)`` jobs until stopped; pausable around a kill.

    A publish no replica confirmed (``PublishNotDurable``) is submitted again under the
    same task id, as the README tells callers to: it is counted in ``not_durable``."""

    def __init__(self, add, interval: float = 0.15):
        super().__init__(daemon=True)
        self.add, self.interval = add, interval
        self.accepted: list = []
        self.refused: list[str] = []
        self.not_durable: list[str] = []
        self.running, self.paused, self.idle = threading.Event(), threading.Event(), threading.Event()
        self.running.set()

    def run(self):
        index = 0
        while self.running.is_set():
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.02)
                continue
            self.idle.clear()
            self.submit(index, str(uuid.uuid4()))
            index += 1
            time.sleep(self.interval)

    def submit(self, index: int, task_id: str, tries: int = 3) -> None:
        began = time.monotonic()
        try:
            self.accepted.append((index, self.add.apply_async((index, 1000), task_id=task_id)))
        except PublishNotDurable as exc:
            self.not_durable.append(f"{index} after {time.monotonic() - began:.1f}s: {exc}")
            if tries > 1:
                self.submit(index, task_id, tries - 1)
            else:
                self.refused.append(f"{index}: still not durable: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - a refused publish is counted, not fatal
            self.refused.append(f"{index} after {time.monotonic() - began:.1f}s: {exc!r}")

    def pause(self) -> None:
        self.idle.clear()
        self.paused.set()
        assert self.idle.wait(30), "the publisher did not pause"

    def stop(self) -> None:
        self.running.clear()
        self.join(30)


def starts(sentinels, task_id: str) -> int:
    return int(sentinels.client().get(f"jobyard:attempts:{task_id}") or 0)


def run_failover(sentinels, fleet, fail, settle=None) -> dict:
    """Submit sleepers and a stream of small jobs, ``fail(sentinels)`` while they run;
    every accepted job must return its value. Returns figures for the caller's checks."""
    env, app, agent = fleet
    add, sleep_for = jobs_of(app)
    sleepers = [sleep_for.delay(3) for _ in range(4)]
    publisher = Publisher(add)
    publisher.start()
    try:
        wait_for(lambda: len(publisher.accepted) >= 5, timeout=30, message="small jobs accepted")
        wait_for(lambda: all(starts(sentinels, r.id) for r in sleepers[:2]), timeout=60,
                 message="sleepers running")
        old = sentinels.primary_port()
        began = time.monotonic()
        fail(sentinels, publisher)
        new = sentinels.wait_failover(old)
        promoted = time.monotonic() - began
        if settle:
            settle(sentinels, old)
        publisher.paused.clear()
        wait_for(lambda: len(publisher.accepted) >= 15, timeout=60, message="small jobs accepted after the failover")
    finally:
        publisher.paused.clear()
        publisher.stop()
    values = {r.id: r.get(timeout=90) for r in sleepers}
    assert all(value == 3 for value in values.values()), values
    for index, result in publisher.accepted:
        assert result.get(timeout=90) == index + 1000, f"job {index} ({result.id}) returned the wrong value"
        assert result.state == "SUCCESS"
    assert agent.alive, f"the agent exited: {agent.log()[-3000:]}"
    every = sleepers + [result for _, result in publisher.accepted]
    # What the caller saw must be what the primary keeps: a write to the old primary
    # after the promotion is gone once it rejoins as a replica.
    results = redis.Redis(port=sentinels.primary_port(), db=1, decode_responses=True)
    stored = {r.id: json.loads(results.get(f"celery-task-meta-{r.id}") or "{}").get("status") for r in every}
    missing = sorted(task_id for task_id, status in stored.items() if status != "SUCCESS")
    runs = {r.id: starts(sentinels, r.id) for r in every}
    assert not missing, f"{len(missing)} of {len(every)} outcomes are not on the new primary: {missing}; runs {runs}"
    return {"old": old, "new": new, "promoted_after": round(promoted, 2), "refused": publisher.refused,
            "not_durable": publisher.not_durable,
            "accepted": len(every), "started_twice": sum(r > 1 for r in runs.values()),
            "starts_not_kept": sum(r == 0 for r in runs.values()), "runs": runs}


def test_callers_agent_state_reads_and_status_work_on_a_sentinel_url(sentinels, fleet):
    env, app, agent = fleet
    add, _ = jobs_of(app)
    assert add.delay(2, 3).get(timeout=60) == 5
    client = state_client(Settings.from_env(env))
    assert client.exists(f"jobyard:agent:{agent.hostname}")
    shown = subprocess.run([sys.executable, "-m", "jobyard.cli", "status", "--json"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": ROOT})
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert agent.hostname in [host["hostname"] for host in json.loads(shown.stdout)["hosts"]]
    # The agent's channel went through the screened Sentinel transport, not kombu's own.
    assert "sentinel-screened" in agent.log() or "sentinel://" in agent.log(), agent.log()[-2000:]


def test_a_publish_waits_out_a_primary_that_refuses_writes_for_want_of_replicas(sentinels, fleet):
    # Right after a promotion the new primary refuses writes (NOREPLICAS) until a replica
    # has attached: seconds, or up to the sentinels' 10 s INFO period for one they had to
    # reconfigure. The same refusal, on the primary in place, for 3 s.
    _, app, _ = fleet
    add, _ = jobs_of(app)
    primary = sentinels.client()
    primary.config_set("min-replicas-to-write", 3)  # more than it has
    restore = threading.Timer(3.0, lambda: primary.config_set("min-replicas-to-write", 1))
    restore.start()
    began = time.monotonic()
    try:
        result = add.delay(7, 1)
    finally:
        restore.join()
        primary.config_set("min-replicas-to-write", 1)
    assert time.monotonic() - began >= 2.5, "the publish did not wait for the primary to take writes again"
    assert result.get(timeout=60) == 8


def test_a_primary_that_refuses_writes_past_the_publish_retries_is_an_error_to_send_again(sentinels, fleet):
    # The refusal outlasts the publish's retries (here a few, not the ~20 s of the app's policy).
    _, app, _ = fleet
    add, _ = jobs_of(app)
    primary = sentinels.client()
    primary.config_set("min-replicas-to-write", 3)
    try:
        with pytest.raises(BrokerUnavailable) as raised:
            add.apply_async((7, 1), retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.1,
                                                  "interval_max": 0.1})
    finally:
        primary.config_set("min-replicas-to-write", 1)
    assert "NOREPLICAS" in str(raised.value) or "replicas" in str(raised.value), str(raised.value)
    result = add.apply_async((7, 1), task_id=raised.value.details["task_id"])
    assert result.get(timeout=60) == 8


def test_the_switch_watch_outlives_kombu_closing_the_sentinel_clients_it_was_given(sentinels):
    # kombu closes a channel's Sentinel manager with the channel (every reconnect of
    # Flower's event receiver does), and with it the sentinel clients a watch was built from.
    from tasks.clients import JobSentinel, SwitchWatch

    def subscribed() -> int:
        return sum(client.get("sub") not in (None, 0, "0")
                   for sentinel in sentinels.sentinels for client in sentinel.client().client_list())

    already = subscribed()
    manager = JobSentinel([("127.0.0.1", s.port) for s in sentinels.sentinels], socket_timeout=5)
    watch = SwitchWatch(manager.sentinels, "mymaster")
    watch.start()
    wait_for(lambda: subscribed() == already + 1, timeout=5, message="the watch to subscribe to +switch-master")
    try:
        manager.close()
        time.sleep(1.5)
        assert watch.is_alive(), "the sentinel watch thread died when kombu closed its sentinel clients"
        assert subscribed() == already + 1, "the watch is no longer subscribed to +switch-master"
    finally:
        watch.stop()


def test_the_autoscaler_adds_a_host_on_a_sentinel_url_and_goes_on_after_a_failover(sentinels, fleet):
    from autoscaler.providers.local import LocalProvider
    from autoscaler.shape import HostShape

    env, app, _ = fleet
    add, _ = jobs_of(app)
    queue, state_dir = f"scale-{uuid.uuid4().hex[:6]}", temp_dir("jobyard-sentinel-scale-")
    scaler = subprocess.Popen(
        [sys.executable, "-m", "jobyard.cli", "autoscale", "--provider", "local", "--max", "1", "--poll", "0.5",
         "--queues", queue, "--state-dir", state_dir, "--host-prefix", f"scale-{queue}", "--host-cpus", "1",
         "--host-memory", "1Gi", "--stabilisation", "600"], cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": ROOT},
        stdout=open(os.path.join(state_dir, "autoscaler.log"), "ab"), stderr=subprocess.STDOUT)
    provider = LocalProvider(HostShape(1.0, 1024**3), state_dir)
    try:
        # Nothing serves the queue: the autoscaler reads its demand through the sentinels and adds a host.
        assert add.apply_async((1, 2), queue=queue).get(timeout=120) == 3
        old = sentinels.primary_port()
        killed = sentinels.signal_primary(signal.SIGKILL)
        sentinels.wait_failover(old)
        assert add.apply_async((2, 2), queue=queue).get(timeout=120) == 4
        assert scaler.poll() is None, open(os.path.join(state_dir, "autoscaler.log")).read()[-3000:]
        assert len(provider.hosts()) == 1, "the autoscaler added a second host or lost its first"
        killed.process.wait()
        sentinels.restart_as_replica(killed)
        sentinels.wait_replicas(2)
    finally:
        scaler.terminate()
        scaler.wait(30)
        for host in provider.hosts():
            provider.remove(host.name)


def test_flower_on_a_sentinel_url_shows_the_agent_and_its_jobs_before_and_after_a_failover(sentinels, fleet):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.observability.conftest import flower_knows_worker, flower_tasks, start_flower
    from tests.support.browser import chromium_driver, quit_driver, send_basic_auth

    env, app, agent = fleet
    add, _ = jobs_of(app)
    flower = start_flower(env["JOBYARD_BROKER_URL"], "operator", uuid.uuid4().hex)
    driver = None
    try:
        wait_for(lambda: flower_knows_worker(flower, agent.hostname), timeout=30,
                 message="flower to see the agent through the sentinels")
        before = add.delay(40, 2)
        assert before.get(timeout=60) == 42
        old = sentinels.primary_port()
        killed = sentinels.signal_primary(signal.SIGKILL)
        sentinels.wait_failover(old)
        killed.process.wait()
        sentinels.restart_as_replica(killed)

        # Flower's event receiver reconnects on its own back-off and misses what ends
        # before it is back (README, Limits): jobs go on until one is seen, with its name.
        afters: list = []

        def one_after_seen():
            afters.append(add.delay(50, len(afters)))
            assert afters[-1].get(timeout=90) == 50 + len(afters) - 1
            tasks = flower_tasks(flower)
            return next((tasks[r.id] for r in afters if tasks.get(r.id, {}).get("state") == "SUCCESS"), None)

        after = wait_for(one_after_seen, timeout=45, interval=0.5, message="flower to see a job on the new primary")
        assert after["name"] == "sample_jobs.add" and after["worker"] == f"jobyard@{agent.hostname}", after
        assert flower_tasks(flower)[before.id]["state"] == "SUCCESS"
        assert flower.process.poll() is None, f"flower exited: {flower.log()[-3000:]}"
        assert "Exception in thread" not in flower.log(), flower.log()[-3000:]
        driver = chromium_driver()
        send_basic_auth(driver, flower.user, flower.password)
        driver.get(f"{flower.url}/tasks")

        def both_rows(d):
            rows = [row.text for row in d.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr")]
            ours = [row for row in rows if before.id in row or after["uuid"] in row]
            return ours if len(ours) == 2 else None

        rows = WebDriverWait(driver, 30, poll_frequency=0.3).until(both_rows)
        assert all("SUCCESS" in row and "sample_jobs.add" in row for row in rows), rows
        sentinels.wait_replicas(2)
    finally:
        if driver:
            quit_driver(driver)
        flower.stop()


def test_primary_sigkilled_under_load_loses_no_accepted_job(sentinels, fleet):
    def kill(group, publisher):
        killed.append(group.signal_primary(signal.SIGKILL))  # mid-stream: publishes ride out the failover

    killed = []
    figures = run_failover(sentinels, fleet, kill)
    print("SIGKILL failover:", {k: v for k, v in figures.items() if k != "runs"})
    assert figures["refused"] == [] and figures["not_durable"] == [], (figures["refused"], figures["not_durable"])
    assert max(figures["runs"].values()) <= 2 and sum(r > 1 for r in figures["runs"].values()) <= 4, figures
    killed[0].process.wait()
    sentinels.restart_as_replica(killed[0])
    sentinels.wait_replicas(2)


def test_primary_demoted_by_sentinel_failover_loses_no_accepted_job(sentinels, fleet):
    def demote(group, publisher):
        # The planned failover (README, "Planned failover"): writes paused on the primary,
        # SENTINEL FAILOVER, then the old primary demoted at once; its paused writes
        # then fail with READONLY and every client retries them on the new primary.
        group.client().execute_command("CLIENT", "PAUSE", 30000, "WRITE")
        group.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "mymaster")

    def demote_now(group, old):
        group.client(old).execute_command("REPLICAOF", "127.0.0.1", group.primary_port())
        group.client(old).execute_command("CLIENT", "UNPAUSE")

    figures = run_failover(sentinels, fleet, demote, settle=demote_now)
    print("SENTINEL FAILOVER:", {k: v for k, v in figures.items() if k != "runs"})
    assert figures["refused"] == [] and figures["not_durable"] == [], (figures["refused"], figures["not_durable"])
    wait_for(lambda: sentinels.client(figures["old"]).info("replication")["role"] == "slave", timeout=30,
             message="the old primary to rejoin as a replica")
    sentinels.wait_replicas(2)


def test_a_result_whose_message_the_caller_missed_is_read_from_the_store(sentinels, fleet):
    # What a caller whose result subscription was reconnecting during a failover sees:
    # the outcome is stored, its pub/sub message went by. Stored without a message here.
    _, app, _ = fleet
    task_id = str(uuid.uuid4())
    result = app.AsyncResult(task_id)
    meta = {"status": "SUCCESS", "result": 42, "traceback": None, "children": [], "date_done": None,
            "task_id": task_id}
    store = threading.Timer(1.0, lambda: redis.Redis(port=sentinels.primary_port(), db=1).set(
        f"celery-task-meta-{task_id}", json.dumps(meta), ex=60))
    store.start()
    try:
        assert result.get(timeout=8) == 42
    finally:
        store.cancel()


def test_primary_partitioned_by_sigstop_rejoins_as_replica(sentinels, fleet):
    stopped = []

    def partition(group, publisher):
        stopped.append(group.signal_primary(signal.SIGSTOP))

    def resume(group, old):
        # Stopped past min-replicas-max-lag (2 s) beyond the failover: on resuming, the old
        # primary counts no replica recent enough and refuses (NOREPLICAS) what it was sent.
        time.sleep(2.5)
        os.kill(stopped[0].process.pid, signal.SIGCONT)
        wait_for(lambda: group.client(old).info("replication")["role"] == "slave", timeout=30,
                 message="the resumed primary to rejoin as a replica")

    # Writes the stopped primary had been sent run there when it resumes, before the
    # sentinels demote it, and are lost when it resyncs. min-replicas-to-write does not
    # refuse them all: Redis recounts its recent replicas once a second, so the writes
    # waiting on its socket run before it notices. WAIT catches the publish among them:
    # no replica confirms it, the caller gets PublishNotDurable and sends it again
    # (the publisher's one thread had at most one publish in flight). Every outcome is
    # on the new primary (the result store retries, the lease reruns).
    figures = run_failover(sentinels, fleet, partition, settle=resume)
    print("SIGSTOP partition:", {k: v for k, v in figures.items() if k != "runs"})
    assert figures["refused"] == [], figures["refused"]
    assert len(figures["not_durable"]) <= 1, figures["not_durable"]
    sentinels.wait_replicas(2)
