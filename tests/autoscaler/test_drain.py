"""Drain-aware scale-in with real agents: a busy host finishes its job before it goes,
and a drain survives the autoscaler being killed in the middle of it."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.conftest import ARTIFACTS, wait_for
from tests.support.services import free_port

Mi = 1024**2
Gi = 1024**3


def _running_on(redis_client, names):
    """task_id -> host, for jobs the given hosts have published as running."""
    where = {}
    for name in names:
        raw = redis_client.get(f"jobyard:agent:{name}")
        for job in json.loads(raw)["running"] if raw else ():
            where[job["task_id"]] = name
    return where


def _two_busy_hosts(redis_client, hosts, queue):
    """Two hosts, one running a short job and one a long one; returns (short, long, host map)."""
    from sample_jobs import sleep_for

    wait_for(lambda: len([h for h in hosts.hosts() if redis_client.exists(f"jobyard:agent:{h.name}")]) == 2, 40,
             message="two hosts up")
    short = sleep_for.apply_async((5,), queue=queue, cpus=0.5, timeout=9)
    long = sleep_for.apply_async((12,), queue=queue, cpus=0.5, timeout=40)
    names = [h.name for h in hosts.hosts()]
    where = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(_running_on(redis_client, names)), 30,
                     message="both jobs running")
    assert where[short.id] != where[long.id]
    return short, long, where


def _facts(redis_client, task_id):
    return {k: json.loads(v) for k, v in redis_client.hgetall(f"jobyard:job:{task_id}").items()}


def test_busy_host_chosen_for_removal_finishes_its_job_first(fleet, run_loop, queue_name, redis_client):
    hosts = fleet(cpus=2.0, memory=1 * Gi, queues=[queue_name], max_jobs=1).provider
    loop, _ = run_loop(hosts, [queue_name], minimum=2, maximum=2, poll=0.5, stabilisation=1, cooldown=0)
    short, long, where = _two_busy_hosts(redis_client, hosts, queue_name)
    loop.stop()

    loop, ticks = run_loop(hosts, [queue_name], minimum=1, maximum=2, poll=0.5, stabilisation=1, cooldown=0)
    wait_for(lambda: ticks.actions, 10, message="a scale-in decision")
    action = ticks.actions[0]
    assert (action.direction, action.hosts) == ("in", (where[short.id],)), action
    assert where[short.id] in [h.name for h in hosts.hosts()], "a host running a job was removed"
    assert short.get(timeout=30) == 5
    removal = wait_for(lambda: [t for t in ticks.ticks if where[short.id] in t.removed], 20,
                       message="the drained host removed")
    removed_at = removal[0].time
    assert where[short.id] not in [h.name for h in hosts.hosts()]
    assert removed_at >= _facts(redis_client, short.id)["finished_at"]
    assert long.get(timeout=40) == 12
    assert [h.name for h in hosts.hosts()] == [where[long.id]]
    assert _facts(redis_client, short.id)["attempt"] == _facts(redis_client, long.id)["attempt"] == 1
    loop.stop()


class Cli:
    """``jobyard autoscale`` as a real process of its own."""

    def __init__(self, fleet, queue, log_name, *options):
        self.command = [sys.executable, "-m", "jobyard.cli", "autoscale", "--provider", "local",
                        "--state-dir", fleet.state_dir, "--host-prefix", fleet.prefix, "--queues", queue,
                        "--host-cpus", "2", "--host-memory", "1Gi", "--agent-arg=--max-jobs", "--agent-arg=1",
                        "--poll", "0.5", "--cooldown", "0", *options]
        self.log_path = os.path.join(ARTIFACTS, log_name)
        self.process = None

    def start(self):
        os.makedirs(ARTIFACTS, exist_ok=True)
        self.process = subprocess.Popen(self.command, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


def test_restart_mid_drain_removes_the_host_only_after_its_job(fleet, queue_name, redis_client, tmp_path):
    from autoscaler.timeline import read_timeline

    one = fleet(cpus=2.0, memory=1 * Gi, queues=[queue_name], max_jobs=1)
    record, port = str(tmp_path / "timeline.jsonl"), free_port()
    cli = Cli(one, queue_name, f"autoscale-{one.prefix}-0.log", "--min", "2", "--max", "2").start()
    try:
        short, long, where = _two_busy_hosts(redis_client, one.provider, queue_name)
        cli.kill()
        cli = Cli(one, queue_name, f"autoscale-{one.prefix}-1.log", "--min", "1", "--max", "2",
                  "--stabilisation", "1").start()
        wait_for(lambda: redis_client.zrange("jobyard:draining", 0, -1) == [where[short.id]], 20,
                 message="a drain to start")
        cli.kill()  # mid-drain: the short job is still running on the draining host
        assert not short.ready(), "the job ended before the restart; the test proves nothing"
        assert where[short.id] in [h.name for h in one.provider.hosts()]

        cli = Cli(one, queue_name, f"autoscale-{one.prefix}-2.log", "--min", "1", "--max", "2",
                  "--stabilisation", "60", "--record", record, "--metrics-port", str(port)).start()
        assert short.get(timeout=30) == 5
        wait_for(lambda: where[short.id] not in [h.name for h in one.provider.hosts()], 20,
                 message="the drain to finish after the restart")
        wait_for(lambda: redis_client.zrange("jobyard:draining", 0, -1) == [], 5, message="the drain mark cleared")
        assert long.get(timeout=40) == 12
        assert [h.name for h in one.provider.hosts()] == [where[long.id]]
        for job in (short, long):
            facts = {k: json.loads(v) for k, v in redis_client.hgetall(f"jobyard:job:{job.id}").items()}
            assert facts["attempt"] == 1 and facts["state"] == "succeeded", facts

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'jobyard_autoscaler_hosts{state="current"} 1.0' in metrics
        assert "jobyard_autoscaler_decisions_total" in metrics
        rows = read_timeline(record)
        assert any(where[short.id] in r["removed"] for r in rows)
        decisions = [json.loads(d) for d in redis_client.lrange("jobyard:autoscaler:decisions", 0, -1)]
        assert any(where[short.id] in d["removed"] for d in decisions)
    finally:
        cli.stop()
    png = tmp_path / "timeline.png"
    subprocess.run([sys.executable, "-m", "jobyard.cli", "autoscale", "plot", record, "-o", str(png)], check=True,
                   timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
