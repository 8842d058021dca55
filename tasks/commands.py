"""CLI commands for callers and operators: submit, status, logs, flower."""

#: Subcommands this module adds to ``jobyard``.
commands = []
