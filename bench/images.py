"""Cold starts from a registry: time to a job's result on a host without its image.

Two images are pushed to a loopback registry of the bench's own (Debian's
``docker-registry``, through ``tests/support/registry.py``): the busybox command image
and a team image built with ``--requirements`` holding numpy's manylinux wheel. For
each image, in alternating rounds with the image removed from the engine before
every one:

* jobyard: ``delay()`` → Redis → agent (pulls the image, ``pull="missing"``) →
  container → result → ``.get()``;
* raw: a Docker SDK ``pull`` of the same reference from the same registry, then
  create → start → wait → remove with the agent launcher's own create() options
  (hardening, limits, bind mounts), as bench/dispatch.py records them.

Then N jobs of one image land at once on the cold host: the engine's pull events are
counted (``docker events`` type=image event=pull) and the makespan is taken. The bench
starts its own redis-server, registry and agent subprocess, and removes them, its
containers (by label) and its images (its registry's references only)::

    .venv/bin/python bench/images.py            # 6 rounds, bursts of 8
    .venv/bin/python bench/images.py --quick    # 2 rounds, bursts of 4: a smoke run

Figures go to ``bench/RESULTS.md`` (section ``images``, or ``images-quick``). It exits
1 when a target is missed: cold start ≤ 1.10× the raw pull-and-run, one pull per image
per host.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path[:0] = [ROOT, BENCH_DIR]

from dispatch import RawLoop, log, raw_agent_name, remove_containers  # noqa: E402

BUSYBOX_SOURCE = "jobyard-bench/images-busybox:latest"
#: numpy's manylinux wheel for the image's Python, pinned so runs compare.
REQUIREMENT = "numpy==2.4.6"
JOB_MODULE = "image_jobs"
TARGET_COLD = 1.10
TARGET_PULLS = 1
GET_TIMEOUT = 300
PULL_TIMEOUT = 300


# --- images -------------------------------------------------------------------------

@dataclass
class BenchImage:
    """One pushed image and the job that runs on it, both ways."""

    name: str
    reference: str
    digest: str
    size: int
    submit: Callable[[], Any]
    expected: Callable[[Any], bool]
    raw: RawLoop


def local_references(client, host: str, reference: str) -> list[str]:
    """This registry's tags and digests of the local image ``reference`` ([] when absent)."""
    import docker.errors

    try:
        attrs = client.api.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return []
    names = (attrs.get("RepoTags") or []) + (attrs.get("RepoDigests") or [])
    return [name for name in names if name.startswith(f"{host}/")]


def make_cold(client, host: str, reference: str, timeout: float = 30.0) -> None:
    """Remove every local name of ``reference`` from our registry, so the host lacks the image."""
    import docker.errors

    deadline = time.monotonic() + timeout
    while names := local_references(client, host, reference):
        for name in names:
            try:
                client.api.remove_image(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                # Still in use by a container that is being removed: try again shortly.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def raw_pull(client, reference: str, auth_config: dict) -> None:
    """``docker pull`` through the SDK, as a script would; raises on any error line."""
    repository, _, tag = reference.rpartition(":")
    for line in client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth_config):
        if "error" in line:
            raise RuntimeError(f"raw pull of {reference} failed: {line['error']}")


def pull_count(client, prefix: str, since: float) -> int:
    """The engine's pull events since ``since`` for references starting with ``prefix``."""
    events = client.events(decode=True, since=f"{since:.3f}", until=f"{time.time():.3f}",
                           filters={"type": "image", "event": "pull"})
    return sum(1 for event in events if event.get("Actor", {}).get("ID", "").startswith(prefix))


# --- services -----------------------------------------------------------------------

class Services:
    """Our own redis-server, registry, agent subprocess, images and scratch dirs; all undone on exit."""

    def __init__(self):
        self.hostname = f"bench-{os.urandom(3).hex()}"
        self.workdir = tempfile.mkdtemp(prefix="jobyard-bench-images-")
        self.redis = self.registry = self.agent = self.docker = None
        self.references: list[str] = []

    def __enter__(self) -> "Services":
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        from tests.support.registry import Registry
        from tests.support.services import RedisServer, free_port

        self.redis = RedisServer(free_port(), os.path.join(self.workdir, "redis")).start()
        # Before anything imports tasks: its app reads the broker URL once, at import.
        os.environ["JOBYARD_BROKER_URL"] = self.redis.url
        os.environ.pop("JOBYARD_RESULT_BACKEND", None)
        from executor.agent import connect_docker
        from tasks import app

        if app.conf.broker_url != self.redis.url:
            raise RuntimeError(f"tasks was imported before the bench's broker was set ({app.conf.broker_url})")
        log(f"redis-server pid {self.redis.process.pid} on {self.redis.url}")
        self.registry = Registry().start()
        log(f"docker-registry pid {self.registry.process.pid} on {self.registry.host}")
        self.docker = connect_docker()
        self._start_agent()

    def registry_config(self) -> str:
        """A Docker config.json with our registry's credentials, readable by us only."""
        path = os.path.join(self.workdir, "config.json")
        auth = base64.b64encode(f"{self.registry.username}:{self.registry.password}".encode()).decode()
        with open(path, "w") as handle:
            json.dump({"auths": {self.registry.host: {"auth": auth}}}, handle)
        os.chmod(path, 0o600)
        return path

    def _start_agent(self) -> None:
        import redis

        from tests.support.services import AgentProcess

        args = ["--cpus", "4", "--memory", "4Gi", "--state-dir", os.path.join(self.workdir, "agent"),
                "--registry-config", self.registry_config(), "--pull-timeout", str(PULL_TIMEOUT)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        self.agent = AgentProcess(self.hostname, args, env, os.path.join(self.workdir, "agent.log"))
        self.agent.start(redis.Redis.from_url(self.redis.url))
        log(f"agent {self.hostname} pid {self.agent.process.pid} ready (log {self.agent.log_path})")

    def push(self, source: str, repository: str) -> tuple[str, str, int]:
        """Push the local image ``source`` as ``HOST/repository:v1``; (reference, digest, bytes)."""
        reference = f"{self.registry.host}/{repository}:v1"
        self.references.append(reference)
        size = int(self.docker.api.inspect_image(source).get("Size", 0))
        digest = self.registry.push(self.docker, source, repository, "v1")
        log(f"pushed {reference} {digest} ({size / 2**20:.1f} MiB)")
        return reference, digest, size

    def __exit__(self, *exc_info) -> None:
        if self.agent is not None:
            self.agent.stop(timeout=20)
        if self.docker is not None:
            removed = sum(remove_containers(self.docker, name)
                          for name in (self.hostname, raw_agent_name(self.hostname)))
            for reference in self.references:
                make_cold(self.docker, self.registry.host, reference)
            _remove_image(self.docker, BUSYBOX_SOURCE)
            log(f"removed {removed} leftover container(s) and the bench's images")
        if self.registry is not None:
            self.registry.remove()
        if self.redis is not None:
            self.redis.stop()
        log("stopped agent, registry and redis-server")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _remove_image(client, tag: str) -> None:
    import docker.errors

    try:
        client.images.remove(tag)
    except docker.errors.APIError:  # absent, or in use by someone's container: keep it
        pass


def bench_images(services: Services) -> list[BenchImage]:
    """Build and push both images, remove their local copies, and declare their jobs."""
    chosen = [busybox_image(services), numpy_image(services)]
    for image in chosen:
        make_cold(services.docker, services.registry.host, image.reference)
    return chosen


def busybox_image(services: Services) -> BenchImage:
    """The busybox command image, pushed; its job runs ``true``."""
    from executor.container import JobCall
    from tasks import command_job
    from tests.support.images import build_busybox

    _remove_image(services.docker, BUSYBOX_SOURCE)  # each import is a new image: keep no stale one
    build_busybox(services.docker, BUSYBOX_SOURCE)
    reference, digest, size = services.push(BUSYBOX_SOURCE, "bench/busybox")
    # The source shares the pushed layer: while it is here a pull would fetch nothing.
    _remove_image(services.docker, BUSYBOX_SOURCE)
    true = command_job("bench.images.true", image=reference, command=["true"], cpus=0.25, memory="32Mi")
    raw = RawLoop(services.docker, services.hostname, os.path.join(services.workdir, "raw-busybox"),
                  JobCall("raw", true.spec, (), {}), 1)
    return BenchImage("busybox command `true`", reference, digest, size, true.delay,
                      lambda v: v.get("exit_code") == 0, raw)


def numpy_image(services: Services) -> BenchImage:
    """The team image built with numpy from --requirements, pushed; its job sums with numpy."""
    from executor.container import JobCall
    from executor.image import build_image
    from tasks import job

    code = os.path.join(services.workdir, "code")
    os.makedirs(code)
    shutil.copy(os.path.join(BENCH_DIR, "jobs", f"{JOB_MODULE}.py"), code)
    requirements = os.path.join(services.workdir, "requirements.txt")
    with open(requirements, "w") as handle:
        handle.write(f"{REQUIREMENT}\n")
    local = f"{services.registry.host}/bench/numpy:v1"
    services.references.append(local)
    log(f"building {local} with {REQUIREMENT}")
    build_image(services.docker, tag=local, code=code, requirements=requirements,
                progress=lambda line: None if line.startswith("pip: ") else log(f"  {line}"))
    reference, digest, size = services.push(local, "bench/numpy")
    sys.path.insert(0, code)
    numpy_sum = job(image=reference, cpus=0.5, memory="256Mi", timeout=120)(
        importlib.import_module(JOB_MODULE).numpy_sum)
    raw = RawLoop(services.docker, services.hostname, os.path.join(services.workdir, "raw-numpy"),
                  JobCall("raw", numpy_sum.spec, (1000,), {}), 1)
    return BenchImage(f"team image ({REQUIREMENT}) `numpy_sum(1000)`", reference, digest, size,
                      lambda: numpy_sum.delay(1000), lambda v: v == 499500, raw)


# --- measuring ----------------------------------------------------------------------

@dataclass
class ColdStart:
    """Cold-start seconds of one image, both ways, over all rounds."""

    image: BenchImage
    raw: list[float] = field(default_factory=list)
    jobyard: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Median jobyard ÷ median raw."""
        return statistics.median(self.jobyard) / statistics.median(self.raw)

    @property
    def round_ratios(self) -> list[float]:
        """jobyard ÷ raw of each round."""
        return [j / r for j, r in zip(self.jobyard, self.raw)]


def raw_cold(services: Services, image: BenchImage) -> float:
    """Seconds for the raw pull then create → start → wait → remove on a host without the image."""
    make_cold(services.docker, services.registry.host, image.reference)
    started = time.perf_counter()
    raw_pull(services.docker, image.reference, services.registry.auth_config)
    image.raw.once(0)
    return time.perf_counter() - started


def jobyard_cold(services: Services, image: BenchImage) -> float:
    """Seconds from ``delay()`` to the result when the host lacks the image."""
    make_cold(services.docker, services.registry.host, image.reference)
    started = time.perf_counter()
    value = image.submit().get(timeout=GET_TIMEOUT)
    elapsed = time.perf_counter() - started
    if not image.expected(value):
        raise RuntimeError(f"{image.name}: unexpected result {value!r}")
    return elapsed


def cold_start(services: Services, image: BenchImage, rounds: int) -> ColdStart:
    """Alternate raw and jobyard cold starts (ABBA...), the image removed before each."""
    ways = {"raw": raw_cold, "jobyard": jobyard_cold}
    result = ColdStart(image)
    for number in range(rounds):
        order = ["raw", "jobyard"] if number % 2 == 0 else ["jobyard", "raw"]
        seconds = {way: ways[way](services, image) for way in order}
        result.raw.append(seconds["raw"])
        result.jobyard.append(seconds["jobyard"])
        log(f"{image.name} cold round {number + 1}/{rounds}: raw {seconds['raw']:.2f} s, "
            f"jobyard {seconds['jobyard']:.2f} s (x{seconds['jobyard'] / seconds['raw']:.2f})")
    return result


@dataclass
class Burst:
    """N jobs of one image submitted at once to the cold host."""

    image: BenchImage
    jobs: int
    pulls: int
    makespan: float


def burst(services: Services, image: BenchImage, jobs: int) -> Burst:
    """Submit ``jobs`` jobs at once with the image absent; count the engine's pulls."""
    make_cold(services.docker, services.registry.host, image.reference)
    since = time.time()
    started = time.perf_counter()
    results = [image.submit() for _ in range(jobs)]
    values = [result.get(timeout=GET_TIMEOUT) for result in results]
    makespan = time.perf_counter() - started
    if not all(image.expected(value) for value in values):
        raise RuntimeError(f"{image.name}: unexpected results {values!r}")
    pulls = pull_count(services.docker, image.reference.rpartition(":")[0], since)
    log(f"{image.name}: {jobs} jobs at once, {pulls} pull(s), makespan {makespan:.2f} s")
    return Burst(image, jobs, pulls, makespan)


# --- report -------------------------------------------------------------------------

def cold_met(c: ColdStart) -> bool:
    """Cold start within the target ratio of the raw pull-and-run."""
    return c.ratio <= TARGET_COLD


def table(colds: list[ColdStart], bursts: list[Burst]) -> str:
    """The markdown tables of absolute figures and ratios."""
    lines = ["| image | size (MiB) | rounds | cold start raw / jobyard, median (s) | ratio "
             "| per-round ratio: median (range) | target |", "|---|---|---|---|---|---|---|"]
    for c in colds:
        ratios = c.round_ratios
        lines.append(
            f"| {c.image.name} | {c.image.size / 2**20:.1f} | {len(c.raw)} "
            f"| {statistics.median(c.raw):.2f} / {statistics.median(c.jobyard):.2f} | **{c.ratio:.2f}×** "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) "
            f"| {'met' if cold_met(c) else 'MISSED'} |")
    lines += ["", "| image | jobs at once on a cold host | pulls | makespan (s) | target |", "|---|---|---|---|---|"]
    for b in bursts:
        lines.append(f"| {b.image.name} | {b.jobs} | **{b.pulls}** | {b.makespan:.2f} "
                     f"| {'met' if b.pulls == TARGET_PULLS else 'MISSED'} |")
    return "\n".join(lines)


def report(colds: list[ColdStart], bursts: list[Burst], load: tuple[float, float], elapsed: float) -> str:
    """The RESULTS.md section: tables, targets, and how noisy the machine was."""
    return (
        f"{table(colds, bursts)}\n\n"
        f"Targets: cold start ≤ {TARGET_COLD:.2f}× raw; exactly {TARGET_PULLS} pull per image per host. "
        "Cold = the image's every name from the bench's registry removed from the engine before each "
        "round. Raw = Docker SDK `pull` of the same reference from the same loopback registry "
        "(htpasswd), then create → start → wait → remove with the agent launcher's own create() "
        "options; jobyard = `delay()` → Redis → agent (`--cpus 4 --memory 4Gi --registry-config`, "
        "pull `missing`) → container → result → `.get()`. Rounds alternate raw/jobyard (ABBA). "
        "Size is the image's unpacked size on the engine.\n\n"
        f"Noise: other engineers' test runs share this machine; 1-min load average was "
        f"{load[0]:.2f} at the start and {load[1]:.2f} at the end; the per-round ratio column "
        f"shows the spread. Run took {elapsed:.0f} s."
    )


# --- main ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="alternating cold-start rounds (default 6)")
    parser.add_argument("--burst", type=int, default=None, help="jobs landing at once (default 8)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, bursts of 4")
    parser.add_argument("--no-write", action="store_true", help="print figures, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.burst = args.burst or (4 if args.quick else 8)
    if args.rounds < 1 or args.burst < 1:
        parser.error("--rounds and --burst are at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its section of bench/RESULTS.md."""
    args = parse_args(argv)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    with Services() as services:
        images = bench_images(services)
        colds = [cold_start(services, image, args.rounds) for image in images]
        bursts = [burst(services, image, args.burst) for image in images]
    section = report(colds, bursts, (load_start, os.getloadavg()[0]), time.monotonic() - started)
    print(section)
    if not args.no_write:
        from results import update_section

        update_section("images-quick" if args.quick else "images", section)
        log("wrote bench/RESULTS.md")
    met = all(cold_met(c) for c in colds) and all(b.pulls == TARGET_PULLS for b in bursts)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
