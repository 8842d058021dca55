"""Packing: a seeded mixed workload under request-based placement and under fixed slots.

The same jobs (same seed) run three times, each time on its own fresh agents
consuming their own queue:

1. ``requests`` — jobyard's placement: admit by CPU and memory requests;
2. ``safe slots`` — ``--slots floor(capacity ÷ largest request)`` (per resource, the
   fewer), which can never overcommit;
3. ``average slots`` — ``--slots floor(capacity ÷ average request)``, which can: jobs
   keep their own limits, and the bench reports the overcommit it causes.

Slot agents also get ``--max-jobs N``, so they hold N messages like a plain N-thread
worker (without it a slot agent takes messages by free *requests* and hands back
what finds no free slot, which would slow the baselines down for jobyard's reasons).

Every job (``bench/jobs/packing_jobs.py``) writes to 50–80% of its memory request
and mostly sleeps. The bench reports each mode's makespan against the resource-area
lower bound ``max(Σcpu·d / cpus, Σmem·d / memory, max d)`` — from nominal durations
and from measured container run times — the shortening against safe slots, OOM kills,
overcommit, and where the requests mode loses time (queue wait, container start,
hand-back, release). It starts its own redis-server on a free port and its own agent
subprocesses, builds its job image from local files, and cleans up by pid and by its
own agents' container labels. Figures go to ``bench/RESULTS.md`` (section ``packing``,
or ``packing-quick``), the utilisation plot (full runs) to ``bench/packing-utilisation.png``::

    .venv/bin/python bench/packing.py            # 100 jobs, 3 agents of 2 cpus / 3Gi
    .venv/bin/python bench/packing.py --quick    # 30 jobs, a smoke run

It exits 1 when the requests mode misses a target (≤ 1.15× the nominal lower bound,
≥ 25% shorter than safe slots, no innocent OOM kill).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import secrets
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
JOBS_DIR = os.path.join(BENCH_DIR, "jobs")
sys.path[:0] = [ROOT, BENCH_DIR, JOBS_DIR]

from dispatch import Services, log, remove_containers  # noqa: E402 - needs the path above
from schedules import Item, clairvoyant, in_queue_order  # noqa: E402

MI = 1024**2
IMAGE = "jobyard-bench/packing:latest"
PLOT_PATH = os.path.join(BENCH_DIR, "packing-utilisation.png")
AGENTS = 3
AGENT_CPUS = 2.0
AGENT_MEMORY = 3 * 1024**3
#: Requests: memory uniform in [64Mi, 1.5Gi]; CPUs mostly small, a few whole hosts.
MEMORY_RANGE_MI = (64, 1536)
CPU_CHOICES = (0.25, 0.5, 1.0, 2.0)
CPU_WEIGHTS = (50, 30, 12, 8)
DURATION_RANGE = (0.5, 4.0)
TOUCH_RANGE = (0.5, 0.8)
#: What the job's Python interpreter itself holds; kept out of what it writes, so a
#: job's whole footprint is 50-80% of its request.
INTERPRETER_MEMORY = 16 * MI
SAMPLE_SECONDS = 0.1
TARGET_BOUND = 1.15
TARGET_SHORTER = 0.25
MODE_TIMEOUT = 400.0


# --- the workload -------------------------------------------------------------------

@dataclass(frozen=True)
class JobShape:
    """One job of the workload: its requests (= limits), nominal run time and footprint."""

    index: int
    cpus: float
    memory: int
    seconds: float
    touch_bytes: int


def workload(count: int, seed: int) -> list[JobShape]:
    """``count`` jobs drawn from ``seed``; the same seed gives the same jobs."""
    rng = random.Random(seed)
    shapes = []
    for index in range(count):
        memory = rng.randint(*MEMORY_RANGE_MI) * MI
        touch = max(0, int(rng.uniform(*TOUCH_RANGE) * memory) - INTERPRETER_MEMORY)
        shapes.append(JobShape(index, rng.choices(CPU_CHOICES, CPU_WEIGHTS)[0], memory,
                               round(rng.uniform(*DURATION_RANGE), 2), touch))
    return shapes


def slots_for(cpus: float, memory: float) -> int:
    """How many jobs of this size one agent holds (per resource, the fewer; at least 1)."""
    return max(1, math.floor(min(AGENT_CPUS / cpus, AGENT_MEMORY / memory)))


def area_bound(shapes: list[JobShape], durations: list[float], stranded: bool = True) -> float:
    """max(Σcpu·d / total cpus, Σmem·d / total memory, max d) for these durations.

    ``stranded``: a job that leaves its host less of one resource than the smallest
    request in the workload runs alone there, so the rest of the host's other
    resource is used up with it (a 2-CPU job on a 2-CPU host idles the host's
    memory: every other job needs some CPU). Still a lower bound on any schedule,
    and a much tighter one when such jobs are common.
    """
    least_cpus, least_memory = min(s.cpus for s in shapes), min(s.memory for s in shapes)

    def used(shape: JobShape) -> tuple[float, float]:
        cpus, memory = shape.cpus, shape.memory
        if stranded and AGENT_CPUS - shape.cpus < least_cpus - 1e-9:
            memory = AGENT_MEMORY
        if stranded and AGENT_MEMORY - shape.memory < least_memory:
            cpus = AGENT_CPUS
        return cpus, memory

    areas = [(used(s), d) for s, d in zip(shapes, durations)]
    cpu_area = sum(c * d for (c, _), d in areas) / (AGENTS * AGENT_CPUS)
    memory_area = sum(m * d for (_, m), d in areas) / (AGENTS * AGENT_MEMORY)
    return max(cpu_area, memory_area, max(durations))


def simulated(shapes: list[JobShape], durations: list[float]) -> dict[str, float]:
    """Makespans other schedules make of the same jobs and durations (bench/schedules.py)."""
    items = [Item(s.cpus, s.memory, d) for s, d in zip(shapes, durations)]
    hosts = (AGENTS, AGENT_CPUS, AGENT_MEMORY)
    return {"same rule, no dispatch cost": in_queue_order(items, *hosts),
            "clairvoyant, longest work first": clairvoyant(items, *hosts)}


@dataclass(frozen=True)
class Mode:
    """One way of admitting jobs: by requests (``slots`` None) or fixed slots."""

    key: str
    title: str
    slots: int | None


def modes(shapes: list[JobShape]) -> list[Mode]:
    """Requests, safe slots (largest request) and average slots (mean request)."""
    safe = slots_for(max(s.cpus for s in shapes), max(s.memory for s in shapes))
    average = slots_for(statistics.fmean(s.cpus for s in shapes), statistics.fmean(s.memory for s in shapes))
    return [Mode("requests", "jobyard requests", None), Mode("safe", "safe slots", safe),
            Mode("average", "average slots", average)]


# --- services -----------------------------------------------------------------------

class Fleet(Services):
    """dispatch.py's services (our own redis-server, scratch dir, cleanup) with this
    bench's job image and one set of agent subprocesses per mode."""

    def __init__(self, max_wait: float | None) -> None:
        super().__init__(python=False)
        self.max_wait = max_wait
        self.token = secrets.token_hex(3)
        self.client = None
        self.agents: list = []

    def _build_images(self) -> None:
        import redis

        from executor.image import build_image

        self.client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        log(f"building {IMAGE} (bench/jobs on its path)")
        build_image(self.docker, tag=IMAGE, code=JOBS_DIR, progress=lambda line: log(f"  {line}"))

    def _start_agent(self) -> None:
        """Agents are started per mode (:meth:`start_agents`), not with the services."""

    def start_agents(self, mode: Mode, queue: str) -> list:
        """Start AGENTS agents for ``mode`` consuming ``queue``, in parallel."""
        with ThreadPoolExecutor(AGENTS) as pool:
            agents = list(pool.map(lambda n: self._start_mode_agent(mode, queue, n), range(AGENTS)))
        log(f"{mode.title}: agents {', '.join(f'{a.hostname} (pid {a.process.pid})' for a in agents)} ready")
        return agents

    def _start_mode_agent(self, mode: Mode, queue: str, number: int):
        from tasks.units import format_memory
        from tests.support.services import AgentProcess, free_port

        hostname = f"bench-pack-{self.token}-{mode.key}-{number}"
        port = free_port()
        args = ["--cpus", f"{AGENT_CPUS:g}", "--memory", format_memory(AGENT_MEMORY), "--queues", queue,
                "--state-dir", os.path.join(self.workdir, hostname), "--metrics-port", str(port),
                "--max-wait", f"{self.agent_max_wait():g}"]
        module = "jobyard.cli"
        if mode.slots is not None:  # a plain fixed-slot worker: N threads, N messages held
            args += ["--slots", str(mode.slots), "--max-jobs", str(mode.slots)]
            module = "bench.slot_agent"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        agent = AgentProcess(hostname, args, env, os.path.join(self.workdir, f"{hostname}.log"), module=module)
        agent.extra["metrics_port"] = port
        self.agents.append(agent)
        return agent.start(self.client)

    def agent_max_wait(self) -> float:
        """The agents' --max-wait: as asked, else the agent's default (imported only
        once the services are up: importing jobyard fixes the broker URL)."""
        from executor.placement import DEFAULT_MAX_WAIT

        return DEFAULT_MAX_WAIT if self.max_wait is None else self.max_wait

    def stop_agents(self, agents: list) -> None:
        """Warm-stop ``agents`` (by pid) and remove any container they left."""
        for agent in agents:
            agent.stop(timeout=20)
        if self.docker is not None:
            for agent in agents:
                remove_containers(self.docker, agent.hostname)

    def __exit__(self, *exc_info) -> None:
        self.stop_agents(self.agents)
        log(f"stopped {len(self.agents)} agent(s); removed their containers")
        super().__exit__(*exc_info)


# --- sampling the agents ------------------------------------------------------------

@dataclass
class Sample:
    """One agent's published state at one moment (unix time)."""

    at: float
    host: str
    reserved_cpus: float
    reserved_memory: int
    running: dict[str, float]
    waiting: dict[str, float]
    #: Hosts holding themselves free for a passed-over job (jobyard:reserve:<queue>).
    reserving: frozenset[str] = frozenset()


class Sampler:
    """Reads every agent's published state every SAMPLE_SECONDS while a mode runs."""

    def __init__(self, client, hosts: list[str], queue: str):
        from tasks import keys

        self.client = client
        self.hosts = hosts
        self.keys = [keys.agent(host) for host in hosts]
        self.queue = queue
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="packing-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        from tasks.transport import reservation_holders

        while not self._stop.wait(SAMPLE_SECONDS):
            now = time.time()
            reserving = frozenset(reservation_holders(self.client, [self.queue], now))
            for raw in self.client.mget(self.keys):
                if raw:
                    state = json.loads(raw)
                    self.samples.append(Sample(
                        now, state["hostname"], state["reserved"]["cpus"], state["reserved"]["memory"],
                        {r["task_id"]: r["started"] for r in state["running"]},
                        {w["task_id"]: w["started"] for w in state["waiting"]}, reserving))

    def reservations(self) -> dict[str, tuple[float, float]]:
        """Task id -> (admitted, released): admission as published, release as last seen."""
        spans: dict[str, tuple[float, float]] = {}
        for sample in self.samples:
            for task_id, admitted in sample.running.items():
                spans[task_id] = (admitted, sample.at + SAMPLE_SECONDS / 2)
        return spans


# --- one mode -----------------------------------------------------------------------

@dataclass
class Run:
    """What one mode did: per-job facts and outcomes, samples, agent figures."""

    mode: Mode
    submitted: float
    shapes: list[JobShape]
    task_ids: list[str]
    facts: list[dict[str, Any]]
    outcomes: list[str]
    values: list[dict[str, Any]]
    samples: list[Sample]
    reservations: dict[str, tuple[float, float]]
    hand_backs: list[str]
    start_latency: float
    cpu: dict[str, float]
    hosts: list[str] = field(default_factory=list)
    max_wait: float = 30.0


def run_mode(fleet: Fleet, mode: Mode, shapes: list[JobShape]) -> Run:
    """Submit every job to fresh agents of ``mode`` and wait for all of them."""
    from packing_jobs import hold

    from tasks.state import job_facts

    queue = f"bench-pack-{fleet.token}-{mode.key}"
    agents = fleet.start_agents(mode, queue)
    try:
        job = hold.options(image=IMAGE, queue=queue)
        if hold.app.conf.broker_url != fleet.redis.url:  # never publish to a Redis that is not the bench's own
            raise RuntimeError(f"the job app's broker is {hold.app.conf.broker_url}, not the bench's Redis")
        meter = CpuMeter([a.process.pid for a in agents])
        with Sampler(fleet.client, [a.hostname for a in agents], queue) as sampler:
            submitted = time.time()
            results = [job.apply_async((s.seconds, s.touch_bytes), cpus=s.cpus, memory=s.memory) for s in shapes]
            wait_for_all(mode, results, submitted)
        cpu = meter.read()
        outcomes = [outcome_of(result) for result in results]
        values = [result.result if result.successful() else {} for result in results]
        facts = [job_facts(result.id) for result in results]
        hand_backs = [task_id for a in agents for task_id in re.findall(r"\[([0-9a-f-]{36})\] handed back", a.log())]
        metrics = [scrape(a.extra["metrics_port"]) for a in agents]
        latency = mean_metric(metrics, "jobyard_agent_container_start_seconds")
    finally:
        fleet.stop_agents(agents)
    return Run(mode, submitted, shapes, [r.id for r in results], facts, outcomes, values, sampler.samples,
               sampler.reservations(), hand_backs, latency, cpu, [a.hostname for a in agents], fleet.agent_max_wait())


class CpuMeter:
    """CPU seconds used since creation: the whole machine, the Docker daemons, our agents.

    dockerd and containerd are shared with everyone on this machine, so their
    figure includes other people's containers; the machine's busy share says how
    saturated the two cores were.
    """

    DAEMONS = ("dockerd", "containerd")

    def __init__(self, agent_pids: list[int]):
        import psutil

        self.psutil = psutil
        self.agents = [psutil.Process(pid) for pid in agent_pids]
        self.daemons = [p for p in psutil.process_iter(["name"]) if p.info["name"] in self.DAEMONS]
        self.started = time.monotonic()
        self.machine = self._machine()
        self.before = {"daemons": self._used(self.daemons), "agents": self._used(self.agents)}

    def read(self) -> dict[str, float]:
        """Elapsed seconds, machine busy fraction and CPU seconds of daemons and agents."""
        elapsed = time.monotonic() - self.started
        busy = (self._machine() - self.machine) / (elapsed * (self.psutil.cpu_count() or 1))
        return {"elapsed": elapsed, "machine_busy": busy,
                **{k: self._used(getattr(self, k)) - v for k, v in self.before.items()}}

    def _machine(self) -> float:
        times = self.psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def _used(self, processes: list) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except self.psutil.Error:
                pass
        return total


def wait_for_all(mode: Mode, results: list, submitted: float) -> None:
    """Wait until every result is in, logging progress every few seconds."""
    last_log = 0.0
    while True:
        done = sum(1 for r in results if r.ready())
        elapsed = time.time() - submitted
        if done == len(results):
            log(f"{mode.title}: all {done} jobs done after {elapsed:.1f} s")
            return
        if elapsed > MODE_TIMEOUT:
            raise RuntimeError(f"{mode.title}: only {done}/{len(results)} jobs done after {elapsed:.0f} s")
        if elapsed - last_log >= 5:
            last_log = elapsed
            log(f"{mode.title}: {done}/{len(results)} done, {elapsed:.0f} s")
        time.sleep(0.25)


def outcome_of(result) -> str:
    """'succeeded' or the typed error's class name."""
    if result.successful():
        return "succeeded"
    return type(result.result).__name__


def scrape(port: int) -> str:
    """An agent's Prometheus metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def mean_metric(texts: list[str], histogram: str) -> float:
    """Mean of a histogram summed over several agents' metrics."""
    totals = {"sum": 0.0, "count": 0.0}
    for text in texts:
        for part in totals:
            for value in re.findall(rf"^{histogram}_{part}{{[^}}]*}} (\S+)$", text, re.M):
                totals[part] += float(value)
    return totals["sum"] / totals["count"] if totals["count"] else float("nan")


# --- figures ------------------------------------------------------------------------

@dataclass
class Figures:
    """The numbers reported for one mode."""

    makespan: float
    bound_nominal: float
    bound_measured: float
    bound_reserved: float
    #: The same bounds without stranded capacity (the plain resource-area bound).
    plain_nominal: float
    plain_reserved: float
    #: Other schedules of the same jobs with this run's reserved times (simulated).
    simulated: dict[str, float]
    oom_kills: int
    innocent_ooms: int
    failures: int
    peak_to_limit: float
    peak_reserved: float
    mean_reserved: float
    peak_limits: float
    overcommitted_seconds: float
    overcommitted_starts: int
    queue_wait: list[float]
    before_start: list[float]
    after_exit: list[float]
    reserved_efficiency: float
    fit_idle_seconds: float
    any_fit_idle: dict[str, float]
    startup: list[float]
    touch: list[float]
    run_excess: list[float]


def figures(run: Run) -> Figures:
    """Makespan, bounds, OOMs, overcommit and overheads of one run."""
    facts = run.facts
    runtimes = [f["finished_at"] - f["started_at"] for f in facts]
    ooms = [f for f in facts if f.get("oom_killed")]
    spans = [run.reservations.get(task_id) for task_id in run.task_ids]
    before = [f["started_at"] - s[0] for f, s in zip(facts, spans) if s]
    after = [s[1] - f["finished_at"] for f, s in zip(facts, spans) if s]
    held = [s[1] - s[0] if s else 0.0 for s in spans]
    reserved = sum(held)
    limits = limit_sweep(run)
    return Figures(
        makespan=max(f["finished_at"] for f in facts) - run.submitted,
        bound_nominal=area_bound(run.shapes, [s.seconds for s in run.shapes]),
        bound_measured=area_bound(run.shapes, runtimes),
        bound_reserved=area_bound(run.shapes, held),
        plain_nominal=area_bound(run.shapes, [s.seconds for s in run.shapes], stranded=False),
        plain_reserved=area_bound(run.shapes, held, stranded=False),
        simulated=simulated(run.shapes, held),
        oom_kills=len(ooms),
        innocent_ooms=sum(1 for f, s in zip(facts, run.shapes) if f.get("oom_killed")
                          and s.touch_bytes + INTERPRETER_MEMORY < f["memory_limit"]),
        failures=sum(1 for o in run.outcomes if o != "succeeded"),
        peak_to_limit=max((f.get("peak_memory") or 0) / f["memory_limit"] for f in facts),
        peak_reserved=max((max(s.reserved_memory / AGENT_MEMORY, s.reserved_cpus / AGENT_CPUS)
                           for s in run.samples), default=0.0),
        mean_reserved=mean_reserved(run),
        peak_limits=limits["peak"],
        overcommitted_seconds=limits["seconds"],
        overcommitted_starts=limits["starts"],
        queue_wait=[s[0] - run.submitted for s in spans if s],
        before_start=before,
        after_exit=after,
        reserved_efficiency=sum(runtimes) / reserved if reserved else float("nan"),
        fit_idle_seconds=fit_idle_seconds(run, any_job=False),
        any_fit_idle=backfill_idle(run),
        startup=[v["startup"] for v in run.values if v.get("startup", -1) >= 0],
        touch=[v["touch"] for v in run.values if "touch" in v],
        run_excess=[r - s.seconds for r, s in zip(runtimes, run.shapes)],
    )


def mean_reserved(run: Run) -> float:
    """Mean over sampling moments of the fleet's reserved share of its busier resource."""
    shares = []
    for states, _pending in moments(run):
        cpus = sum(s.reserved_cpus for s in states) / (AGENTS * AGENT_CPUS)
        memory = sum(s.reserved_memory for s in states) / (AGENTS * AGENT_MEMORY)
        shares.append(max(cpus, memory))
    return statistics.fmean(shares) if shares else math.nan


def limit_sweep(run: Run) -> dict[str, float]:
    """Per host, Σ memory limits of running containers against capacity over time.

    ``peak``: the largest ratio of Σ limits (memory, or CPU quota) to capacity;
    ``seconds``: time any host had Σ memory limits above its capacity; ``starts``:
    jobs whose container started into such a moment (they would not have fit).
    """
    peak, seconds, starts = 0.0, 0.0, 0
    for host in run.hosts:
        events = []
        for fact in run.facts:
            if fact["host"] == host:
                events.append((fact["started_at"], 1, fact["memory_limit"], fact["cpus_limit"]))
                events.append((fact["finished_at"], -1, fact["memory_limit"], fact["cpus_limit"]))
        memory = cpus = 0.0
        previous = None
        for at, sign, limit, quota in sorted(events, key=lambda e: (e[0], e[1])):
            if previous is not None and memory > AGENT_MEMORY:
                seconds += at - previous
            memory, cpus = memory + sign * limit, cpus + sign * quota
            peak = max(peak, memory / AGENT_MEMORY, cpus / AGENT_CPUS)
            starts += sign > 0 and memory > AGENT_MEMORY
            previous = at
    return {"peak": peak, "seconds": seconds, "starts": starts}


def moments(run: Run) -> list[tuple[list[Sample], list[int]]]:
    """Per sampling moment: every agent's state and the jobs not admitted yet (by index)."""
    admitted = [(run.reservations[t][0], i) for i, t in enumerate(run.task_ids) if t in run.reservations]
    by_time: dict[float, list[Sample]] = {}
    for sample in run.samples:
        by_time.setdefault(sample.at, []).append(sample)
    return [(states, [i for when, i in admitted if when > at]) for at, states in sorted(by_time.items())]


def fit_idle_seconds(run: Run, any_job: bool) -> float:
    """Seconds during which the next job in queue order fitted some agent's free capacity.

    The next job is the lowest-numbered one not admitted yet; "fits" uses the
    agents' published reservations (slots modes: a free slot). This is time the
    placement machinery, not the shape of the jobs, kept capacity idle.
    """
    idle = 0.0
    for states, pending in moments(run):
        if pending and any(fits(run.mode, run.shapes[min(pending)], state) for state in states):
            idle += SAMPLE_SECONDS
    return idle


def backfill_idle(run: Run) -> dict[str, float]:
    """Seconds during which some job not admitted yet fitted an agent's free capacity, by why.

    ``held elsewhere``: the job was waiting on another agent; ``draining``: every agent
    it fitted was holding itself free for a job passed over past the bound (a
    reservation), or held a waiter past the bound, so took nothing else;
    ``waiters full``: every agent it fitted held DEFAULT_MAX_WAITING waiters, so took
    no message; ``intake open``: dispatch latency, the gate, a fitting job beyond the
    take's look-ahead, hand-back pauses.
    """
    idle = dict.fromkeys(IDLE_REASONS, 0.0)
    for states, pending in moments(run):
        held = {task_id: state.host for state in states for task_id in state.waiting}
        pairs = [(run.task_ids[i], state) for i in pending for state in states if fits(run.mode, run.shapes[i], state)]
        if pairs:
            idle[idle_reason(pairs, held, run.max_wait)] += SAMPLE_SECONDS
    return idle


IDLE_REASONS = ("held elsewhere", "draining", "waiters full", "intake open")


def idle_reason(pairs: list[tuple[str, Sample]], held: dict[str, str], max_wait: float) -> str:
    """Why none of these (job, agent it fits) pairs was admitted at this moment."""
    from executor.placement import DEFAULT_MAX_WAITING

    if any(held.get(task_id) not in (None, state.host) for task_id, state in pairs):
        return "held elsewhere"
    if all(state.host in state.reserving
           or (state.waiting and state.at - min(state.waiting.values()) >= max_wait) for _, state in pairs):
        return "draining"
    if all(len(state.waiting) >= DEFAULT_MAX_WAITING for _, state in pairs):
        return "waiters full"
    return "intake open"


def fits(mode: Mode, shape: JobShape, state: Sample) -> bool:
    """Whether ``shape`` would be admitted by an agent in ``state``."""
    if mode.slots is not None:
        return len(state.running) < mode.slots
    return (state.reserved_cpus + shape.cpus <= AGENT_CPUS + 1e-9
            and state.reserved_memory + shape.memory <= AGENT_MEMORY)


# --- report -------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def results_table(runs: list[Run], all_figures: list[Figures]) -> str:
    """Makespans, bounds, OOMs and overcommit, one row per mode."""
    safe = next((f.makespan for r, f in zip(runs, all_figures) if r.mode.key == "safe"), math.nan)
    lines = ["| mode | slots/agent | makespan (s) | × nominal bound | × measured bound | × reserved-time bound "
             "| vs safe slots "
             "| OOM kills (innocent) | failed | mean reserved ÷ capacity (busier resource) | peak reserved ÷ capacity "
             "| peak Σ limits ÷ capacity "
             "| jobs started into memory overcommit | memory overcommitted (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run, f in zip(runs, all_figures):
        lines.append(
            f"| {run.mode.title} | {run.mode.slots or 'by requests'} | {f.makespan:.1f} "
            f"| {f.makespan / f.bound_nominal:.2f}× | {f.makespan / f.bound_measured:.2f}× "
            f"| {f.makespan / f.bound_reserved:.2f}× "
            f"| {(1 - f.makespan / safe) * 100:+.0f}% shorter | {f.oom_kills} ({f.innocent_ooms}) | {f.failures} "
            f"| {f.mean_reserved:.2f} | {f.peak_reserved:.2f} | {f.peak_limits:.2f} | {f.overcommitted_starts} "
            f"| {f.overcommitted_seconds:.1f} |")
    return "\n".join(lines)


def schedules_section(runs: list[Run], all_figures: list[Figures]) -> str:
    """The requests mode against other schedules of the same jobs (empty without that mode)."""
    by_key = {r.mode.key: f for r, f in zip(runs, all_figures)}
    if "requests" not in by_key:
        return ""
    f = by_key["requests"]
    rows = [("jobyard requests (this run)", f.makespan), *f.simulated.items(),
            ("lower bound (stranded capacity counted)", f.bound_reserved),
            ("plain resource-area bound", f.plain_reserved)]
    lines = ["| schedule of the same jobs | makespan (s) | × lower bound | jobyard ÷ it |", "|---|---|---|---|"]
    lines += [f"| {name} | {value:.1f} | {value / f.bound_reserved:.2f}× | {f.makespan / value:.2f}× |"
              for name, value in rows]
    return (
        "Same jobs, other schedules: each job's measured reserved time in the requests mode (admitted → "
        "released) replayed through a simulator (`bench/schedules.py`) with no dispatch cost. *Same rule* is "
        "jobyard's placement (oldest job that fits, every host backfilling); *clairvoyant* knows every "
        "duration in advance and starts the longest work (duration × dominant share, or duration) first, "
        "which no online scheduler can. The gap from jobyard to the same rule is what taking, starting and "
        "reservations cost; from the same rule to the clairvoyant schedule, not knowing durations; from "
        "there to the bound, what two resources that rarely run out together leave idle.\n\n"
        + "\n".join(lines) + "\n\n")


def overhead_table(runs: list[Run], all_figures: list[Figures]) -> str:
    """Where each mode's time goes besides running jobs."""
    lines = ["| mode | queue wait p50 / p90 (s) | admitted → container running p50 / p90 (s) "
             "| container exited → released p50 / p90 (s) | create+start mean (s, agent metric) "
             "| container run − nominal p50 / p90 (s) | of which interpreter start-up p50 / p90 (s) "
             "| writing memory (inside nominal) p50 / p90 (s) "
             "| Σ run ÷ Σ reserved | next job fitted but idle (s) "
             "| some job fitted but idle (s) (held elsewhere / draining for a starving job / waiters full "
             "/ intake open) "
             "| hand-backs (jobs) | machine CPU busy | dockerd+containerd / agents CPU-s per job |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run, f in zip(runs, all_figures):
        lines.append(
            f"| {run.mode.title} | {_p(f.queue_wait)} | {_p(f.before_start)} | {_p(f.after_exit)} "
            f"| {run.start_latency:.2f} | {_p(f.run_excess)} | {_p(f.startup)} | {_p(f.touch)} "
            f"| {f.reserved_efficiency:.2f} | {f.fit_idle_seconds:.1f} | {sum(f.any_fit_idle.values()):.1f} "
            f"({' / '.join(f'{v:.0f}' for v in f.any_fit_idle.values())}) "
            f"| {len(run.hand_backs)} ({len(set(run.hand_backs))}) | {run.cpu['machine_busy']:.0%} "
            f"| {run.cpu['daemons'] / len(run.shapes):.2f} / {run.cpu['agents'] / len(run.shapes):.2f} |")
    return "\n".join(lines)


def _p(values: list[float]) -> str:
    return f"{percentile(values, 50):.2f} / {percentile(values, 90):.2f}"


def targets(runs: list[Run], all_figures: list[Figures]) -> dict[str, bool]:
    """The issue's targets for the requests mode."""
    by_key = {r.mode.key: f for r, f in zip(runs, all_figures)}
    if not {"requests", "safe"} <= set(by_key):
        return {"targets need the requests and safe modes": False}
    jobyard, safe = by_key["requests"], by_key["safe"]
    return {
        f"makespan ≤ {TARGET_BOUND}× nominal lower bound ({jobyard.makespan / jobyard.bound_nominal:.2f}×; "
        f"{jobyard.makespan / jobyard.plain_nominal:.2f}× the plain area bound)":
            jobyard.makespan <= TARGET_BOUND * jobyard.bound_nominal,
        f"≥ {TARGET_SHORTER:.0%} shorter than safe slots": jobyard.makespan <= (1 - TARGET_SHORTER) * safe.makespan,
        "zero innocent OOM kills (all modes)": all(f.innocent_ooms == 0 for f in all_figures),
    }


def clairvoyant_ratio(runs: list[Run], all_figures: list[Figures]) -> str:
    """The requests mode's makespan against the clairvoyant schedule of its jobs, met or not."""
    f = next((f for r, f in zip(runs, all_figures) if r.mode.key == "requests"), None)
    if f is None:
        return "n/a"
    ratio = f.makespan / f.simulated["clairvoyant, longest work first"]
    return f"{ratio:.2f}×, {'met' if ratio <= TARGET_BOUND else 'MISSED'}"


def report(shapes: list[JobShape], runs: list[Run], all_figures: list[Figures], seed: int,
           load: tuple[float, float], elapsed: float) -> str:
    """The RESULTS.md section."""
    met = targets(runs, all_figures)
    f = all_figures[0]
    mean_cpus = statistics.fmean(s.cpus for s in shapes)
    mean_memory = statistics.fmean(s.memory for s in shapes) / MI
    stranding = sum(1 for s in shapes if s.cpus >= AGENT_CPUS)
    return (
        f"Workload: {len(shapes)} jobs, seed {seed}; memory request uniform "
        f"{MEMORY_RANGE_MI[0]}Mi–{MEMORY_RANGE_MI[1]}Mi (mean {mean_memory:.0f}Mi), CPUs "
        f"{'/'.join(f'{c:g}' for c in CPU_CHOICES)} weighted {'/'.join(map(str, CPU_WEIGHTS))} "
        f"(mean {mean_cpus:.2f}), nominal run {DURATION_RANGE[0]}–{DURATION_RANGE[1]} s; limits = requests; each "
        f"job writes {TOUCH_RANGE[0]:.0%}–{TOUCH_RANGE[1]:.0%} of its request (largest peak ÷ limit seen: "
        f"{max(x.peak_to_limit for x in all_figures):.2f}) and sleeps. {AGENTS} agents of {AGENT_CPUS:g} cpus / "
        f"{AGENT_MEMORY // MI}Mi per mode (`--max-wait {runs[0].max_wait:g}`), fresh for each mode, own queue. "
        "Lower bounds are resource-area bounds that count stranded capacity: a job that leaves its host less "
        "CPU or memory than the smallest request runs alone there, so the rest of the host goes with it (here "
        f"the {stranding} jobs asking a whole host's {AGENT_CPUS:g} CPUs idle its memory). From nominal "
        f"durations {f.bound_nominal:.1f} s (the plain area bound, without stranding: {f.plain_nominal:.1f} s); "
        f"from measured container run times (requests mode) {f.bound_measured:.1f} s. "
        "Makespan = first submit → last container exit. The reserved-time bound is the same area bound "
        "over each job's admitted → released time in that mode: what no placement could beat given the "
        "per-job costs of starting and removing containers. No placement beats the measured bound, which "
        f"here is {f.bound_measured / f.bound_nominal:.2f}× the nominal one: containers run longer than "
        "their nominal time (interpreter start-up; memory writes slowed by 3 agents claiming 6 CPUs on 2 real "
        "cores, which the machine CPU busy column shows).\n\n"
        f"{results_table(runs, all_figures)}\n\n"
        f"{schedules_section(runs, all_figures)}"
        "Where the time goes (queue wait = submit → admitted; admitted → running = container create+start "
        "while the job holds its reservation; exited → released = collect, remove, result, while it still "
        "holds it; next job fitted but idle = sampled time in which the next job in queue order fitted an "
        "agent's free capacity but was not admitted):\n\n"
        f"{overhead_table(runs, all_figures)}\n\n"
        "Targets (requests mode): " + "; ".join(f"{k}: **{'met' if v else 'MISSED'}**" for k, v in met.items())
        + f". Within {TARGET_BOUND}× of the clairvoyant schedule of the same measured jobs (not the issue's "
        f"target; what an online scheduler can be held to on this machine): **{clairvoyant_ratio(runs, all_figures)}**"
        + ".\n\nAverage slots overcommit: this machine has far more RAM than the agents' nominal capacity, so "
        "the kernel killed nothing; on hosts whose real memory were the stated capacity, the jobs counted as "
        "started into memory overcommit are the ones that would not have fit (OOM risk for them or a "
        "neighbour).\n\n"
        f"Noise: this 2-core machine runs the agents, dockerd and every job; 1-min load average {load[0]:.2f} at the "
        f"start and {load[1]:.2f} at the end. Modes ran one after the other. Run took {elapsed:.0f} s. "
        f"Plot: `bench/{os.path.basename(PLOT_PATH)}`."
    )


def plot(runs: list[Run], all_figures: list[Figures], path: str = PLOT_PATH) -> None:
    """Σ requests of running containers ÷ total capacity over time, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = max(f.makespan for f in all_figures)
    figure, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), sharex=True, squeeze=False)
    for ax, run, f in zip(axes[:, 0], runs, all_figures):
        times, cpus, memory = utilisation(run)
        ax.step(times, memory, where="post", label="memory limits of running containers")
        ax.step(times, cpus, where="post", label="CPU limits of running containers", alpha=0.7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axvline(f.bound_nominal, color="grey", linestyle="--", linewidth=0.8, label="nominal lower bound")
        ax.set_title(f"{run.mode.title} ({run.mode.slots or 'by requests'} slots/agent): "
                     f"makespan {f.makespan:.1f} s", fontsize=10)
        ax.set_ylabel("÷ fleet capacity")
        ax.set_xlim(0, horizon * 1.02)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since submit")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def utilisation(run: Run) -> tuple[list[float], list[float], list[float]]:
    """Step series of Σ limits of running containers ÷ fleet capacity."""
    events = sorted([(f["started_at"], 1, f) for f in run.facts] + [(f["finished_at"], -1, f) for f in run.facts],
                    key=lambda e: (e[0], e[1]))
    times, cpus, memory = [0.0], [0.0], [0.0]
    for at, sign, fact in events:
        times.append(at - run.submitted)
        cpus.append(cpus[-1] + sign * fact["cpus_limit"] / (AGENTS * AGENT_CPUS))
        memory.append(memory[-1] + sign * fact["memory_limit"] / (AGENTS * AGENT_MEMORY))
    return times, cpus, memory


# --- main ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs in the workload (default 100)")
    parser.add_argument("--seed", type=int, default=3, help="workload seed (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 jobs")
    parser.add_argument("--modes", default="requests,safe,average",
                        help="comma-separated modes to run (default all three; targets need requests and safe)")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="the agents' --max-wait (default: the agent's own default)")
    parser.add_argument("--save", default=None, help="also write every run's raw data to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="print figures, leave RESULTS.md and the plot alone")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (30 if args.quick else 100)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the three modes and write the packing section of bench/RESULTS.md."""
    args = parse_args(argv)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    shapes = workload(args.jobs, args.seed)
    chosen = [mode for mode in modes(shapes) if mode.key in args.modes.split(",")]
    log("modes: " + ", ".join(f"{m.title} ({m.slots or 'by requests'})" for m in chosen))
    with Fleet(args.max_wait) as fleet:
        runs = [run_mode(fleet, mode, shapes) for mode in chosen]
    if args.save:
        with open(args.save, "w") as handle:
            json.dump([dataclasses.asdict(run) for run in runs], handle, default=sorted)
    all_figures = [figures(run) for run in runs]
    section = report(shapes, runs, all_figures, args.seed, (load_start, os.getloadavg()[0]),
                     time.monotonic() - started)
    print(section)
    if not args.no_write:
        from results import update_section

        if not args.quick:
            plot(runs, all_figures)
        update_section("packing-quick" if args.quick else "packing", section)
        log("wrote bench/RESULTS.md" + ("" if args.quick else f" and {os.path.relpath(PLOT_PATH, ROOT)}"))
    return 0 if all(targets(runs, all_figures).values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
