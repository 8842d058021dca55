"""The ``jobyard`` command.

Each part of jobyard owns its commands in its own module, which lists them in a
module-level ``commands``; this group only collects them.
"""

from __future__ import annotations

import importlib

import click

#: Modules whose ``commands`` become subcommands of ``jobyard``.
COMMAND_MODULES = ("executor.commands", "autoscaler.commands", "tasks.commands")


@click.group()
@click.version_option(package_name="jobyard")
def main():
    """jobyard: run batch jobs from Python in isolated containers on an elastic fleet."""


def _register() -> None:
    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).commands:
            main.add_command(command)


_register()


if __name__ == "__main__":
    main()
