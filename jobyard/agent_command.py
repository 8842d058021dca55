"""``jobyard agent``: run an executor agent on this host."""

from __future__ import annotations

import logging
import socket

import click

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


@click.command()
@click.option("--hostname", default=None, help="Host identity (default: this machine's hostname).")
@click.option("--cpus", type=click.FloatRange(min=0.01), default=None, help="Allocatable CPUs (default: psutil).")
@click.option("--memory", callback=memory_option, default=None, help="Allocatable memory, e.g. 8Gi (default: psutil total minus 512Mi).")
@click.option("--queues", callback=queues_option, default="default", show_default=True, help="Comma-separated queues to consume.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=16, show_default=True, help="Most jobs at once.")
@click.option("--max-wait", type=click.FloatRange(min=0), default=DEFAULT_MAX_WAIT, show_default=True,
              help="Seconds a job this host could run may be passed over for smaller ones before a host "
                   "holds itself free for it (starvation bound).")
@click.option("--allow-image", "allowed_images", multiple=True, help="Glob of images jobs may use (repeatable; default any local image).")
@click.option("--max-job-cpus", type=float, default=None, help="Largest CPU limit one job may ask for.")
@click.option("--max-job-memory", callback=memory_option, default=None, help="Largest memory limit one job may ask for.")
@click.option("--allow-network", is_flag=True, help="Let jobs ask for network='bridge'.")
@click.option("--max-job-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Longest timeout (seconds) one job may ask for.")
@click.option("--max-job-pids", type=click.IntRange(min=8), default=DEFAULT_MAX_PIDS, show_default=True,
              help="Most processes one job may ask for.")
@click.option("--state-dir", default=None, help="Where job input/output dirs live (JOBYARD_STATE_DIR).")
@click.option("--max-job-file", callback=job_file_option, default="64Mi", show_default=True,
              help="Largest file a job may write (its result, and any file in /tmp): what it can put on the host.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
def agent(hostname, cpus, memory, queues, max_jobs, max_wait, allowed_images, max_job_cpus, max_job_memory,
          allow_network, max_job_timeout, max_job_pids, state_dir, max_job_file, loglevel, metrics_port):
    """Run an executor agent on this host."""
    from executor.agent import Agent, AgentConfig, default_state_dir
    from executor.capacity import Capacity
    from executor.metrics import serve_metrics
    from executor.policy import HostPolicy
    from executor.worker import run_worker

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    policy = HostPolicy(allowed_images=tuple(allowed_images) or ("*",), max_cpus=max_job_cpus,
                        max_memory=max_job_memory, allow_network=allow_network, max_timeout=max_job_timeout,
                        max_pids=max_job_pids)
    config = AgentConfig(hostname=hostname or socket.gethostname(), capacity=Capacity.detect(cpus, memory),
                         queues=queues, policy=policy, state_dir=state_dir or default_state_dir(),
                         max_jobs=max_jobs, max_wait=max_wait, max_job_file=max_job_file)
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
