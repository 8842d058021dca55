"""Stored records (dead letters, refused messages) printed as JSON or as a table."""

from __future__ import annotations

import click


def show_records(records: list[dict], as_json: bool, headers: list[str], row) -> None:
    """Print ``records`` as JSON, or as a table of ``row(record, now)`` under ``headers``."""
    import json
    import time

    from .table import render_table

    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    now = time.time()
    click.echo(render_table(headers, [row(r, now) for r in records]))
