"""CLI commands of the autoscaler."""

#: Subcommands this module adds to ``jobyard``.
commands = []
