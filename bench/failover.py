"""Failover chaos: the broker's primary SIGKILLed under load; Sentinel promotes a replica.

``bench/chaos.py --failover`` runs this. It starts a Sentinel set of its own on free
loopback ports (a primary, two replicas, three sentinels: ``tests/support/sentinel.py``,
``down-after-milliseconds`` 1000), points callers and agents at its Sentinel URL with
``JOBYARD_BROKER_MIN_REPLICAS=1``, and runs the chaos plan of ``bench/chaos.py``: jobs
submitted at a steady rate, an agent SIGKILLed every few seconds and restarted, and
once the primary SIGKILLed — not restarted in place: the sentinels promote a replica
and the old primary comes back later as a replica. The same ledger and criteria as the
chaos bench judge it (0 lost, one terminal state each, re-runs ≤ jobs in flight).

Three more figures:

* **failover**: seconds from the primary's SIGKILL to the sentinels naming a new
  primary, and to the first container start after that (target: ≤ Sentinel's
  ``down-after-milliseconds`` + 5 s);
* **the cost of durability**: publish latency (``apply_async``) and dispatch latency
  (accepted → container start) p50/p99 in two calm phases on the same set, one with
  ``WAIT`` (min replicas 1) and one without (0), alternated;
* **negative control**: on a one-replica set, the replica SIGSTOPped, jobs published,
  the primary SIGKILLed, the replica resumed and promoted: the accepted jobs the new
  primary does not hold, with ``JOBYARD_BROKER_MIN_REPLICAS=0`` and with ``1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import chaos
from chaos import EventWatcher, Fault, Fleet, Ledger, Plan, Run, StartWatcher, log, percentile

#: The failover form: ≥ 300 jobs, an agent kill every 5 s, the primary once at 40%.
FAILOVER = Plan(jobs=300, rate=2.5, first_kill=5.0, kill_every=5.0, redis_at=0.4, redis_down=2.0, quiet=15.0,
                drain=300.0)
#: Jobs per calm latency phase, and their rate.
CALM_JOBS, CALM_RATE = 40, 4.0
#: Publishes in the negative control while the replica is stopped.
CONTROL_JOBS = 20
#: Bytes written ahead of them (see tests/reliability/test_durable.py).
BACKLOG = 64 * 1024 * 1024


def sentinel_env(url: str, min_replicas: int, wait_ms: int = 2000) -> dict[str, str]:
    """What callers and agents read to use the Sentinel set."""
    return {"JOBYARD_BROKER_URL": url, "JOBYARD_BROKER_MIN_REPLICAS": str(min_replicas),
            "JOBYARD_BROKER_WAIT_TIMEOUT": str(wait_ms)}


class SentinelFleet(Fleet):
    """The chaos fleet on a Sentinel set: the "Redis kill" kills the primary for good."""

    def __init__(self, plan: Plan, min_replicas: int = 1):
        super().__init__(plan)
        self.min_replicas = min_replicas
        self.set = None
        self.killed = None
        self.promoted_at: float | None = None

    def start(self) -> None:
        from tests.support.sentinel import SentinelSet

        self.set = SentinelSet(replicas=2, workdir=os.path.join(self.workdir, "sentinels")).start()
        os.environ.update(sentinel_env(self.set.url(), self.min_replicas))
        os.environ.pop("JOBYARD_RESULT_BACKEND", None)
        os.environ["JOBYARD_DEFAULT_IMAGE"] = chaos.IMAGE
        from tasks.clients import broker_client
        from tasks.config import Settings

        self.client = broker_client(Settings.from_env(), decode_responses=False, socket_timeout=5)
        log(f"sentinel set: primary on {self.set.primary_port()}, replicas "
            f"{[p for p in self.set.servers if p != self.set.primary_port()]}, sentinels "
            f"{[s.port for s in self.set.sentinels]}")
        from executor.agent import connect_docker
        from executor.image import build_image

        self.docker = connect_docker()
        build_image(self.docker, tag=chaos.IMAGE, code=chaos.JOBS_DIR)
        self._start_agents()

    def use_min_replicas(self, min_replicas: int) -> None:
        """Restart every agent with ``JOBYARD_BROKER_MIN_REPLICAS=min_replicas`` (the callers' is per app)."""
        import threading

        self.stop_agents()
        for agent in self.agents:
            agent.env = {**agent.env, "JOBYARD_BROKER_MIN_REPLICAS": str(min_replicas)}
        threads = [threading.Thread(target=self.start_agent, args=(n,)) for n in range(len(self.agents))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def kill_redis(self, ledger: Ledger) -> Fault:
        """SIGKILL the primary."""
        self.old_port = self.set.primary_port()
        fault = ledger.fault("redis")
        self.killed = self.set.primary()
        self.killed.kill()
        return fault

    def restart_redis(self) -> None:
        """Wait for the sentinels to promote a replica; then bring the old primary back as a replica."""
        port = self.set.wait_failover(self.old_port, timeout=60)
        self.promoted_at = time.time()
        log(f"sentinels promoted 127.0.0.1:{port}")
        self.set.restart_as_replica(self.killed)
        self.redis = self.killed  # what the chaos run's log line names

    def close(self) -> None:
        self.redis = None  # stopped with the set
        self.stop_agents()
        if self.docker is not None:
            for name in self.containers():
                self.docker.api.remove_container(name, force=True, v=True)
        if self.set is not None:
            self.set.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class TimedRun(Run):
    """A chaos run that also times each publish."""

    def __init__(self, fleet: Fleet, plan: Plan):
        super().__init__(fleet, plan)
        self.publish_seconds: list[float] = []

    def submit(self, kind: str, seconds: float) -> None:
        began = time.perf_counter()
        super().submit(kind, seconds)
        self.publish_seconds.append(time.perf_counter() - began)


@dataclass
class Latency:
    """Publish and dispatch latency of one calm phase, seconds."""

    min_replicas: int
    publish: list[float] = field(default_factory=list)
    dispatch: list[float] = field(default_factory=list)

    def row(self) -> str:
        def ms(values: list[float], q: float) -> str:
            return f"{percentile(values, q) * 1000:.1f}"
        return (f"| {'WAIT (min replicas 1)' if self.min_replicas else 'no WAIT (min replicas 0)'} | "
                f"{len(self.publish)} | {ms(self.publish, 50)} / {ms(self.publish, 99)} | "
                f"{ms(self.dispatch, 50)} / {ms(self.dispatch, 99)} |")


def nap_on(env: dict[str, str]):
    """A Celery app for ``env`` (over the process's environment) and the chaos nap job bound to it."""
    import chaos_jobs
    from tasks.app import create_app
    from tasks.config import Settings
    from tasks.job import JobFunction

    app = create_app(Settings.from_env({**os.environ, **env}))
    return app, JobFunction(chaos_jobs.nap.spec, chaos_jobs.nap.fn, app)


def calm_phase(fleet: SentinelFleet, watcher_ledger: Ledger, min_replicas: int) -> Latency:
    """Publish :data:`CALM_JOBS` naps with ``min_replicas`` for callers and agents; time each
    publish and its dispatch."""
    fleet.use_min_replicas(min_replicas)
    app, nap = nap_on(sentinel_env(fleet.set.url(), min_replicas))
    latency = Latency(min_replicas)
    ids: dict[str, float] = {}
    for number in range(CALM_JOBS):
        time.sleep(max(0.0, 1 / CALM_RATE))
        task_id = f"calm-{min_replicas}-{uuid.uuid4()}"
        began = time.perf_counter()
        nap.apply_async((0.1,), task_id=task_id)
        latency.publish.append(time.perf_counter() - began)
        ids[task_id] = time.time()
        watcher_ledger.accept(chaos.Entry(task_id, "nap", 0.1, ids[task_id]))
    deadline = time.time() + 120
    while time.time() < deadline:
        watcher_ledger.adopt_strangers()
        with watcher_ledger.lock:
            started = {i: e.starts[0].at for i, e in watcher_ledger.entries.items() if i in ids and e.starts}
        if len(started) == len(ids):
            break
        time.sleep(0.5)
    latency.dispatch = [started[i] - ids[i] for i in started]
    app.close()
    return latency


def negative_control(min_replicas: int) -> dict[str, Any]:
    """One-replica set: replica stopped, publishes, primary killed, replica promoted. Jobs lost?"""
    from tests.support.sentinel import SentinelSet

    # No min-replicas-to-write on the servers: what is measured is what WAIT alone does.
    sentinels = SentinelSet(replicas=1, server_args=()).start()
    try:
        app, nap = nap_on(sentinel_env(sentinels.url(), min_replicas, wait_ms=500))
        primary = sentinels.primary()
        replica = next(s for p, s in sentinels.servers.items() if p != primary.port)
        os.kill(replica.process.pid, signal.SIGSTOP)
        accepted, refused, last = [], 0, None
        try:
            # More than the kernel buffers for the replica's connection: the jobs after it stay
            # in the primary's memory (a pause alone loses nothing on loopback, the stream
            # waits in the stopped replica's socket buffer).
            sentinels.client(primary.port).set("control:backlog", b"x" * BACKLOG)
            for _ in range(CONTROL_JOBS):
                task_id = f"control-{min_replicas}-{uuid.uuid4()}"
                try:
                    nap.apply_async((0.1,), task_id=task_id, queue="control", retry=False)
                    accepted.append(task_id)
                except Exception as exc:  # noqa: BLE001 - PublishNotDurable: not accepted, the caller knows
                    refused += 1
                    last = type(exc).__name__
            primary.kill()
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        sentinels.wait_failover(primary.port, timeout=60)
        held = "\n".join(sentinels.client().lrange("control", 0, -1))
        lost = [i for i in accepted if i not in held]
        app.close()
        return {"min_replicas": min_replicas, "published": CONTROL_JOBS, "accepted": len(accepted),
                "refused": refused, "refused_as": last, "lost": len(lost)}
    finally:
        sentinels.stop()


def failover_figures(run: TimedRun, fleet: SentinelFleet) -> dict[str, Any]:
    """Seconds from the primary's kill to the promotion and to the first start after it."""
    fault = next(f for f in run.ledger.faults if f.target == "redis")
    starts = sorted(s.at for e in run.ledger.entries.values() for s in e.starts
                    if fleet.promoted_at and s.at >= fleet.promoted_at)
    from tests.support.sentinel import DOWN_AFTER_MS

    first = starts[0] - fault.at if starts else None
    return {"promoted_after": round(fleet.promoted_at - fault.at, 2) if fleet.promoted_at else None,
            "first_start_after": round(first, 2) if first is not None else None,
            "target": DOWN_AFTER_MS / 1000 + 5,
            "met": first is not None and first <= DOWN_AFTER_MS / 1000 + 5}


def report(plan: Plan, result: chaos.Figures, failover: dict, phases: list[Latency], controls: list[dict],
           publish: list[float], load: tuple[float, float]) -> str:
    """The RESULTS.md section."""
    rows = [
        ("jobs accepted", f"{result.jobs} ({', '.join(f'{k} {v}' for k, v in sorted(result.outcomes.items()))})"),
        ("agent SIGKILLs (each restarted) / primary SIGKILLs (replica promoted)",
         f"{result.agent_kills} / {result.redis_restarts}"),
        ("lost (accepted, no terminal state)", len(result.lost)),
        ("terminal state changed, or stored more than once", len(result.changed) + len(result.extra_terminal_writes)),
        ("re-runs / jobs in flight at the agent kills + the primary kill",
         f"{result.reruns} / {result.in_flight_agent_kills} + {result.in_flight_redis_kill}"),
        ("primary kill → sentinels name a new primary", f"{failover['promoted_after']} s"),
        ("primary kill → first container start after the promotion",
         f"**{failover['first_start_after']} s** (target ≤ {failover['target']:.0f} s: "
         f"{'met' if failover['met'] else 'MISSED'})"),
        ("publish latency under chaos (WAIT) p50 / p99",
         f"{percentile(publish, 50) * 1000:.1f} / {percentile(publish, 99) * 1000:.1f} ms"),
        ("agents that exited on their own", len(result.agent_exits)),
        ("submissions refused and resubmitted", result.submit_errors),
    ]
    table = "\n".join(["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    verdicts = "\n".join(f"- {'PASS' if ok else '**FAIL**'}: {name}" for name, ok in result.criteria.items())
    if result.lost:
        verdicts += "\n" + "\n".join(f"- lost: {line}" for line in result.lost)
    latency = "\n".join(["| calm phase | jobs | publish p50 / p99 (ms) | dispatch p50 / p99 (ms) |",
                         "|---|---|---|---|", *(phase.row() for phase in phases)])
    control = "\n".join(["| min replicas | published | accepted | refused | lost of accepted |", "|---|---|---|---|---|",
                         *(f"| {c['min_replicas']} | {c['published']} | {c['accepted']} | {c['refused']}"
                           f"{' (' + c['refused_as'] + ')' if c['refused_as'] else ''} | **{c['lost']}** |"
                           for c in controls)])
    return (f"{table}\n\n{verdicts}\n\nThe cost of durability (no faults, same Sentinel set; callers and agents with "
            f"and without WAIT, phases alternated 0, 1, 0, 1, agents restarted for each):\n\n{latency}\n\nNegative control (one-replica set; the replica SIGSTOPped, "
            f"{CONTROL_JOBS} publishes, the primary SIGKILLed, the replica resumed and promoted):\n\n{control}\n\n"
            f"Plan: {plan.jobs} jobs at {plan.rate}/s on {plan.agents} agents (`--max-jobs {plan.max_jobs}`), an "
            f"agent SIGKILLed every {plan.kill_every} s, the primary SIGKILLed once at {plan.redis_at:.0%} of "
            f"submission; Sentinel set of a primary, two replicas and three sentinels (down-after 1000 ms), "
            f"`JOBYARD_BROKER_MIN_REPLICAS=1`; the old primary restarted as a replica after the promotion. "
            f"Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.")


def main(argv_plan: Plan | None = None, write: bool = True, json_path: str | None = None) -> int:
    """Run the failover bench; write its section of bench/RESULTS.md."""
    import json

    plan = argv_plan or FAILOVER
    load_start, started = os.getloadavg()[0], time.monotonic()
    fleet = SentinelFleet(plan)
    try:
        fleet.start()  # points JOBYARD_BROKER_URL at our Sentinel set before anything imports tasks
        from tasks import app

        if app.conf.broker_url != fleet.set.url():
            raise SystemExit("the bench's broker is not its own Sentinel set; refusing to run")
        controls = [negative_control(0), negative_control(1)]
        log(f"negative control: {controls}")
        run = TimedRun(fleet, plan)
        watchers = [StartWatcher(fleet.docker, set(fleet.names), run.ledger).start(),
                    EventWatcher(run.ledger).start()]
        phases = [calm_phase(fleet, run.ledger, n) for n in (0, 1, 0, 1)]
        fleet.use_min_replicas(1)
        phases = [Latency(n, sum((p.publish for p in phases if p.min_replicas == n), []),
                          sum((p.dispatch for p in phases if p.min_replicas == n), [])) for n in (0, 1)]
        log("calm phases done: " + "; ".join(phase.row() for phase in phases))
        with run.ledger.lock:
            run.ledger.entries.clear()
            run.ledger.strangers.clear()
        run.execute()
        run.settle()
        for watcher in watchers:
            watcher.stop()
        run.ledger.adopt_strangers()
        leftovers = fleet.containers()
        fleet.stop_agents()
        load_end = os.getloadavg()[0]
        result = chaos.figures(run, (leftovers, fleet.containers()), fleet.agent_logs(), time.monotonic() - started,
                               (load_start, max([*run.loads, load_end]), load_end))
        failover = failover_figures(run, fleet)
    finally:
        fleet.close()
    section = report(plan, result, failover, phases, controls, run.publish_seconds, (load_start, os.getloadavg()[0]))
    print(section)
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"passed": result.passed, "failover": failover, "controls": controls,
                       "lost": result.lost, "reruns": result.reruns}, handle, indent=1)
    if write:
        from results import update_section

        update_section("chaos-failover", section)
        log("wrote bench/RESULTS.md")
    return 0 if result.passed and failover["met"] and controls[1]["lost"] == 0 else 1
