"""The ``jobyard`` command. Each part of jobyard owns the commands it adds here."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="jobyard")
def main():
    """jobyard: run batch jobs from Python in isolated containers on an elastic fleet."""


def _register() -> None:
    from executor.commands import agent, demo, image

    main.add_command(agent)
    main.add_command(image)
    main.add_command(demo)


_register()


if __name__ == "__main__":
    main()
