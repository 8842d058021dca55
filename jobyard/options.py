"""Click callbacks shared by commands: sizes and queue lists read alike everywhere."""

from __future__ import annotations

import click

from tasks.units import parse_memory


def memory_option(_ctx, _param, value):
    """Click callback: a memory size (512m, 1Gi, bytes) as bytes, or None."""
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def queues_option(_ctx, _param, value):
    """Click callback: a comma-separated queue list as a tuple (default: default)."""
    queues = tuple(q.strip() for q in (value or "default").split(",") if q.strip())
    if not queues:
        raise click.BadParameter("name at least one queue")
    return queues
