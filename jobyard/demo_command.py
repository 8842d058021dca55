"""``jobyard demo``: a batch with one memory blow-up, on a local agent (see :mod:`jobyard.demo`)."""

from __future__ import annotations

import click


@click.command()
@click.option("--jobs", type=click.IntRange(1, 50), default=6, show_default=True, help="Well-behaved jobs in the batch.")
def demo(jobs):
    """Run a batch with one memory blow-up on a local agent and show the outcomes."""
    from .demo import run_demo

    raise SystemExit(run_demo(click.echo, jobs=jobs))


#: Subcommands this module adds to ``jobyard``.
commands = [demo]
