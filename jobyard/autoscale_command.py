"""``jobyard autoscale`` and ``jobyard autoscale plot``: options parsed here, the work in :mod:`autoscaler.run`."""

from __future__ import annotations

import logging
import os

import click

from autoscaler.errors import AutoscalerError
from autoscaler.registry import REGISTRY

from .options import memory_option, queues_option


@click.group(invoke_without_command=True)
@click.option("--provider", type=click.Choice(REGISTRY.providers.names()), default="local", show_default=True)
@click.option("--min", "minimum", type=click.IntRange(min=0), default=0, show_default=True, help="Fewest hosts.")
@click.option("--max", "maximum", type=click.IntRange(min=0), default=None, help="Most hosts (required).")
@click.option("--poll", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between polls.")
@click.option("--stabilisation", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds demand must stay below the fleet before scaling in.")
@click.option("--cooldown", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds after any action before a scale-in.")
@click.option("--hysteresis", type=click.FloatRange(0, 0.95), default=0.2, show_default=True,
              help="Scale in only when demand fits hosts filled to 1 - this.")
@click.option("--host-cpus", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="CPUs per host.")
@click.option("--host-memory", callback=memory_option, default="1Gi", show_default=True, help="Memory per host.")
@click.option("--queues", callback=queues_option, default="default", show_default=True, help="Comma-separated queues.")
@click.option("--jobs-per-host", type=click.IntRange(min=1), default=None, help="Also keep at most N jobs per host.")
@click.option("--record", type=click.Path(dir_okay=False), default=None,
              help="Write a timeline: .csv for CSV, otherwise JSON lines.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on 127.0.0.1:P.")
@click.option("--state-dir", default=None, help="local: agent pidfiles, logs and state dirs; docker: the agents' state dirs.")
@click.option("--host-prefix", default=None, help="local/docker: host names are PREFIX-N (default: this hostname).")
@click.option("--agent-arg", "agent_args", multiple=True, help="local/docker: extra argument for each agent (repeatable).")
@click.option("--image", default=None, help="docker: the agent image, run as `jobyard agent ...` (default $JOBYARD_AGENT_IMAGE or jobyard/jobyard:latest).")
@click.option("--asg-name", default=None, help="aws: the Auto Scaling group.")
@click.option("--region", default=None, help="aws: the region (default: boto3's).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def autoscale(ctx, **options):
    """Grow and shrink the fleet from backlog and demand; drain hosts before removing them."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=options["loglevel"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if options["maximum"] is None:
        raise click.UsageError("--max is required")
    if options["provider"] == "aws" and not options["asg_name"]:
        raise click.UsageError("--asg-name is required for --provider aws")
    from autoscaler.run import AutoscaleConfig, run_autoscaler

    options.pop("loglevel")
    try:
        run_autoscaler(AutoscaleConfig(**options))
    except AutoscalerError as exc:
        raise click.ClickException(str(exc)) from None


@autoscale.command("plot")
@click.argument("timeline", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default=None, help="PNG to write (default: TIMELINE with .png).")
@click.option("--title", default=None, help="Plot title.")
def plot(timeline, output, title):
    """Render a ``--record`` timeline as a PNG."""
    from autoscaler.plot import plot_timeline

    output = output or os.path.splitext(timeline)[0] + ".png"
    try:
        plot_timeline(timeline, output, title=title)
    except AutoscalerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(output)


#: Subcommands this module adds to ``jobyard``.
commands = [autoscale]
