"""Placement by CPU and memory requests on real agents with different capacities."""

import json
import threading
import time

import pytest

from tasks import keys
from tasks.errors import JobRejected
from tasks.state import job_facts
from tests.conftest import wait_for

MI = 1024**2


class CapacitySampler:
    """Samples every agent's published state; records any overcommit."""

    def __init__(self, redis_client, interval=0.05):
        self.redis = redis_client
        self.interval = interval
        self.samples = 0
        self.violations = []
        self.peak_running = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        while not self._stop.is_set():
            for name in self.redis.zrange(keys.AGENTS, 0, -1):
                raw = self.redis.get(keys.agent(name))
                if not raw:
                    continue
                state = json.loads(raw)
                cap, res = state["capacity"], state["reserved"]
                running = state["running"]
                self.samples += 1
                self.peak_running[name] = max(self.peak_running.get(name, 0), len(running))
                summed = sum(r["memory"] for r in running), sum(r["cpus"] for r in running)
                if res["memory"] > cap["memory"] or res["cpus"] > cap["cpus"] + 1e-9 or \
                        summed[0] > cap["memory"] or summed[1] > cap["cpus"] + 1e-9:
                    self.violations.append((name, state))
            time.sleep(self.interval)


def _intervals(results):
    spans = []
    for result in results:
        facts = job_facts(result.id)
        spans.append((facts["started_at"], facts["finished_at"], facts["host"]))
    return spans


def _max_overlap(spans):
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def _large_among_small(submit_large, submit_small, seconds: float, earlier: list) -> tuple[dict, list, float]:
    """Submit a large job, then a small one every 0.4 s until it is done (at most
    ``seconds``); wait for all. Returns the large job's facts, the facts of the
    ``earlier`` and small jobs, and when the large one was submitted."""
    large = submit_large()
    submitted = time.time()
    stream = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not large.ready():
        stream.append(submit_small())
        time.sleep(0.4)
    large.get(timeout=60)
    for result in earlier + stream:
        result.get(timeout=120)
    return job_facts(large.id), [job_facts(r.id) for r in earlier + stream], submitted


def test_six_400mi_jobs_on_1gi_run_two_at_a_time(agents, redis_client):
    from sample_jobs import sleep_for

    agents.start("pack", "--cpus", "4", "--memory", "1Gi", "--queues", "pack")
    with CapacitySampler(redis_client) as sampler:
        results = [sleep_for.apply_async((1.5,), memory="400Mi", cpus=0.5, queue="pack") for _ in range(6)]
        assert [r.get(timeout=120) for r in results] == [1.5] * 6
    assert _max_overlap(_intervals(results)) == 2
    assert sampler.samples > 10 and not sampler.violations


def test_mixed_workload_never_overcommits_any_agent(agents, redis_client):
    from sample_jobs import sleep_for

    agents.start("mixA", "--cpus", "2", "--memory", "768Mi", "--queues", "mixed")
    agents.start("mixB", "--cpus", "1", "--memory", "1Gi", "--queues", "mixed")
    sizes = [(64, 0.25), (300, 0.5), (500, 1.0), (128, 0.5), (700, 0.5), (200, 1.0)] * 3
    with CapacitySampler(redis_client) as sampler:
        results = [sleep_for.apply_async((0.8,), memory=f"{mem}Mi", cpus=cpu, queue="mixed")
                   for mem, cpu in sizes]
        for result in results:
            assert result.get(timeout=180) == 0.8
    assert sampler.samples > 20
    assert not sampler.violations, sampler.violations[:2]
    hosts = {host for _, _, host in _intervals(results)}
    assert len(hosts) == 2, "both agents should have taken work"


def test_large_job_starts_within_the_bound_while_small_jobs_flow(agents, redis_client):
    from sample_jobs import sleep_for

    max_wait = 3.0
    agents.start("fair", "--cpus", "2", "--memory", "1Gi", "--queues", "fair", "--max-wait", str(max_wait))
    small = [sleep_for.apply_async((1.5,), memory="300Mi", cpus=0.25, queue="fair") for _ in range(3)]
    time.sleep(0.5)
    large, others, submitted = _large_among_small(
        lambda: sleep_for.apply_async((0.5,), memory="900Mi", cpus=0.5, queue="fair"),
        lambda: sleep_for.apply_async((1.0,), memory="300Mi", cpus=0.25, queue="fair"), 12, small)
    large_started = large["started_at"]
    backfilled = [f for f in others if f["started_at"] < large_started]
    assert backfilled, "small jobs submitted after the large one should run while it waits"
    # Documented bound: once the large job has waited max_wait, nothing else is
    # admitted, so it starts when the jobs running at that moment have finished.
    bound_hit = submitted + max_wait
    running_then = [f for f in others if f["started_at"] <= bound_hit + 1.5 < f["finished_at"]]
    latest = max([bound_hit] + [f["finished_at"] for f in running_then])
    assert large_started <= latest + 3.0, (large_started - submitted, latest - submitted)
    late = [f for f in others if bound_hit + 1.5 < f["started_at"] < large_started]
    assert not late, "a small job was admitted after the large one reached its bound"


def test_a_starving_job_reserves_one_host_while_the_others_keep_backfilling(agents, redis_client):
    from sample_jobs import sleep_for

    max_wait = 2.0
    for name in ("resA", "resB"):
        agents.start(name, "--cpus", "2", "--memory", "1Gi", "--queues", "reserve", "--max-wait", str(max_wait))
    # One 1.5-CPU job per host for 6 s: a whole-host job cannot start before one ends,
    # while 0.5-CPU jobs keep fitting beside them.
    longs = [sleep_for.apply_async((6.0,), memory="100Mi", cpus=1.5, queue="reserve") for _ in range(2)]
    wait_for(lambda: all(job_facts(r.id).get("started_at") for r in longs), timeout=30)
    big, smalls, submitted = _large_among_small(
        lambda: sleep_for.apply_async((0.5,), memory="100Mi", cpus=2.0, queue="reserve"),
        lambda: sleep_for.apply_async((1.0,), memory="100Mi", cpus=0.5, queue="reserve"), 25, longs)
    timeline = [(f["host"][-1], round(f["started_at"] - submitted, 1)) for f in [big, *smalls]]
    # Within the bound: the reserved host drains the job it was running when the bound hit.
    bound_hit = submitted + max_wait
    assert big["started_at"] <= bound_hit + 6.0 + 3.0, timeline
    # One host holds itself free for it; the other keeps admitting small jobs meanwhile.
    window = [f for f in smalls if bound_hit + 1.0 < f["started_at"] < big["started_at"]]
    assert all(f["host"] != big["host"] for f in window), ("the reserved host admitted a small job", timeline)
    assert window, ("the other host stopped backfilling as well", timeline)
    assert not redis_client.hlen(keys.reservations("reserve")), "the reservation should end when the job is taken"


def test_impossible_job_is_rejected_in_seconds_with_the_reason(agents):
    from sample_jobs import add

    agents.start("small", "--cpus", "1", "--memory", "512Mi", "--queues", "tight")
    started = time.monotonic()
    with pytest.raises(JobRejected) as info:
        add.apply_async((1, 2), memory="3Gi", queue="tight").get(timeout=30)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "memory" in message and "3Gi" in message and "512Mi" in message
    assert info.value.resource == "memory" and info.value.largest_host == 512 * MI


def test_job_too_big_for_one_host_goes_to_one_that_fits(agents):
    from sample_jobs import add

    little = agents.start("little", "--cpus", "1", "--memory", "256Mi", "--queues", "sized")
    big = agents.start("big", "--cpus", "2", "--memory", "1536Mi", "--queues", "sized")
    results = [add.apply_async((i, 1), memory="1Gi", queue="sized") for i in range(4)]
    assert [r.get(timeout=60) for r in results] == [1, 2, 3, 4]
    assert {job_facts(r.id)["host"] for r in results} == {big.hostname}
    assert little.alive


def test_agents_run_only_their_own_queues(agents):
    from sample_jobs import add

    red = agents.start("red", "--cpus", "1", "--memory", "512Mi", "--queues", "red")
    blue = agents.start("blue", "--cpus", "1", "--memory", "512Mi", "--queues", "blue,green")
    reds = [add.apply_async((i, 0), queue="red") for i in range(3)]
    blues = [add.apply_async((i, 0), queue=q) for i, q in enumerate(["blue", "green", "blue"])]
    for result in reds + blues:
        result.get(timeout=60)
    assert {job_facts(r.id)["host"] for r in reds} == {red.hostname}
    assert {job_facts(r.id)["host"] for r in blues} == {blue.hostname}


def test_priorities_are_honoured(agents):
    from sample_jobs import sleep_for

    agents.start("prio", "--cpus", "1", "--memory", "128Mi", "--queues", "prio")
    blocker = sleep_for.apply_async((1.5,), memory="100Mi", queue="prio")
    wait_for(lambda: job_facts(blocker.id).get("state") == "running", timeout=20, message="blocker running")
    low = [sleep_for.apply_async((0.1,), memory="100Mi", queue="prio", priority=9) for _ in range(3)]
    high = sleep_for.apply_async((0.1,), memory="100Mi", queue="prio", priority=0)
    for result in [blocker, high, *low]:
        result.get(timeout=60)
    high_start = job_facts(high.id)["started_at"]
    # At most one low job may already have been taken before the high one arrived.
    earlier = [r for r in low if job_facts(r.id)["started_at"] < high_start]
    assert len(earlier) <= 1


def _placement(redis_client):
    from executor.capacity import Capacity, Ledger
    from executor.placement import FleetView, Placement

    ledger = Ledger(Capacity(cpus=1.0, memory=512 * MI))
    return Placement(ledger, FleetView(redis_client), "alone-host", ("alone",))


def _call(memory: str):
    from executor.container import JobCall
    from tasks.spec import JobSpec

    return JobCall("t-" + str(time.time()), JobSpec.from_dict({"name": "big", "kind": "python", "entry": "m:f", "image": "x",
                                                   "memory": memory, "queue": "alone"}),
                   (), {})


def test_a_job_is_rejected_only_on_a_fresh_read_of_the_fleet(redis_server):
    import redis

    from tests.support.services import free_port

    reachable = redis.Redis(port=redis_server.port, decode_responses=True)
    with pytest.raises(JobRejected):
        _placement(reachable)._reject_if_impossible(_call("2Gi"))
    # Redis unreachable: the cached view is empty, the fresh read fails, so no verdict.
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
    _placement(unreachable)._reject_if_impossible(_call("2Gi"))
