"""The ``jobyard`` command.

Each command module of this package lists its commands in a module-level
``commands``; this group only collects them.
"""

from __future__ import annotations

import click

from . import agent_command, autoscale_command, commands, dead, demo_command, image_command, rejected

#: Modules whose ``commands`` become subcommands of ``jobyard``.
COMMAND_MODULES = (agent_command, image_command, demo_command, dead, rejected, autoscale_command, commands)


@click.group()
@click.version_option(package_name="jobyard")
def main():
    """jobyard: run batch jobs from Python in isolated containers on an elastic fleet."""


def _register() -> None:
    for module in COMMAND_MODULES:
        for command in module.commands:
            main.add_command(command)


_register()


if __name__ == "__main__":
    main()
