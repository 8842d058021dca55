"""``jobyard image build``: a Python job image from local files, no registry needed."""

from __future__ import annotations

import click

from executor.errors import AgentError


@click.group()
def image():
    """Build job images from local files (no registry needed)."""


@image.command("build")
@click.option("--code", type=click.Path(exists=True, file_okay=False), default=None,
              help="A directory of your modules, put on the image's PYTHONPATH.")
@click.option("--tag", default=None, help="Image tag (default: $JOBYARD_DEFAULT_IMAGE or jobyard/python:latest).")
def image_build(code, tag):
    """Build a self-contained Python job image from this machine's Python."""
    from executor.agent import connect_docker
    from executor.image import build_image
    from tasks.config import Settings

    tag = tag or Settings.from_env().default_image
    try:
        built = build_image(connect_docker(), tag=tag, code=code, progress=lambda line: click.echo(f"  {line}"))
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{built.tag}  {built.id[7:19]}  {built.size / 1024**2:.0f} MiB  {built.seconds:.1f}s")


#: Subcommands this module adds to ``jobyard``.
commands = [image]
