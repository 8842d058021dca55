"""``jobyard demo``: a batch with one memory blow-up, on a real agent, as a table.

Uses the configured Redis when ``JOBYARD_BROKER_URL`` (or ``JOBYARD_BROKER_URL_FILE``)
is set, else starts an embedded redis-server on a free port: a demo never writes to a
Redis that merely happens to listen on localhost; builds the demo image from local files;
starts an agent; submits the batch; prints each outcome; cleans up what it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Callable

import redis

from tasks import keys
from tasks.app import app, configure
from tasks.clients import redis_client
from tasks.config import Settings, broker_configured, redact
from tasks.errors import JobError
from tasks.units import format_memory

from .table import render_table

Echo = Callable[[str], None]


def run_demo(echo: Echo, jobs: int = 6) -> int:
    """Run the demo; return 0 when the OOM job alone failed, as it should."""
    with ExitStack() as stack:
        settings = _broker(stack, echo)
        configure(app, settings)
        echo("building the demo image from local files ...")
        _build_image(echo)
        agent_name = f"demo-{socket.gethostname()}-{os.getpid()}"
        _start_agent(stack, settings, agent_name, echo)
        return _submit_batch(echo, jobs)


def _broker(stack: ExitStack, echo: Echo) -> Settings:
    settings = Settings.from_env()
    if broker_configured():
        try:
            redis_client(settings.broker_url, settings, socket_connect_timeout=2).ping()
        except redis.exceptions.RedisError as exc:
            raise SystemExit(f"the configured Redis ({redact(settings.broker_url)}) does not answer: {exc}")
        echo(f"using the configured Redis at {redact(settings.broker_url)}")
        return settings
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no Redis answers and redis-server is not installed (bash deploy/setup.sh install)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="jobyard-demo-redis-"))
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", workdir],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(_stop, process)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis_client(url, settings).ping()
            break
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    echo(f"started an embedded redis-server on 127.0.0.1:{port}")
    os.environ["JOBYARD_BROKER_URL"] = url
    os.environ.pop("JOBYARD_RESULT_BACKEND", None)
    return Settings.from_env()


def _build_image(echo: Echo) -> None:
    from executor.agent import connect_docker
    from executor.image import build_image

    from .demo_jobs import DEMO_IMAGE

    with tempfile.TemporaryDirectory(prefix="jobyard-demo-code-") as code:
        package = os.path.join(code, "jobyard")
        os.makedirs(package)
        open(os.path.join(package, "__init__.py"), "w").close()
        shutil.copy(os.path.join(os.path.dirname(__file__), "demo_jobs.py"), package)
        build_image(connect_docker(), tag=DEMO_IMAGE, code=code, progress=lambda line: echo(f"  {line}"))


def _start_agent(stack: ExitStack, settings: Settings, name: str, echo: Echo) -> None:
    state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="jobyard-demo-state-"))
    log_file = stack.enter_context(tempfile.NamedTemporaryFile(prefix="jobyard-demo-agent-", suffix=".log"))
    process = subprocess.Popen(
        [sys.executable, "-m", "jobyard.cli", "agent", "--hostname", name, "--cpus", "2", "--memory", "1Gi",
         "--state-dir", state_dir, "--loglevel", "WARNING"],
        env={**os.environ, "JOBYARD_BROKER_URL": settings.broker_url}, stdout=log_file, stderr=subprocess.STDOUT)
    stack.callback(_stop, process)
    client = redis_client(settings.broker_url, settings)
    for _ in range(300):
        if client.exists(keys.agent(name)):
            echo(f"agent {name} is up (2 cpus, 1Gi)")
            return
        if process.poll() is not None:
            raise SystemExit(f"the agent exited: {open(log_file.name).read()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("the agent did not come up in 30 s")


def _submit_batch(echo: Echo, jobs: int) -> int:
    from .demo_jobs import count_primes, load_everything

    batch = [(f"count_primes({200_000 * (i + 1)})", count_primes.delay(200_000 * (i + 1))) for i in range(jobs)]
    batch.insert(jobs // 2, ("load_everything(400)  # 400 MB under a 64Mi limit", load_everything.delay(400)))
    echo(f"submitted {len(batch)} jobs; one will blow its memory limit")
    rows, failures = [], 0
    for done, (label, result) in enumerate(batch, 1):
        started = time.monotonic()
        try:
            value = result.get(timeout=120)
            outcome, detail = "SUCCESS", f"value={value}"
        except JobError as exc:
            outcome, detail = type(exc).__name__, str(exc)
            failures += 1
        from tasks.state import job_facts
        facts = job_facts(result.id)
        peak = facts.get("peak_memory")
        rows.append([label, result.id[:8], outcome, facts.get("host", ""),
                     format_memory(peak) if isinstance(peak, int) else "-", detail[:90]])
        echo(f"  [{done}/{len(batch)}] {label}: {outcome} ({time.monotonic() - started:.1f}s)")
    echo("")
    echo(render_table(["job", "id", "outcome", "host", "peak", "detail"], rows))
    ok = failures == 1 and rows[jobs // 2][2] == "ContainerOOMKilled"
    echo("")
    echo("the OOM job failed alone; every other job succeeded and the agent stayed up" if ok
         else "unexpected outcomes: see the table above")
    return 0 if ok else 1


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
