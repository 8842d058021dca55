"""Dispatch overhead: no-op container jobs through jobyard against a raw Docker SDK loop.

Every job runs the same container both ways: a ``command_job`` running ``true`` on a
busybox image built from local files (and, with ``--python``, a Python function job
on the jobyard Python image). The jobyard way is the whole trip a caller sees:
``delay()`` → Redis → agent → container → result → ``.get()``. The raw way is a Docker
SDK create → start → wait → remove loop whose create() gets the very keyword
arguments the agent's launcher passes (hardening, limits, bind mounts, log driver),
recorded from the launcher itself so the baseline cannot drift from it.

Both run in the same process and the same run, at concurrency 1 and 4 (four caller
threads either way), in alternating rounds so machine noise hits both alike. The
bench starts its own redis-server on a free port and its own agent subprocess, and
cleans up by pid and by its own container labels. Figures go to ``bench/RESULTS.md``
(section ``dispatch``, or ``dispatch-quick`` for ``--quick``)::

    .venv/bin/python bench/dispatch.py            # N=120 per way and concurrency
    .venv/bin/python bench/dispatch.py --quick    # N=16, a smoke run
    .venv/bin/python bench/dispatch.py --python   # also a Python no-op function job

It exits 1 when jobyard misses a target (p50 ≤ 1.10× raw, throughput ≥ 0.90× raw).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path[:0] = [ROOT, BENCH_DIR]

BUSYBOX_IMAGE = "jobyard-bench/busybox:latest"
PYTHON_IMAGE = "jobyard-bench/python:latest"
JOBS_DIR = os.path.join(ROOT, "tests", "jobs")
LABEL_BENCH = "jobyard.bench"
TARGET_P50 = 1.10
TARGET_THROUGHPUT = 0.90
GET_TIMEOUT = 120


def log(message: str) -> None:
    """Progress on stderr, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- measuring ----------------------------------------------------------------------

@dataclass
class Sample:
    """Latencies (seconds) of the jobs of some rounds, and the wall time they took."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0

    def add(self, other: "Sample") -> None:
        """Fold another round into this one."""
        self.latencies.extend(other.latencies)
        self.wall += other.wall

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0-100) of the latencies."""
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    @property
    def throughput(self) -> float:
        """Jobs per second over the wall time."""
        return len(self.latencies) / self.wall if self.wall else 0.0


def run_concurrently(once: Callable[[int], None], jobs: int, concurrency: int) -> Sample:
    """Run ``once(slot)`` ``jobs`` times from ``concurrency`` threads; time each call."""
    sample, errors = Sample(), []
    tickets = itertools.count()

    def worker(slot: int) -> None:
        try:
            while next(tickets) < jobs:
                started = time.perf_counter()
                once(slot)
                sample.latencies.append(time.perf_counter() - started)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sample.wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sample


# --- the two ways of running a container --------------------------------------------

def raw_agent_name(hostname: str) -> str:
    """The agent label of raw containers: not the agent's own, or its reaper would take them."""
    return f"{hostname}-raw"


class RawLoop:
    """create → start → wait → remove with the agent launcher's own create() options."""

    def __init__(self, client, hostname: str, state_dir: str, call, slots: int):
        from executor.container import ContainerLauncher

        launcher = ContainerLauncher(client, state_dir, raw_agent_name(hostname))
        self.client = client
        # The launcher's own options, on purpose: the baseline must get exactly the
        # agent's. One job dir per thread, prepared once: the agent's per-job dir
        # setup is one of the extras being measured, not part of the baseline.
        self.options = []
        for slot in range(slots):
            slot_call = dataclasses.replace(call, task_id=f"raw{slot}")
            self.options.append(launcher.container_options(slot_call, launcher.prepare(slot_call)))

    def once(self, slot: int) -> None:
        """Run the container once to completion and remove it (the agent's API calls)."""
        options = dict(self.options[slot])
        options["name"] = f"jobyard-bench-raw-{secrets.token_hex(6)}"
        options["labels"] = {**options["labels"], LABEL_BENCH: "raw"}
        api = self.client.api
        container_id = api.create_container(**options)["Id"]
        api.start(container_id)
        status = api.wait(container_id)
        api.remove_container(container_id, v=True)
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"raw container exited with {status}")


@dataclass
class Workload:
    """One kind of no-op job, both ways."""

    name: str
    submit: Callable[[], Any]
    expected: Callable[[Any], bool]
    raw: RawLoop

    def jobyard_once(self, _slot: int) -> None:
        """Submit the job and wait for its result, as a caller does."""
        value = self.submit().get(timeout=GET_TIMEOUT)
        if not self.expected(value):
            raise RuntimeError(f"{self.name}: unexpected result {value!r}")


# --- services -----------------------------------------------------------------------

class Services:
    """Our own redis-server, agent subprocess, images and scratch dirs; all undone on exit."""

    def __init__(self, python: bool):
        self.python = python
        self.hostname = f"bench-{secrets.token_hex(3)}"
        self.workdir = tempfile.mkdtemp(prefix="jobyard-bench-")
        self.redis = self.agent = self.docker = None

    def __enter__(self) -> "Services":
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        from tests.support.services import RedisServer, free_port

        self.redis = RedisServer(free_port(), os.path.join(self.workdir, "redis")).start()
        os.environ["JOBYARD_BROKER_URL"] = self.redis.url
        os.environ.pop("JOBYARD_RESULT_BACKEND", None)
        log(f"redis-server pid {self.redis.process.pid} on {self.redis.url}")
        from executor.agent import connect_docker

        self.docker = connect_docker()
        self._build_images()
        self._start_agent()

    def _build_images(self) -> None:
        from tests.support.images import build_busybox

        log(f"building {BUSYBOX_IMAGE} from the local static busybox")
        _remove_image(self.docker, BUSYBOX_IMAGE)  # each import is a new image: keep no stale one
        build_busybox(self.docker, BUSYBOX_IMAGE)
        if self.python:
            from executor.image import build_image

            log(f"building {PYTHON_IMAGE} (tests/jobs on its path)")
            build_image(self.docker, tag=PYTHON_IMAGE, code=JOBS_DIR, progress=lambda line: log(f"  {line}"))

    def _start_agent(self) -> None:
        import redis

        from tests.support.services import AgentProcess

        args = ["--cpus", "4", "--memory", "4Gi", "--state-dir", os.path.join(self.workdir, "agent")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        self.agent = AgentProcess(self.hostname, args, env, os.path.join(self.workdir, "agent.log"))
        self.agent.start(redis.Redis.from_url(self.redis.url))
        log(f"agent {self.hostname} pid {self.agent.process.pid} ready (log {self.agent.log_path})")

    def __exit__(self, *exc_info) -> None:
        if self.agent is not None:
            self.agent.stop(timeout=20)
        if self.redis is not None:
            self.redis.stop()
        if self.docker is not None:
            removed = sum(remove_containers(self.docker, name)
                          for name in (self.hostname, raw_agent_name(self.hostname)))
            log(f"stopped agent and redis-server; removed {removed} leftover container(s)")
        shutil.rmtree(self.workdir, ignore_errors=True)


def remove_containers(client, hostname: str) -> int:
    """Remove the containers labelled with this bench's agent name (ours only)."""
    from executor.container import LABEL_AGENT

    leftovers = client.containers.list(all=True, filters={"label": f"{LABEL_AGENT}={hostname}"})
    for container in leftovers:
        container.remove(force=True, v=True)
    return len(leftovers)


def _remove_image(client, tag: str) -> None:
    import docker.errors

    try:
        client.images.remove(tag)
    except docker.errors.APIError:  # absent, or in use by someone's container: keep it
        pass


# --- workloads ----------------------------------------------------------------------

def workloads(services: Services, slots: int) -> list[Workload]:
    """The no-op jobs to measure: ``true`` on busybox, and optionally a Python function."""
    from executor.container import JobCall
    from tasks import command_job

    noop = command_job("bench.noop", image=BUSYBOX_IMAGE, command=["true"])
    raw_dir = os.path.join(services.workdir, "raw")
    chosen = [Workload("command `true` (busybox)", noop.delay, lambda v: v.get("exit_code") == 0,
                       RawLoop(services.docker, services.hostname, raw_dir,
                               JobCall("raw", noop.spec, (), {}), slots))]
    if services.python:
        sys.path.insert(0, JOBS_DIR)
        from sample_jobs import add

        # The busybox job's CPU request and limit (1), so the two rows differ only in what runs.
        add = add.options(image=PYTHON_IMAGE, cpus=noop.spec.cpus)
        chosen.append(Workload("python `add(1, 2)`", lambda: add.delay(1, 2), lambda v: v == 3,
                               RawLoop(services.docker, services.hostname, raw_dir,
                                       JobCall("raw", add.spec, (1, 2), {}), slots)))
    return chosen


# --- rounds -------------------------------------------------------------------------

@dataclass
class Comparison:
    """Both ways of one workload at one concurrency, over all rounds."""

    workload: str
    concurrency: int
    raw: Sample = field(default_factory=Sample)
    jobyard: Sample = field(default_factory=Sample)
    round_ratios: list[float] = field(default_factory=list)


def compare(workload: Workload, concurrency: int, jobs: int, rounds: int) -> Comparison:
    """Alternate raw and jobyard rounds (ABBA...) after a short warm-up of each."""
    ways = {"raw": workload.raw.once, "jobyard": workload.jobyard_once}
    for way in ways.values():
        run_concurrently(way, 2 * concurrency, concurrency)
    result = Comparison(workload.name, concurrency)
    per_round = math.ceil(jobs / rounds)
    for number in range(rounds):
        order = ["raw", "jobyard"] if number % 2 == 0 else ["jobyard", "raw"]
        samples = {way: run_concurrently(ways[way], per_round, concurrency) for way in order}
        result.raw.add(samples["raw"])
        result.jobyard.add(samples["jobyard"])
        ratio = samples["jobyard"].percentile(50) / samples["raw"].percentile(50)
        result.round_ratios.append(ratio)
        log(f"{workload.name} c={concurrency} round {number + 1}/{rounds}: "
            f"raw p50 {samples['raw'].percentile(50) * 1000:.0f} ms, "
            f"jobyard p50 {samples['jobyard'].percentile(50) * 1000:.0f} ms (x{ratio:.2f})")
    return result


# --- report -------------------------------------------------------------------------

def ratios(c: Comparison) -> dict[str, float]:
    """jobyard ÷ raw for p50, p95, and throughput."""
    return {"p50": c.jobyard.percentile(50) / c.raw.percentile(50),
            "p95": c.jobyard.percentile(95) / c.raw.percentile(95),
            "throughput": c.jobyard.throughput / c.raw.throughput}


def meets_targets(c: Comparison) -> bool:
    """p50 ≤ 1.10× raw and throughput ≥ 0.90× raw."""
    r = ratios(c)
    return r["p50"] <= TARGET_P50 and r["throughput"] >= TARGET_THROUGHPUT


def table(comparisons: list[Comparison]) -> str:
    """The markdown table of absolute figures and ratios."""
    lines = ["| job | conc | N | p50 raw / jobyard (ms) | p50 ratio | p95 raw / jobyard (ms) | p95 ratio "
             "| jobs/s raw / jobyard | throughput ratio | per-round p50 ratio: median (range) | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        r = ratios(c)
        lines.append(
            f"| {c.workload} | {c.concurrency} | {len(c.raw.latencies)} "
            f"| {_ms(c.raw, 50)} / {_ms(c.jobyard, 50)} | **{r['p50']:.2f}×** "
            f"| {_ms(c.raw, 95)} / {_ms(c.jobyard, 95)} | {r['p95']:.2f}× "
            f"| {c.raw.throughput:.2f} / {c.jobyard.throughput:.2f} | **{r['throughput']:.2f}×** "
            f"| {statistics.median(c.round_ratios):.2f} ({min(c.round_ratios):.2f}–{max(c.round_ratios):.2f}) "
            f"| {'met' if meets_targets(c) else 'MISSED'} |")
    return "\n".join(lines)


#: A Python function job's jobyard p50 may exceed the busybox command job's by this much (s).
PYTHON_OVER_COMMAND = 0.040


def python_over_command(comparisons: list[Comparison]) -> str:
    """Per concurrency: the Python row's jobyard p50 minus the busybox row's, raw beside it."""
    lines = []
    for concurrency in sorted({c.concurrency for c in comparisons}):
        rows = [c for c in comparisons if c.concurrency == concurrency]
        command = next((c for c in rows if c.workload.startswith("command")), None)
        python = next((c for c in rows if c.workload.startswith("python")), None)
        if command is None or python is None:
            continue
        jobyard = python.jobyard.percentile(50) - command.jobyard.percentile(50)
        raw = python.raw.percentile(50) - command.raw.percentile(50)
        lines.append(f"concurrency {concurrency}: **{jobyard * 1000:+.0f} ms** (raw loops: {raw * 1000:+.0f} ms) "
                     f"{'met' if jobyard <= PYTHON_OVER_COMMAND else 'MISSED'}")
    if not lines:
        return ""
    return (f"Python job p50 over the busybox job's, through jobyard (target ≤ {PYTHON_OVER_COMMAND * 1000:.0f} ms; "
            "both ask 1 CPU): " + "; ".join(lines) + ".\n\n")


def _ms(sample: Sample, q: float) -> str:
    return f"{sample.percentile(q) * 1000:.0f}"


def report(comparisons: list[Comparison], load: tuple[float, float], elapsed: float) -> str:
    """The RESULTS.md section: table, targets, and how noisy the machine was."""
    return (
        f"{table(comparisons)}\n\n"
        f"{python_over_command(comparisons)}"
        f"Targets: p50 ≤ {TARGET_P50:.2f}× raw, throughput ≥ {TARGET_THROUGHPUT:.2f}× raw. "
        "Raw = Docker SDK create → start → wait → remove with the agent launcher's own create() "
        "options (same image, command, hardening, limits, bind mounts, log driver); jobyard = "
        "`delay()` → Redis → agent → container → result → `.get()` through a real redis-server "
        "and a real agent subprocess (`--cpus 4 --memory 4Gi`). Concurrency 4 = four caller "
        "threads either way. Rounds alternate raw/jobyard (ABBA) after a warm-up.\n\n"
        f"Noise: other engineers' test runs share this machine; 1-min load average was "
        f"{load[0]:.2f} at the start and {load[1]:.2f} at the end; the per-round p50 ratio "
        f"column shows the spread. Run took {elapsed:.0f} s."
    )


# --- main ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per way and concurrency (default 120)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 jobs in 2 rounds")
    parser.add_argument("--python", action="store_true", help="also measure a Python no-op function job")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated concurrencies (default 1,4)")
    parser.add_argument("--no-write", action="store_true", help="print figures, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (16 if args.quick else 120)
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its section of bench/RESULTS.md."""
    args = parse_args(argv)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    comparisons = []
    with Services(args.python) as services:
        for workload in workloads(services, max(args.concurrency)):
            for concurrency in args.concurrency:
                comparisons.append(compare(workload, concurrency, args.jobs, args.rounds))
    section = report(comparisons, (load_start, os.getloadavg()[0]), time.monotonic() - started)
    print(section)
    if not args.no_write:
        from results import update_section

        update_section("dispatch-quick" if args.quick else "dispatch", section)
        log("wrote bench/RESULTS.md")
    return 0 if all(meets_targets(c) for c in comparisons) else 1


if __name__ == "__main__":
    raise SystemExit(main())
