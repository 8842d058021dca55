"""CLI commands of the executor: ``jobyard agent``, ``image build``, ``demo``, ``dead`` and ``rejected``."""

from __future__ import annotations

import logging
import socket

import click

from tasks.units import parse_memory

from .errors import AgentError
from .placement import DEFAULT_MAX_WAIT


def memory_option(_ctx, _param, value):
    """Click callback: a memory size (512m, 1Gi, bytes) as bytes, or None."""
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def queues_option(_ctx, _param, value):
    """Click callback: a comma-separated queue list as a tuple (default: default)."""
    queues = tuple(q.strip() for q in (value or "default").split(",") if q.strip())
    if not queues:
        raise click.BadParameter("name at least one queue")
    return queues


@click.command()
@click.option("--hostname", default=None, help="Host identity (default: this machine's hostname).")
@click.option("--cpus", type=click.FloatRange(min=0.01), default=None, help="Allocatable CPUs (default: psutil).")
@click.option("--memory", callback=memory_option, default=None, help="Allocatable memory, e.g. 8Gi (default: psutil total minus 512Mi).")
@click.option("--queues", callback=queues_option, default="default", show_default=True, help="Comma-separated queues to consume.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=16, show_default=True, help="Most jobs at once.")
@click.option("--max-wait", type=click.FloatRange(min=0), default=DEFAULT_MAX_WAIT, show_default=True,
              help="Seconds a job this host could run may be passed over for smaller ones before a host "
                   "holds itself free for it (starvation bound).")
@click.option("--slots", type=click.IntRange(min=1), default=None,
              help="Admit a fixed number of jobs regardless of their requests (for comparisons only).")
@click.option("--allow-image", "allowed_images", multiple=True, help="Glob of images jobs may use (repeatable; default any local image).")
@click.option("--max-job-cpus", type=float, default=None, help="Largest CPU limit one job may ask for.")
@click.option("--max-job-memory", callback=memory_option, default=None, help="Largest memory limit one job may ask for.")
@click.option("--allow-network", is_flag=True, help="Let jobs ask for network='bridge'.")
@click.option("--state-dir", default=None, help="Where job input/output dirs live (JOBYARD_STATE_DIR).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
def agent(hostname, cpus, memory, queues, max_jobs, max_wait, slots, allowed_images, max_job_cpus, max_job_memory,
          allow_network, state_dir, loglevel, metrics_port):
    """Run an executor agent on this host."""
    from .agent import Agent, AgentConfig, default_state_dir
    from .capacity import Capacity
    from .metrics import serve_metrics
    from .policy import HostPolicy
    from .worker import run_worker

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    policy = HostPolicy(allowed_images=tuple(allowed_images) or ("*",), max_cpus=max_job_cpus,
                        max_memory=max_job_memory, allow_network=allow_network)
    config = AgentConfig(hostname=hostname or socket.gethostname(), capacity=Capacity.detect(cpus, memory),
                         queues=queues, policy=policy, state_dir=state_dir or default_state_dir(),
                         max_jobs=max_jobs, max_wait=max_wait, slots=slots)
    try:
        job_agent = Agent(config)
        if metrics_port:
            serve_metrics(job_agent, metrics_port)
        raise SystemExit(run_worker(job_agent, loglevel=loglevel))
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def image():
    """Build job images from local files (no registry needed)."""


@image.command("build")
@click.option("--code", type=click.Path(exists=True, file_okay=False), default=None,
              help="A directory of your modules, put on the image's PYTHONPATH.")
@click.option("--tag", default=None, help="Image tag (default: $JOBYARD_DEFAULT_IMAGE or jobyard/python:latest).")
def image_build(code, tag):
    """Build a self-contained Python job image from this machine's Python."""
    from tasks.config import Settings

    from .agent import connect_docker
    from .image import build_image

    tag = tag or Settings.from_env().default_image
    try:
        built = build_image(connect_docker(), tag=tag, code=code, progress=lambda line: click.echo(f"  {line}"))
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{built.tag}  {built.id[7:19]}  {built.size / 1024**2:.0f} MiB  {built.seconds:.1f}s")


@click.command()
@click.option("--jobs", type=click.IntRange(1, 50), default=6, show_default=True, help="Well-behaved jobs in the batch.")
def demo(jobs):
    """Run a batch with one memory blow-up on a local agent and show the outcomes."""
    from .demo import run_demo

    raise SystemExit(run_demo(click.echo, jobs=jobs))


def show_records(records: list[dict], as_json: bool, headers: list[str], row) -> None:
    """Print ``records`` as JSON, or as a table of ``row(record, now)`` under ``headers``."""
    import json
    import time

    from tasks.table import render_table

    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    now = time.time()
    click.echo(render_table(headers, [row(r, now) for r in records]))


@click.group()
def dead():
    """Jobs that failed for good: list, requeue or purge them."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def dead_list(as_json, limit):
    """List dead-lettered jobs, newest first."""
    from tasks.state import state_client

    from .deadletter import DeadLetters

    show_records(DeadLetters(state_client()).list(limit), as_json,
                 ["task id", "job", "reason", "attempt", "host", "died", "error"],
                 lambda r, now: [r["task_id"], r.get("name"), r.get("reason"), r.get("attempt"), r.get("host"),
                                 f"{now - r.get('died_at', now):.0f}s ago", str(r.get("error", ""))[:80]])


@dead.command("requeue")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead job.")
def dead_requeue(task_ids, everything):
    """Send dead jobs again, with a fresh retry budget."""
    from tasks.state import state_client

    from .deadletter import DeadLetters

    store = DeadLetters(state_client())
    ids = [r["task_id"] for r in store.list(10_000)] if everything else list(task_ids)
    if not ids:
        raise click.UsageError("name task ids or pass --all")
    missing = [task_id for task_id in ids if not store.requeue(task_id)]
    click.echo(f"requeued {len(ids) - len(missing)} job(s)")
    if missing:
        raise click.ClickException(f"not in the dead-letter store (or no message kept): {', '.join(missing)}")


@dead.command("purge")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Purge every dead job.")
def dead_purge(task_ids, everything):
    """Delete dead jobs from the store."""
    from tasks.state import state_client

    from .deadletter import DeadLetters

    if not task_ids and not everything:
        raise click.UsageError("name task ids or pass --all")
    count = DeadLetters(state_client()).purge(None if everything else list(task_ids))
    click.echo(f"purged {count} job(s)")


@click.group()
def rejected():
    """Messages agents refused from their queues (garbage, pickle, unknown tasks, ...)."""


@rejected.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts, raw samples included.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def rejected_list(as_json, limit):
    """List refused messages, newest first: when, queue, agent, size, reason, the start of the raw item."""
    from tasks.state import state_client

    from .intake import rejected as read_rejected

    show_records(read_rejected(state_client(), limit), as_json,
                 ["refused", "queue", "agent", "bytes", "reason", "raw (start)"],
                 lambda r, now: [f"{now - r['at']:.0f}s ago" if isinstance(r.get("at"), (int, float)) else "?",
                                 r.get("queue"), r.get("host"), r.get("size"), str(r.get("reason", ""))[:70],
                                 str(r.get("raw", ""))[:40].encode("unicode_escape").decode()])


@rejected.command("purge")
def rejected_purge():
    """Forget every refused message kept for inspection."""
    from tasks import keys
    from tasks.state import state_client

    client = state_client()
    count = client.llen(keys.rejected())
    client.delete(keys.rejected())
    click.echo(f"purged {count} refused message(s)")


#: Subcommands this module adds to ``jobyard``.
commands = [agent, image, demo, dead, rejected]
