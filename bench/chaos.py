"""Chaos: hundreds of short jobs while agents are SIGKILLed and Redis is killed once.

The bench starts its own redis-server (AOF, ``appendfsync always``) on a free port,
2–3 agent subprocesses with names of its own, and builds an image holding
``bench/jobs/chaos_jobs.py``. It submits jobs at a steady rate while a chaos thread
SIGKILLs one agent every few seconds and restarts it under the same hostname (so it
reaps what it left), and once SIGKILLs Redis and restarts it on the same port and
directory. Then it waits for every job's terminal state and for any late re-run.

The ledger is kept from outside the jobs, which have no network:

* accepted: the time ``apply_async`` returned, per job id;
* starts: every container start of a bench agent, from Docker's event stream
  (labels ``jobyard.job``, ``jobyard.attempt``, ``jobyard.agent``);
* terminal: the state, value or typed error and ``date_done`` from ``AsyncResult``,
  polled (never one long blocking ``get``) so the caller rides out the Redis restart;
* terminal writes: the agents' own log lines for a stored outcome, per job id;
* messages: Celery's task-sent and task-received events (each message's retry
  number and eta), so a job's retry due time is known wherever its message waited.

Recovery of a job a kill had in flight counts from the later of the kill and its
retry's due time (a job in a retry countdown is not late until it is due) to its
next container start; the bench prints p50 / p99 / max, the old kill → re-run figure
beside it, the load average, and whether recovery max meets 15 s (quiet machine:
load average at most its cores) and 2× the lease (under load). The targets are
printed, not criteria: the exit code does not depend on them.

Pass: every accepted job reaches exactly one terminal state, 0 lost, re-runs ≤ jobs in
flight at the kills, no run after a job's terminal state, 0 orphan containers, and no
agent process ends on its own (agents must ride out the Redis restart). Figures
go to ``bench/RESULTS.md`` (section ``chaos``, or ``chaos-short`` for ``--short``)::

    .venv/bin/python bench/chaos.py            # 500 jobs, 3 agents, an agent kill every 6 s
    .venv/bin/python bench/chaos.py --short    # 80 jobs, 3 agent kills, the CI form
    .venv/bin/python bench/chaos.py --failover # 300 jobs on a Sentinel set, its primary SIGKILLed
    .venv/bin/python bench/chaos.py --short --doomed 0.4 --retry-delay 4 --no-write
                                               # many jobs caught mid-retry (diagnosis)

It exits 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import glob
import json
import math
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path[:0] = [ROOT, BENCH_DIR, os.path.join(BENCH_DIR, "jobs")]

IMAGE = "jobyard-bench/chaos:latest"
JOBS_DIR = os.path.join(BENCH_DIR, "jobs")
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
#: Redis durable for every acknowledged write: an accepted job survives a SIGKILL.
AOF_ARGS = ("--appendonly", "yes", "--appendfsync", "always")
#: The caller's publish rides out a Redis restart: kombu reconnects and republishes.
PUBLISH_RETRY = {"max_retries": 120, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.5}
#: Job kinds, their share of the workload, and how many container starts each needs.
KINDS = {"nap": (0.70, 1), "crunch": (0.25, 1), "doomed": (0.05, 2)}
#: Recovery targets (seconds): on a quiet machine (load average ≤ its cores); under load, 2× the lease.
QUIET_RECOVERY = 15.0
#: An agent's log line for a stored outcome (Celery's tracer writes it after the backend).
TERMINAL_LOG = re.compile(r"Task \S+\[([0-9a-f-]{36})\] (?:succeeded in|raised unexpected|raised expected)")
CONNECTED_LOG = re.compile(r"^(\S+ \S+) INFO celery\.worker\.consumer\.connection: Connected to", re.M)


def log(message: str) -> None:
    """Progress on stderr, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the plan -----------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What a run does and when (seconds from the first submission)."""

    jobs: int = 500
    agents: int = 3
    rate: float = 2.5
    first_kill: float = 5.0
    kill_every: float = 6.0
    agent_down: float = 1.5
    redis_at: float = 0.4
    redis_down: float = 2.0
    quiet: float = 15.0
    max_kills: int = 1000
    max_jobs: int = 4
    drain: float = 400.0
    seed: int = 7
    #: Share of jobs of the failing kind (``doomed``: fails, retries once, fails again).
    doomed: float = KINDS["doomed"][0]
    #: Seconds of the failing kind's retry countdown (``retry_delay``, per call; 0.5 as
    #: ``chaos_jobs.doomed`` declares).
    retry_delay: float = 0.5

    @property
    def submit_seconds(self) -> float:
        """How long submission lasts; agent kills happen during it."""
        return self.jobs / self.rate


FULL = Plan()
SHORT = Plan(jobs=80, rate=2.0, first_kill=4.0, kill_every=7.0, redis_at=0.45, quiet=10.0, max_kills=3,
             drain=60.0)


def schedule(plan: Plan) -> list[tuple[float, str]]:
    """(seconds from the start, ``agent`` or ``redis``) of every kill.

    Agent kills stop when submission does; none falls in the window around the
    Redis kill, so every agent's reconnection is seen on its own.
    """
    redis_at = plan.redis_at * plan.submit_seconds
    kills, moment = [], plan.first_kill
    while moment < plan.submit_seconds and len(kills) < plan.max_kills:
        if not redis_at - plan.kill_every / 2 < moment < redis_at + plan.quiet:
            kills.append((moment, "agent"))
        moment += plan.kill_every
    return sorted([*kills, (redis_at, "redis")])


def kind_shares(plan: Plan) -> dict[str, float]:
    """Each kind's share of the workload: ``plan.doomed`` for the failing kind, the others in proportion."""
    found = {kind: share for kind, (share, _) in KINDS.items()}
    if plan.doomed != found["doomed"]:
        others = 1.0 - found["doomed"]
        found = {kind: plan.doomed if kind == "doomed" else share * (1.0 - plan.doomed) / others
                 for kind, share in found.items()}
    return found


def shares(plan: Plan) -> str:
    """The workload's mix in words."""
    found = kind_shares(plan)
    return (f"{found['nap']:.0%} sleep, {found['crunch']:.0%} CPU, {found['doomed']:.0%} always failing "
            f"with 1 retry after {plan.retry_delay} s")


def workload(plan: Plan) -> list[tuple[str, float]]:
    """(kind, seconds) for every job: mostly naps, some CPU, a few (``plan.doomed``) that always fail."""
    rng = random.Random(plan.seed)
    kinds, weights = zip(*kind_shares(plan).items())
    return [(rng.choices(kinds, weights)[0], round(rng.uniform(0.2, 2.0), 2)) for _ in range(plan.jobs)]


# --- the ledger ---------------------------------------------------------------------

@dataclass
class Start:
    """One container start of a job."""

    at: float
    agent: str
    attempt: int


@dataclass
class Sighting:
    """One Celery event about a message of a job: sent (published) or received by an agent."""

    kind: str
    at: float
    host: str
    #: Celery's retry number of the message (0: the caller's own publish).
    retries: int
    #: The message's eta (its retry due time), or None: runs when taken.
    due: float | None


@dataclass
class Entry:
    """Everything the bench saw of one accepted job."""

    id: str
    kind: str
    seconds: float
    accepted: float
    starts: list[Start] = field(default_factory=list)
    sightings: list[Sighting] = field(default_factory=list)
    state: str | None = None
    observed: float | None = None
    done_at: float | None = None
    value: Any = None

    @property
    def expected_starts(self) -> int:
        """Container starts the job needs without faults (doomed jobs retry once)."""
        return KINDS[self.kind][1]

    def started_before(self, moment: float) -> Start | None:
        """The job's latest start before ``moment``."""
        earlier = [s for s in self.starts if s.at < moment]
        return earlier[-1] if earlier else None

    def due_before(self, moment: float) -> float | None:
        """The due time of the job's latest retry seen (sent or received) before ``moment``, or None.

        Taken from the retry message's own eta, wherever the message waited (an
        agent's timer, or Redis), so a job in a retry countdown is not late until then.
        """
        seen = [s for s in self.sightings if s.at < moment and s.retries > 0 and s.due is not None]
        return max(seen, key=lambda s: (s.retries, s.at)).due if seen else None

    def terminal_before(self, moment: float) -> bool:
        """Whether its outcome was stored (or seen) before ``moment``."""
        return any(t is not None and t < moment for t in (self.done_at, self.observed))


@dataclass
class Fault:
    """One SIGKILL: of an agent (its hostname) or of Redis (``redis``), and when it was back."""

    target: str
    at: float
    back: float | None = None
    #: When its replacement process was spawned: nothing before is the replacement's doing.
    respawned: float | None = None


class Ledger:
    """The bench's record of jobs, starts and faults; safe to share between threads."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.faults: list[Fault] = []
        self.strangers: list[tuple[str, Start]] = []
        self.unplaced: list[tuple[str, Sighting]] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def accept(self, entry: Entry) -> None:
        """Record a job whose ``apply_async`` returned."""
        with self.lock:
            self.entries[entry.id] = entry

    def start(self, job_id: str, start: Start) -> None:
        """Record a container start (of an accepted job, or of one we do not know)."""
        self._file(job_id, start, self.strangers, lambda entry: entry.starts)

    def sight(self, job_id: str, sighting: Sighting) -> None:
        """Record a Celery event about one of a job's messages (kept aside if the job is not known yet)."""
        self._file(job_id, sighting, self.unplaced, lambda entry: entry.sightings)

    def _file(self, job_id: str, item: Start | Sighting, waiting: list, kept: Any) -> None:
        """Add ``item`` to ``kept(entry)`` in time order, or to ``waiting`` if the job is not known yet."""
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None:
                waiting.append((job_id, item))
            else:
                kept(entry).append(item)
                kept(entry).sort(key=lambda s: s.at)

    def pending(self) -> list[Entry]:
        """Accepted jobs with no terminal state seen yet."""
        with self.lock:
            return [e for e in self.entries.values() if e.state not in TERMINAL]

    def fault(self, target: str) -> Fault:
        """Record a kill happening now."""
        fault = Fault(target, time.time())
        with self.lock:
            self.faults.append(fault)
        return fault

    def adopt_strangers(self) -> None:
        """File starts and events that arrived before their job's ``apply_async`` returned."""
        with self.lock:
            waiting, self.strangers = self.strangers, []
            sightings, self.unplaced = self.unplaced, []
        for job_id, start in waiting:
            self.start(job_id, start)
        for job_id, sighting in sightings:
            self.sight(job_id, sighting)


# --- watching Docker ----------------------------------------------------------------

class Watcher:
    """A thread feeding the ledger from an event stream until stopped."""

    def __init__(self, ledger: Ledger, name: str):
        self.ledger = ledger
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Watcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop after taking every event up to now."""
        time.sleep(1.0)
        self.stopping.set()
        self._close()
        self.thread.join(10)

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Make the stream being read end."""


class StartWatcher(Watcher):
    """Feeds the ledger every container start of the bench's agents, from Docker events."""

    def __init__(self, client, agents: set[str], ledger: Ledger):
        super().__init__(ledger, "chaos-docker-events")
        self.client = client
        self.agents = agents
        self.seen: set[str] = set()
        self.since = int(time.time()) - 1
        self.stream = None

    def _close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.stream = self.client.events(decode=True, since=self.since, filters={
                    "type": "container", "event": "start", "label": "jobyard.agent"})
                for event in self.stream:
                    self._take(event)
            except Exception as exc:  # noqa: BLE001 - reconnect from the last event seen
                if not self.stopping.is_set():
                    log(f"docker event stream broke ({exc}); reconnecting")
                    time.sleep(0.5)

    def _take(self, event: dict) -> None:
        labels = event.get("Actor", {}).get("Attributes", {})
        container = event.get("Actor", {}).get("ID", "")
        if labels.get("jobyard.agent") not in self.agents or container in self.seen:
            return
        self.seen.add(container)
        at = event.get("timeNano", 0) / 1e9 or float(event.get("time", time.time()))
        self.since = int(at) - 1
        self.ledger.start(labels.get("jobyard.job", ""),
                          Start(at, labels["jobyard.agent"], int(labels.get("jobyard.attempt", 0))))


class EventWatcher(Watcher):
    """Feeds the ledger Celery's task-sent and task-received events: each message's retry number and eta.

    Agents send both (``task_send_sent_event``, ``worker_send_task_events``); a retry's
    task-sent comes from the agent that published it, so its due time is known even if
    the message then waits in a dead agent's timer or in Redis. Events are not durable:
    those sent while Redis is down are missed (the recovery figures count how many
    retried jobs had no due time seen). Reconnects after the Redis restart.
    """

    KINDS = ("task-sent", "task-received")

    def __init__(self, ledger: Ledger):
        super().__init__(ledger, "chaos-celery-events")
        self.receiver = None

    def _close(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True

    def _run(self) -> None:
        from tasks import app

        while not self.stopping.is_set():
            try:
                with app.connection_for_read() as connection:
                    self.receiver = app.events.Receiver(connection, handlers=dict.fromkeys(self.KINDS, self._take))
                    self.receiver.should_stop = self.stopping.is_set()
                    self.receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # noqa: BLE001 - Redis restarting: subscribe again
                if not self.stopping.is_set():
                    log(f"celery event stream broke ({type(exc).__name__}: {exc}); reconnecting")
                    time.sleep(0.5)

    def _take(self, event: dict) -> None:
        job_id = event.get("uuid")
        if not isinstance(job_id, str):
            return
        self.ledger.sight(job_id, Sighting(event["type"], float(event.get("timestamp") or time.time()),
                                           str(event.get("hostname", "")), int(event.get("retries") or 0),
                                           timestamp(event.get("eta"))))


# --- services -----------------------------------------------------------------------

class Fleet:
    """Our redis-server (AOF always), our agents and our image; all undone on exit."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.token = secrets.token_hex(3)
        self.names = [f"chaos-{self.token}-{n}" for n in range(plan.agents)]
        self.workdir = tempfile.mkdtemp(prefix="jobyard-chaos-")
        self.redis = self.client = self.docker = None
        self.agents: list = []
        self.incarnations = {name: 0 for name in self.names}
        self.exits: list[str] = []

    def start(self) -> None:
        """Start redis-server, build the image, start the agents."""
        import redis

        from tests.support.services import RedisServer, free_port

        self.redis = RedisServer(free_port(), os.path.join(self.workdir, "redis"), AOF_ARGS).start()
        self.client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        os.environ["JOBYARD_BROKER_URL"] = self.redis.url
        os.environ.pop("JOBYARD_RESULT_BACKEND", None)
        os.environ["JOBYARD_DEFAULT_IMAGE"] = IMAGE
        log(f"redis-server pid {self.redis.process.pid} on {self.redis.url} (AOF always, {self.redis.workdir})")
        from executor.agent import connect_docker
        from executor.image import build_image

        self.docker = connect_docker()
        log(f"building {IMAGE} (bench/jobs on its path)")
        build_image(self.docker, tag=IMAGE, code=JOBS_DIR)
        self._start_agents()

    def _start_agents(self) -> None:
        from tests.support.services import AgentProcess

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        for name in self.names:
            args = ["--cpus", "2", "--memory", "2Gi", "--max-jobs", str(self.plan.max_jobs),
                    "--state-dir", os.path.join(self.workdir, "state", name), "--loglevel", "INFO"]
            self.agents.append(AgentProcess(name, args, env, self._log_path(name)))
        threads = [threading.Thread(target=self.start_agent, args=(n,)) for n in range(len(self.agents))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        dead = [a.hostname for a in self.agents if not a.alive]
        if dead:
            raise RuntimeError(f"agents did not start: {dead}")

    def _log_path(self, name: str) -> str:
        return os.path.join(self.workdir, f"agent-{name}.{self.incarnations[name]}.log")

    def start_agent(self, number: int) -> None:
        """(Re)start agent ``number`` under its hostname, with a fresh log; wait until it is ready."""
        agent = self.agents[number]
        self.incarnations[agent.hostname] += 1
        agent.log_path = self._log_path(agent.hostname)
        try:
            agent.start(self.client, timeout=90)
        except RuntimeError as exc:
            log(f"agent {agent.hostname} did not come back: {exc}")
        else:
            log(f"agent {agent.hostname} pid {agent.process.pid} ready")

    def kill_agent(self, number: int, ledger: Ledger) -> Fault:
        """SIGKILL agent ``number``; its containers keep running until it returns."""
        agent = self.agents[number]
        self.note_exit(agent)
        fault = ledger.fault(agent.hostname)
        agent.kill()
        return fault

    def note_exit(self, agent) -> None:
        """Record an agent process that ended on its own, with its last critical log line."""
        if agent.process is None or agent.alive:
            return
        critical = [line for line in agent.log().splitlines() if " CRITICAL " in line]
        self.exits.append(f"{agent.hostname} (exit code {agent.process.returncode}): "
                          f"{critical[-1][:200] if critical else 'no CRITICAL line'}")

    def kill_redis(self, ledger: Ledger) -> Fault:
        """SIGKILL redis-server."""
        fault = ledger.fault("redis")
        self.redis.kill()
        return fault

    def restart_redis(self) -> None:
        """Start redis-server again on the same port and directory (it replays its AOF)."""
        self.redis.start(timeout=60)

    def agent_logs(self) -> dict[str, str]:
        """Every incarnation's log of every agent, by file name."""
        logs = {}
        for path in sorted(glob.glob(os.path.join(self.workdir, "agent-*.log"))):
            with open(path, errors="replace") as handle:
                logs[os.path.basename(path)] = handle.read()
        return logs

    def containers(self) -> list[str]:
        """Names of containers labelled with one of our agent names."""
        found = self.docker.api.containers(all=True, filters={"label": "jobyard.agent"})
        return [c["Names"][0].lstrip("/") for c in found if c["Labels"].get("jobyard.agent") in self.names]

    def stop_agents(self) -> None:
        """Warm shutdown of every agent (SIGTERM, then SIGKILL if it hangs)."""
        for agent in self.agents:
            self.note_exit(agent)
            agent.stop(timeout=30)

    def close(self) -> None:
        """Stop what we started (by pid), remove our containers and scratch files."""
        self.stop_agents()
        if self.redis is not None:
            self.redis.stop()
        if self.docker is not None:
            for name in self.containers():
                self.docker.api.remove_container(name, force=True, v=True)
        keep = os.environ.get("CHAOS_KEEP_LOGS")  # agent logs and the AOF, for a post-mortem
        if keep:
            os.makedirs(keep, exist_ok=True)
            for path in glob.glob(os.path.join(self.workdir, "agent-*.log")):
                shutil.copy(path, keep)
            shutil.copytree(os.path.join(self.workdir, "redis"), os.path.join(keep, "redis"), dirs_exist_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running(plan: Plan):
    """A started :class:`Fleet`, closed however the block ends."""
    fleet = Fleet(plan)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.close()


# --- the run ------------------------------------------------------------------------

class Run:
    """Submitter, poller and chaos threads around one fleet."""

    def __init__(self, fleet: Fleet, plan: Plan):
        self.fleet = fleet
        self.plan = plan
        self.ledger = Ledger()
        self.submitted = threading.Event()
        self.origin = 0.0
        self.submit_errors = 0
        self.poll_errors = 0
        self.mutex = MutexWatch()
        self.chaos_log: list[str] = []
        #: The 1-minute load average, sampled while polling.
        self.loads: list[float] = [os.getloadavg()[0]]

    def execute(self) -> None:
        """Run the workload under chaos until every job is terminal (or the drain ends)."""
        self.origin = time.time()
        threads = [threading.Thread(target=target, name=f"chaos-{target.__name__}", daemon=True)
                   for target in (self.submit_all, self.inflict)]
        for thread in threads:
            thread.start()
        self.poll_until_done()
        for thread in threads:
            thread.join(120)

    # submitting

    def submit_all(self) -> None:
        """Submit the workload at the plan's rate."""
        for number, (kind, seconds) in enumerate(workload(self.plan)):
            delay = self.origin + number / self.plan.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            self.submit(kind, seconds)
        self.submitted.set()
        log(f"submitted {len(self.ledger.entries)} jobs ({self.submit_errors} submit errors)")

    def submit(self, kind: str, seconds: float) -> None:
        """Submit one job; a refused submission is retried under a new id."""
        import chaos_jobs

        options = {"retry_delay": self.plan.retry_delay} if kind == "doomed" else {}
        while True:
            task_id = str(uuid.uuid4())
            try:
                getattr(chaos_jobs, kind).apply_async((seconds,), task_id=task_id, retry=True,
                                                      retry_policy=PUBLISH_RETRY, **options)
            except Exception as exc:  # noqa: BLE001 - not accepted: say so and submit again
                self.submit_errors += 1
                self.ledger.refused.append(task_id)
                log(f"submit refused ({type(exc).__name__}: {exc}); resubmitting")
                time.sleep(0.5)
                continue
            self.ledger.accept(Entry(task_id, kind, seconds, time.time()))
            return

    # polling

    def poll_until_done(self) -> None:
        """Poll every unfinished job's state until all are terminal or the drain runs out."""
        deadline = self.origin + self.plan.submit_seconds + self.plan.drain
        while time.time() < deadline:
            pending = self.ledger.pending()
            if self.submitted.is_set() and not pending:
                return
            for entry in pending:
                self.observe(entry)
            self.mutex.sample(self.fleet.client)
            self.loads.append(os.getloadavg()[0])
            time.sleep(0.5)
        log(f"drain ended with {len(self.ledger.pending())} job(s) not terminal")

    def observe(self, entry: Entry) -> None:
        """Read one job's state; record its outcome when terminal."""
        from celery.result import AsyncResult

        from tasks import app

        try:
            result = AsyncResult(entry.id, app=app)
            state = result.state
            if state in TERMINAL:
                entry.value, entry.done_at = outcome(result), timestamp(result.date_done)
                entry.observed, entry.state = time.time(), state
        except Exception as exc:  # noqa: BLE001 - Redis restarting: poll again next round
            self.poll_errors += 1
            if self.poll_errors % 200 == 1:
                log(f"poll failed ({type(exc).__name__}: {exc}); polling on")

    # chaos

    def inflict(self) -> None:
        """Carry out the plan's kills: agents in turn, Redis once."""
        victim = 0
        for offset, target in schedule(self.plan):
            self.wait_until(self.origin + offset)
            if target == "redis":
                self.bounce_redis()
            else:
                self.bounce_agent(victim)
                victim = (victim + 1) % len(self.fleet.agents)

    def wait_until(self, moment: float) -> None:
        delay = moment - time.time()
        if delay > 0:
            time.sleep(delay)

    def bounce_agent(self, number: int) -> None:
        """SIGKILL one agent, wait, restart it under the same hostname."""
        fault = self.fleet.kill_agent(number, self.ledger)
        log(f"SIGKILL agent {fault.target} at +{fault.at - self.origin:.1f}s")
        time.sleep(self.plan.agent_down)
        fault.respawned = time.time()
        self.fleet.start_agent(number)
        fault.back = time.time()

    def bounce_redis(self) -> None:
        """SIGKILL redis-server, wait, restart it on the same port and directory."""
        fault = self.fleet.kill_redis(self.ledger)
        log(f"SIGKILL redis-server at +{fault.at - self.origin:.1f}s")
        time.sleep(self.plan.redis_down)
        fault.respawned = time.time()
        self.fleet.restart_redis()
        fault.back = time.time()
        log(f"redis-server back (pid {self.fleet.redis.process.pid}) after {fault.back - fault.at:.1f}s")

    def settle(self) -> None:
        """Wait out a lease and two sweeps: a job re-run after its terminal state shows up now."""
        from tasks import app

        time.sleep(app.jobyard_settings.lease_seconds + 6)


class MutexWatch:
    """How long kombu's ``unacked_mutex`` stays held: while it is, no agent sweeps expired leases.

    kombu takes it (SET NX, expiry ``unacked_mutex_expire``, 300 s by default) around
    every sweep; an agent killed while holding it blocks every sweep until it expires.
    """

    KEY = "unacked_mutex"

    def __init__(self) -> None:
        self.holder: str | None = None
        self.since = 0.0
        self.longest = 0.0

    def sample(self, client) -> None:
        """Look at the mutex now; extend the current hold or start a new one."""
        try:
            holder = client.get(self.KEY)
        except Exception:  # noqa: BLE001 - Redis restarting
            return
        now = time.time()
        if holder is not None and holder == self.holder:
            self.longest = max(self.longest, now - self.since)
        elif holder is not None:
            self.holder, self.since = holder, now
        else:
            self.holder = None


def outcome(result) -> Any:
    """A terminal job's value, or its typed error as ``ClassName: message``."""
    value = result.result
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return value


def timestamp(value: Any) -> float | None:
    """Unix time of Celery's ``date_done`` (a datetime or an ISO string)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


# --- figures ------------------------------------------------------------------------

@dataclass
class Figures:
    """What a run measured, and its verdict per criterion."""

    jobs: int
    outcomes: dict[str, int]
    agent_kills: int
    redis_restarts: int
    lost: list[str]
    changed: list[str]
    extra_terminal_writes: list[str]
    reruns: int
    in_flight_agent_kills: int
    in_flight_redis_kill: int
    runs_after_terminal: list[str]
    recovery: list[Recovery]
    not_rerun: list[str]
    #: Jobs started more often than they need that no kill had in flight: each start
    #: (agent, attempt, seconds from the run's origin) and the kills near them.
    unexplained_reruns: list[str]
    orphans_running: list[str]
    orphans_stopped: list[str]
    agent_exits: list[str]
    untyped: list[str]
    reconnect: dict[str, Any]
    submit_errors: int
    poll_errors: int
    longest_mutex_hold: float
    strangers: int
    seconds: float
    #: Messages received twice within 2 s (:func:`close_deliveries`).
    close_deliveries: list[str] = field(default_factory=list)
    #: Retried jobs whose retry message no event showed (their recovery counts from the kill).
    unseen_retries: list[str] = field(default_factory=list)
    #: 1-minute load average: at the start, the highest seen during the run, at the end.
    load: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    lease: float = math.nan
    criteria: dict[str, bool] = field(default_factory=dict)
    #: Recovery targets: name -> {"met": bool, "applies": bool}.
    targets: dict[str, dict[str, bool]] = field(default_factory=dict)

    def judge(self) -> "Figures":
        """Fill in pass/fail for each criterion."""
        self.criteria = {
            "every job exactly one terminal state": not (self.lost or self.changed or self.extra_terminal_writes),
            "0 lost": not self.lost,
            "re-runs <= jobs in flight at the kills": self.reruns <= self.in_flight,
            "no run after a terminal state": not self.runs_after_terminal,
            "0 orphan containers": not (self.orphans_running or self.orphans_stopped),
            "agents survive the faults (no agent exits on its own)": not self.agent_exits,
            "every failure is a typed JobError": not self.untyped,
        }
        worst = max((r.seconds for r in self.recovery), default=0.0)
        quiet = self.load[1] <= (os.cpu_count() or 1)
        self.targets = {
            f"recovery max ≤ {QUIET_RECOVERY:.0f} s on a quiet machine": {"met": worst <= QUIET_RECOVERY,
                                                                          "applies": quiet},
            f"recovery max ≤ 2× the lease ({2 * self.lease:.0f} s) under load": {"met": worst <= 2 * self.lease,
                                                                                 "applies": not quiet},
        }
        return self

    @property
    def in_flight(self) -> int:
        return self.in_flight_agent_kills + self.in_flight_redis_kill

    @property
    def passed(self) -> bool:
        return all(self.criteria.values())


def figures(run: Run, orphans: tuple[list[str], list[str]], logs: dict[str, str], seconds: float,
            load: tuple[float, float, float]) -> Figures:
    """Judge the ledger of a finished run."""
    entries = list(run.ledger.entries.values())
    agent_faults = [f for f in run.ledger.faults if f.target != "redis"]
    redis_faults = [f for f in run.ledger.faults if f.target == "redis"]
    recovery, not_rerun, in_flight_agents = recoveries(entries, agent_faults)
    in_flight_redis = sum(len(in_flight(entries, fault, redis_faults)) for fault in redis_faults)
    return Figures(
        jobs=len(entries), outcomes=count_outcomes(entries), agent_kills=len(agent_faults),
        redis_restarts=len(redis_faults), lost=[lost_job(run, e) for e in entries if e.state not in TERMINAL],
        changed=changed_states(entries), extra_terminal_writes=extra_terminal_writes(logs),
        reruns=sum(max(0, len(e.starts) - e.expected_starts) for e in entries),
        in_flight_agent_kills=in_flight_agents, in_flight_redis_kill=in_flight_redis,
        runs_after_terminal=[e.id for e in entries if any(s.at > e.observed for s in e.starts if e.observed)],
        recovery=recovery, not_rerun=not_rerun, unexplained_reruns=unexplained_reruns(run, entries),
        orphans_running=orphans[0], orphans_stopped=orphans[1],
        agent_exits=list(run.fleet.exits),
        untyped=[f"{e.id}: {e.value}"[:200] for e in entries if e.state == "FAILURE" and not typed(e.value)],
        reconnect=reconnections(run, logs, redis_faults), submit_errors=run.submit_errors,
        poll_errors=run.poll_errors, longest_mutex_hold=round(run.mutex.longest, 1),
        strangers=len(run.ledger.strangers), seconds=seconds, close_deliveries=close_deliveries(entries, logs),
        unseen_retries=unseen_retries(entries), load=load, lease=lease_seconds(),
    ).judge()


def unexplained_reruns(run: Run, entries: list[Entry]) -> list[str]:
    """Jobs with starts beyond their own that were not in flight at any kill, with their starts."""
    hit = {e.id for fault in run.ledger.faults for e in in_flight(entries, fault, run.ledger.faults)}
    lines = []
    for entry in entries:
        if len(entry.starts) > entry.expected_starts and entry.id not in hit:
            starts = ", ".join(f"{s.agent} #{s.attempt} +{s.at - run.origin:.2f}s" for s in entry.starts)
            kills = ", ".join(f"{f.target} +{f.at - run.origin:.2f}s" for f in run.ledger.faults
                              if any(abs(s.at - f.at) < 15 for s in entry.starts))
            lines.append(f"{entry.id} {entry.kind} ({entry.state}): starts {starts}; kills near: {kills or 'none'}")
    return lines


def lost_job(run: Run, entry: Entry) -> str:
    """A lost job: when it was accepted (relative to the run and to each kill), its starts, where it is."""
    kills = ", ".join(f"{f.target} {entry.accepted - f.at:+.3f}s" for f in run.ledger.faults
                      if abs(entry.accepted - f.at) < 10)
    return (f"{entry.id} {entry.kind}: accepted +{entry.accepted - run.origin:.3f}s (vs kills: {kills or 'none near'}); "
            f"{len(entry.starts)} start(s); {whereabouts(run.fleet.client, entry.id)}")


def whereabouts(client, job_id: str) -> str:
    """Where Redis still holds a job's message: a queue list, kombu's unacked hash, or nowhere."""
    places = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"list" and any(job_id.encode() in item for item in client.lrange(key, 0, -1)):
            places.append(f"list {key.decode()}")
        elif kind == b"hash" and any(job_id.encode() in v for v in client.hvals(key)):
            places.append(f"hash {key.decode()}")
    return "in Redis: " + (", ".join(places) or "nowhere")


def launched_by(fault: Fault) -> float:
    """Starts before this moment were the killed process's own.

    A container can start a moment after a SIGKILL: its agent had asked the engine to
    start it. Until the killed process is replaced, nothing else starts containers
    under a killed agent's name, and no job can be taken while Redis is down, so
    those starts count as launched before the kill.
    """
    return fault.respawned or fault.at


def in_flight(entries: list[Entry], fault: Fault, faults: list[Fault]) -> list[Entry]:
    """Jobs the killed process was running: started on it (any agent, for Redis) since its last kill, not done."""
    since = max((f.at for f in faults if f.target == fault.target and f.at < fault.at), default=0.0)
    hit = []
    for entry in entries:
        start = entry.started_before(launched_by(fault))
        if (start and start.at > since and fault.target in ("redis", start.agent)
                and not entry.terminal_before(fault.at)):
            hit.append(entry)
    return hit


@dataclass
class Recovery:
    """How one job a kill had in flight came back: its next container start after the killed one."""

    job: str
    kind: str
    #: When its agent was SIGKILLed.
    kill: float
    #: The due time (eta) of the job's latest retry seen before the re-run, or None.
    due: float | None
    #: When its next container started.
    rerun: float
    #: Whether the killed agent had received that retry (held it, as agents did before the delayed set).
    held_by_killed: bool = False

    @property
    def late_from(self) -> float:
        """From when the job counts as late: the kill, or its retry's due time if that is later."""
        return self.kill if self.due is None else max(self.kill, self.due)

    @property
    def seconds(self) -> float:
        """Recovery: from the later of the kill and the retry's due time to the re-run start."""
        return self.rerun - self.late_from

    @property
    def from_kill(self) -> float:
        """The measure before: kill to re-run start, a retry countdown counted as lateness."""
        return self.rerun - self.kill

    @property
    def mid_retry(self) -> bool:
        """Whether the job was in a retry countdown at the kill."""
        return self.due is not None and self.due > self.kill

    @property
    def retries(self) -> bool:
        """Whether the job is of the failing kind (Celery retries)."""
        return self.kind == "doomed"


def recoveries(entries: list[Entry], faults: list[Fault]) -> tuple[list[Recovery], list[str], int]:
    """Each agent kill's in-flight jobs: how each came back, those that never did, and how many there were."""
    found, missing, total = [], [], 0
    for fault in faults:
        for entry in in_flight(entries, fault, faults):
            total += 1
            killed = entry.started_before(launched_by(fault))
            later = [s.at for s in entry.starts if s.at > killed.at]
            if later:
                found.append(recovery(entry, fault, later[0]))
            else:
                missing.append(f"{entry.id} ({entry.state})")
    return found, missing, total


def recovery(entry: Entry, fault: Fault, rerun: float) -> Recovery:
    """The :class:`Recovery` of ``entry`` from ``fault``, re-run at ``rerun``."""
    due = entry.due_before(rerun)
    held = any(s.kind == "task-received" and s.retries > 0 and s.at < fault.at and s.due == due
               and s.host == node_name(fault.target) for s in entry.sightings) if due is not None else False
    return Recovery(entry.id, entry.kind, fault.at, due, rerun, held)


def node_name(hostname: str) -> str:
    """The Celery node name (in events) of the agent on ``hostname``."""
    from tasks.names import node_name as named

    return named(hostname)


def close_deliveries(entries: list[Entry], logs: dict[str, str], within: float = 2.0) -> list[str]:
    """Messages received twice within ``within`` seconds: two fresh copies of one (job, retry number).

    A lease sweep brings a message back only after the lease (10 s), and chaos jobs
    are never handed back (one shape: any host that takes one can run it), so two
    receipts this close are two copies queued of one message (the anomaly of two
    fresh deliveries 18–83 ms apart: a publish retried after its reply was lost).
    """
    handed_back = set(re.findall(r"\[([0-9a-f-]{36})\] handed back", "".join(logs.values())))
    found = []
    for entry in entries:
        received = sorted((s.retries, s.at, s.host) for s in entry.sightings if s.kind == "task-received")
        for (retries, at, host), (again, then, other) in zip(received, received[1:]):
            if retries == again and then - at < within and entry.id not in handed_back:
                found.append(f"{entry.id} retry {retries}: received by {host} and {other} {1000 * (then - at):.0f} ms apart")
    return found


def unseen_retries(entries: list[Entry]) -> list[str]:
    """Jobs of the failing kind that retried (ended JobFailed) with no retry message seen in the events."""
    return [e.id for e in entries if e.kind == "doomed" and str(e.value).startswith("JobFailed")
            and not any(s.retries > 0 and s.due is not None for s in e.sightings)]


def count_outcomes(entries: list[Entry]) -> dict[str, int]:
    """Jobs per terminal outcome: ``succeeded`` or the error's class name."""
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.state == "SUCCESS":
            key = "succeeded"
        elif entry.state in TERMINAL:
            key = str(entry.value).split(":")[0]
        else:
            key = "not terminal"
        counts[key] = counts.get(key, 0) + 1
    return counts


def typed(value: Any) -> bool:
    """Whether a failed job's outcome (``ClassName: message``) is one of jobyard's typed errors."""
    import tasks.errors

    cls = getattr(tasks.errors, str(value).split(":")[0], None)
    return isinstance(cls, type) and issubclass(cls, tasks.errors.JobError)


def changed_states(entries: list[Entry]) -> list[str]:
    """Jobs whose stored outcome differs now from the one first seen, or whose value names another job."""
    from celery.result import AsyncResult

    from tasks import app

    changed = []
    for entry in entries:
        if entry.state not in TERMINAL:
            continue
        now = AsyncResult(entry.id, app=app)
        wrong_job = entry.state == "SUCCESS" and entry.value.get("job") != entry.id
        if now.state != entry.state or outcome(now) != entry.value or wrong_job:
            changed.append(entry.id)
    return changed


def extra_terminal_writes(logs: dict[str, str]) -> list[str]:
    """Job ids for which agents logged a stored outcome more than once."""
    seen: dict[str, int] = {}
    for text in logs.values():
        for job_id in TERMINAL_LOG.findall(text):
            seen[job_id] = seen.get(job_id, 0) + 1
    return sorted(job_id for job_id, count in seen.items() if count > 1)


def reconnections(run: Run, logs: dict[str, str], redis_faults: list[Fault]) -> dict[str, Any]:
    """Per agent alive across the Redis restart: when it reconnected and first started a job after it."""
    if not redis_faults or redis_faults[0].back is None:
        return {}
    fault = redis_faults[0]
    agent_faults = [f for f in run.ledger.faults if f.target != "redis"]
    found = {}
    for name in run.fleet.names:
        if any(f.target == name and fault.at - 5 < f.at < fault.at for f in agent_faults):
            found[name] = "restarting at the Redis kill"
            continue
        found[name] = agent_after_redis(run, name, logs, fault, agent_faults)
    return found


def agent_after_redis(run: Run, name: str, logs: dict[str, str], fault: Fault, agent_faults: list[Fault]) -> dict:
    """Seconds from Redis being back to ``name``'s reconnect line and its first job start."""
    next_kill = min([f.at for f in agent_faults if f.target == name and f.at > fault.back], default=math.inf)
    text = "".join(t for file, t in logs.items() if file.startswith(f"agent-{name}."))
    connects = [_log_time(stamp) for stamp in CONNECTED_LOG.findall(text)]
    connected = [t - fault.back for t in connects if fault.back - 1 <= t < next_kill]
    starts = sorted(s.at for e in run.ledger.entries.values() for s in e.starts
                    if s.agent == name and fault.back <= s.at < next_kill)
    window = min(next_kill, time.time()) - fault.back
    return {"reconnected_after": round(connected[0], 1) if connected else None,
            "first_start_after": round(starts[0] - fault.back, 1) if starts else None,
            "starts": len(starts), "window": round(window, 1)}


def _log_time(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def spread(values: list[float]) -> str:
    """``p50 / p99 / max`` of ``values`` in seconds, with their count."""
    return (f"{percentile(values, 50):.1f} s / {percentile(values, 99):.1f} s / "
            f"{max(values, default=math.nan):.1f} s (n={len(values)})")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- report -------------------------------------------------------------------------

def target_lines(f: Figures) -> list[str]:
    """Whether each recovery target is met, and which one this run's load average makes apply."""
    worst = max((r.seconds for r in f.recovery), default=math.nan)
    peak = f.load[1]
    lines = []
    for name, verdict in f.targets.items():
        applies = (f"applies: load average up to {peak:.1f} on {os.cpu_count()} cores" if verdict["applies"]
                   else "does not apply to this run's load")
        lines.append(f"- TARGET {'met' if verdict['met'] else '**missed**'}: {name} (max {worst:.1f} s; {applies})")
    return lines


def slowest(found: list[Recovery], origin: float, count: int = 3) -> list[str]:
    """The ``count`` slowest recoveries: kill, due time, re-run (seconds from the run's origin)."""
    lines = []
    for r in sorted(found, key=lambda r: r.seconds, reverse=True)[:count]:
        due = "no retry pending" if r.due is None else f"retry due +{r.due - origin:.2f}s" + (
            " (received by the killed agent)" if r.held_by_killed else "")
        lines.append(f"{r.job} {r.kind}: {r.seconds:.1f} s; kill +{r.kill - origin:.2f}s, {due}, "
                     f"re-run +{r.rerun - origin:.2f}s")
    return lines


def report(plan: Plan, f: Figures, origin: float) -> str:
    """The RESULTS.md section: figures, criteria, and what the run did."""
    rows = [
        ("jobs accepted", f"{f.jobs} ({', '.join(f'{k} {v}' for k, v in sorted(f.outcomes.items()))})"),
        ("agent SIGKILLs (each restarted, same hostname)", f.agent_kills),
        ("Redis SIGKILL + restart (AOF always)", f.redis_restarts),
        ("lost (accepted, no terminal state)", len(f.lost)),
        ("terminal state changed, or stored more than once", len(f.changed) + len(f.extra_terminal_writes)),
        ("re-runs (container starts beyond the job's own)", f.reruns),
        ("jobs in flight at the agent kills / at the Redis kill", f"{f.in_flight_agent_kills} / {f.in_flight_redis_kill}"),
        ("runs after a job's terminal state", len(f.runs_after_terminal)),
        ("recovery, from the later of the kill and the job's retry due time to its re-run start: "
         "p50 / p99 / max (all)", spread([r.seconds for r in f.recovery])),
        ("recovery of jobs that never retry / of the failing kind (Celery retries)",
         f"{spread([r.seconds for r in f.recovery if not r.retries])} · "
         f"{spread([r.seconds for r in f.recovery if r.retries])}"),
        ("… of jobs in a retry countdown at the kill (of which the killed agent held the retry)",
         f"{spread([r.seconds for r in f.recovery if r.mid_retry])} "
         f"({sum(r.mid_retry and r.held_by_killed for r in f.recovery)})"),
        ("kill → re-run start, a retry countdown counted as lateness (the measure before): p50 / p99 / max",
         spread([r.from_kill for r in f.recovery])),
        ("retried jobs whose retry no task-sent/task-received event showed", len(f.unseen_retries)),
        ("one message received twice within 2 s (two fresh copies)", len(f.close_deliveries)),
        ("in-flight jobs never re-run", len(f.not_rerun)),
        ("longest hold of kombu's `unacked_mutex` (no lease sweeps meanwhile)", f"{f.longest_mutex_hold:.0f} s"),
        ("orphan containers: after the run / after stopping agents", f"{len(f.orphans_running)} / {len(f.orphans_stopped)}"),
        ("agents that exited on their own (not killed by the bench)", len(f.agent_exits)),
        ("submissions refused during the Redis outage (resubmitted)", f.submit_errors),
        ("total time", f"{f.seconds:.0f} s"),
    ]
    table = "\n".join(["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    verdicts = "\n".join([*(f"- {'PASS' if ok else '**FAIL**'}: {name}" for name, ok in f.criteria.items()),
                          *target_lines(f)])
    details = [*(f"- lost: {line}" for line in f.lost), *(f"- in flight, never re-run: {line}" for line in f.not_rerun),
               *(f"- re-run, not in flight at a kill: {line}" for line in f.unexplained_reruns),
               *(f"- run after its terminal state: {line}" for line in f.runs_after_terminal),
               *(f"- agent exited on its own: {line}" for line in f.agent_exits),
               *(f"- failure that is no JobError: {line}" for line in f.untyped),
               *(f"- received twice within 2 s: {line}" for line in f.close_deliveries),
               *(f"- slowest recovery: {line}" for line in slowest(f.recovery, origin))]
    if details:
        verdicts += "\n\n" + "\n".join(details)
    return (
        f"{table}\n\n{verdicts}\n\n"
        f"Agents after the Redis restart (seconds from Redis back; `starts` = jobs it started before its "
        f"next kill): {json.dumps(f.reconnect)}\n\n"
        f"Plan: {plan.jobs} jobs ({shares(plan)}; 0.2–2 s each) "
        f"submitted at {plan.rate}/s; {plan.agents} agents (`--cpus 2 --memory 2Gi --max-jobs {plan.max_jobs}`); "
        f"lease {lease_seconds()} s; an agent SIGKILLed every {plan.kill_every} s during submission and "
        f"restarted {plan.agent_down} s later; Redis SIGKILLed once at {plan.redis_at:.0%} of submission "
        f"and restarted {plan.redis_down} s later on the same port and AOF directory, then {plan.quiet} s "
        f"without kills. A kill at a multiple of the submission interval lands on a submission: a job is "
        f"accepted as the process dies (the short form's kills all do). In flight at a kill = the job's latest "
        f"container start before the killed process was replaced (a start asked for before a kill can land "
        f"just after it) was on the killed agent (any agent for Redis) and its outcome was not stored "
        f"yet. Re-runs count container "
        f"starts (Docker events) beyond one per job (two for the failing kind). Recovery counts from the "
        f"kill, or from the job's retry due time if that is later: the eta of its latest retry message "
        f"sent or received before the re-run (Celery's task-sent and task-received events), wherever the "
        f"message waited. Load average {f.load[0]:.1f} at the start, {f.load[1]:.1f} at most, {f.load[2]:.1f} at "
        f"the end, on {os.cpu_count()} cores of a machine shared with other test runs."
    )


def ledger_dump(run: Run) -> dict[str, Any]:
    """The whole ledger, times relative to the first submission, for a post-mortem."""
    origin = run.origin

    def rel(moment: float | None) -> float | None:
        return None if moment is None else round(moment - origin, 3)

    return {"faults": [{"target": f.target, "at": rel(f.at), "back": rel(f.back)} for f in run.ledger.faults],
            "jobs": [{"id": e.id, "kind": e.kind, "accepted": rel(e.accepted), "state": e.state,
                      "done": rel(e.done_at), "observed": rel(e.observed),
                      "starts": [[rel(s.at), s.agent, s.attempt] for s in e.starts],
                      "messages": [[s.kind, rel(s.at), s.host, s.retries, rel(s.due)] for s in e.sightings]}
                     for e in run.ledger.entries.values()]}


def lease_seconds() -> int:
    from tasks import app

    return app.jobyard_settings.lease_seconds


# --- main ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI form: 80 jobs, 3 agent kills, 1 Redis restart")
    parser.add_argument("--failover", action="store_true",
                        help="on a Sentinel set: the primary SIGKILLed once, a replica promoted (bench/failover.py)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs to submit")
    parser.add_argument("--agents", type=int, default=None, help="agents (2 or 3)")
    parser.add_argument("--rate", type=float, default=None, help="jobs submitted per second")
    parser.add_argument("--kill-every", type=float, default=None, help="seconds between agent kills")
    parser.add_argument("--doomed", type=float, default=None,
                        help="share of jobs of the failing kind, which retries once (0-1; default 0.05)")
    parser.add_argument("--retry-delay", type=float, default=None,
                        help="the failing kind's retry countdown in seconds (default 0.5)")
    parser.add_argument("--json", default=None, help="also write the figures as JSON to this path")
    parser.add_argument("--no-write", action="store_true", help="print figures, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.failover:
        from failover import FAILOVER

        plan = FAILOVER
    else:
        plan = SHORT if args.short else FULL
    overrides = {"jobs": args.jobs, "agents": args.agents, "rate": args.rate, "kill_every": args.kill_every,
                 "doomed": args.doomed, "retry_delay": args.retry_delay}
    args.plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chaos bench and write its section of bench/RESULTS.md."""
    args = parse_args(argv)
    if args.failover:
        import failover

        return failover.main(args.plan, write=not args.no_write, json_path=args.json)
    plan, load_start, started = args.plan, os.getloadavg()[0], time.monotonic()
    with running(plan) as fleet:
        run = Run(fleet, plan)
        watchers = [StartWatcher(fleet.docker, set(fleet.names), run.ledger).start(),
                    EventWatcher(run.ledger).start()]
        run.execute()
        run.settle()
        for watcher in watchers:
            watcher.stop()
        run.ledger.adopt_strangers()
        leftovers = fleet.containers()
        fleet.stop_agents()
        load_end = os.getloadavg()[0]
        result = figures(run, (leftovers, fleet.containers()), fleet.agent_logs(), time.monotonic() - started,
                         (load_start, max([*run.loads, load_end]), load_end))
    section = report(plan, result, run.origin)
    print(section)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**dataclasses.asdict(result), "passed": result.passed,
                       "ledger": ledger_dump(run)}, handle, indent=1)
    if not args.no_write:
        from results import update_section

        update_section("chaos-short" if args.short else "chaos", section)
        log("wrote bench/RESULTS.md")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
