"""``jobyard agent``: run an executor agent on this host."""

from __future__ import annotations

import logging
import socket

import click

from executor.credentials import CredentialsError, DockerConfig
from executor.errors import AgentError
from executor.placement import DEFAULT_MAX_WAIT
from executor.policy import DEFAULT_MAX_PIDS
from tasks.units import parse_memory

from .options import memory_option, queues_option


def job_file_option(_ctx, _param, value):
    """Click callback: the job file limit (a size) as bytes, checked against the result cap."""
    from executor.container import check_max_job_file

    try:
        return check_max_job_file(parse_memory(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def registry_config_option(_ctx, _param, value):
    """Click callback: the registry config (a Docker config.json) loaded and checked at start-up.

    With no path, ``$DOCKER_CONFIG/config.json`` then ``~/.docker/config.json`` (none is fine).
    """
    try:
        return DockerConfig.load(value)
    except CredentialsError as exc:
        raise click.BadParameter(str(exc)) from None


def image_cache_option(_ctx, _param, value):
    """Click callback: the ``--image-cache`` budget in bytes (None: no budget)."""
    from executor.image_cache import parse_budget

    if value is None:
        return None
    try:
        return parse_budget(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--hostname", default=None, help="Host identity (default: this machine's hostname).")
@click.option("--cpus", type=click.FloatRange(min=0.01), default=None, help="Allocatable CPUs (default: psutil).")
@click.option("--memory", callback=memory_option, default=None, help="Allocatable memory, e.g. 8Gi (default: psutil total minus 512Mi).")
@click.option("--queues", callback=queues_option, default="default", show_default=True, help="Comma-separated queues to consume.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=16, show_default=True, help="Most jobs at once.")
@click.option("--max-wait", type=click.FloatRange(min=0), default=DEFAULT_MAX_WAIT, show_default=True,
              help="Seconds a job this host could run may be passed over for smaller ones before a host "
                   "holds itself free for it (starvation bound).")
@click.option("--allow-image", "allowed_images", multiple=True,
              help="Glob of images jobs may use, matched against the reference as written and its normalised "
                   "form, e.g. 'registry.example:5000/*' (repeatable; default any).")
@click.option("--require-digest", is_flag=True, help="Run only images pinned by @sha256: digest.")
@click.option("--max-job-cpus", type=float, default=None, help="Largest CPU limit one job may ask for.")
@click.option("--max-job-memory", callback=memory_option, default=None, help="Largest memory limit one job may ask for.")
@click.option("--allow-network", is_flag=True, help="Let jobs ask for network='bridge'.")
@click.option("--max-job-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Longest timeout (seconds) one job may ask for.")
@click.option("--max-job-pids", type=click.IntRange(min=8), default=DEFAULT_MAX_PIDS, show_default=True,
              help="Most processes one job may ask for.")
@click.option("--registry-config", callback=registry_config_option, default=None, metavar="PATH",
              help="Registry credentials: a Docker config.json, best a read-only file "
                   "(default: $DOCKER_CONFIG/config.json, then ~/.docker/config.json).")
@click.option("--pull-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Longest time (seconds) one image pull may take; not charged to the job's timeout.")
@click.option("--max-pulls", type=click.IntRange(min=1), default=2, show_default=True,
              help="Most image pulls this host runs at once.")
@click.option("--image-cache", callback=image_cache_option, default=None, metavar="SIZE",
              help="Budget of the images jobyard pulled onto this engine, e.g. 20Gi: least recently used "
                   "unused ones are removed past it (default: never remove).")
@click.option("--state-dir", default=None, help="Where job input/output dirs live (JOBYARD_STATE_DIR).")
@click.option("--max-job-file", callback=job_file_option, default="64Mi", show_default=True,
              help="Largest file a job may write (its result, and any file in /tmp): what it can put on the host.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
def agent(hostname, cpus, memory, queues, max_jobs, max_wait, allowed_images, require_digest, max_job_cpus,
          max_job_memory, allow_network, max_job_timeout, max_job_pids, registry_config, pull_timeout, max_pulls,
          image_cache, state_dir, max_job_file, loglevel, metrics_port):
    """Run an executor agent on this host."""
    from executor.agent import Agent, AgentConfig
    from executor.capacity import Capacity
    from executor.metrics import serve_metrics
    from executor.policy import HostPolicy
    from executor.worker import run_worker
    from tasks.config import Settings

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    policy = HostPolicy(allowed_images=tuple(allowed_images) or ("*",), max_cpus=max_job_cpus,
                        max_memory=max_job_memory, allow_network=allow_network, max_timeout=max_job_timeout,
                        max_pids=max_job_pids, require_digest=require_digest)
    config = AgentConfig(hostname=hostname or socket.gethostname(), capacity=Capacity.detect(cpus, memory),
                         queues=queues, policy=policy, state_dir=state_dir or Settings.from_env().state_dir,
                         max_jobs=max_jobs, max_wait=max_wait, max_job_file=max_job_file,
                         registry_config=registry_config, pull_timeout=pull_timeout, max_pulls=max_pulls,
                         image_cache=image_cache)
    try:
        # A bench may run its own kind of agent under this command (bench/slot_agent.py).
        make_agent = (click.get_current_context().obj or {}).get("agent_class", Agent)
        job_agent = make_agent(config)
        if metrics_port:
            serve_metrics(job_agent, metrics_port)
        raise SystemExit(run_worker(job_agent, loglevel=loglevel))
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


#: Subcommands this module adds to ``jobyard``.
commands = [agent]
