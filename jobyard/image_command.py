"""``jobyard image build``: a Python job image from local files, optionally pushed."""

from __future__ import annotations

import click

from executor.errors import AgentError


@click.group()
def image():
    """Build job images from local files (no registry needed) and push them."""


@image.command("build")
@click.option("--code", type=click.Path(exists=True, file_okay=False), default=None,
              help="A directory of your modules, put on the image's PYTHONPATH.")
@click.option("--requirements", default=None,
              help="A pip requirements file: wheels for this machine's Python, put on the image's PYTHONPATH.")
@click.option("--tag", default=None, help="Image tag (default: $JOBYARD_DEFAULT_IMAGE or jobyard/python:latest).")
@click.option("--push", is_flag=True, help="Push the tag to its registry and print REF@sha256:... last.")
@click.option("--registry-config", default=None,
              help="Docker config.json with the registry's credentials, for --push "
                   "(default: $DOCKER_CONFIG/config.json, then ~/.docker/config.json).")
def image_build(code, requirements, tag, push, registry_config):
    """Build a self-contained Python job image from this machine's Python."""
    from executor.agent import connect_docker
    from executor.image import build_image
    from executor.push import check_login, push_auth, push_image
    from tasks.config import Settings

    if registry_config is not None and not push:
        raise click.UsageError("--registry-config is used only with --push")
    tag = tag or Settings.from_env().default_image

    def progress(line: str) -> None:
        click.echo(f"  {line}")

    try:
        auth_config = push_auth(tag, registry_config) if push else None
        client = connect_docker()
        if push:
            check_login(client, tag, auth_config)
        built = build_image(client, tag=tag, code=code, requirements=requirements, progress=progress)
        click.echo(f"{built.tag}  {built.id[7:19]}  {built.size / 1024**2:.0f} MiB  {built.seconds:.1f}s")
        if push:
            click.echo(push_image(client, built.tag, auth_config, progress=progress))
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


#: Subcommands this module adds to ``jobyard``.
commands = [image]
