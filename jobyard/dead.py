"""``jobyard dead``: jobs that failed for good, from the executor's dead-letter store."""

from __future__ import annotations

import click

from .listing import show_records


@click.group()
def dead():
    """Jobs that failed for good: list, requeue or purge them."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def dead_list(as_json, limit):
    """List dead-lettered jobs, newest first."""
    from executor.deadletter import DeadLetters
    from tasks.state import state_client

    show_records([r.listed() for r in DeadLetters(state_client()).list(limit)], as_json,
                 ["task id", "job", "reason", "attempt", "host", "died", "error"],
                 lambda r, now: [r["task_id"], r.get("name"), r.get("reason"), r.get("attempt"), r.get("host"),
                                 f"{now - r.get('died_at', now):.0f}s ago", str(r.get("error", ""))[:80]])


@dead.command("requeue")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead job.")
def dead_requeue(task_ids, everything):
    """Send dead jobs again, with a fresh retry budget."""
    from executor.deadletter import DeadLetters
    from tasks import app
    from tasks.state import state_client

    store = DeadLetters(state_client())
    ids = [r.task_id for r in store.list(10_000)] if everything else list(task_ids)
    if not ids:
        raise click.UsageError("name task ids or pass --all")
    sealer = getattr(app, "jobyard_sealer", None)  # signing on: the reset retries header is sealed again
    missing = [task_id for task_id in ids if not store.requeue(task_id, app.backend, sealer)]
    click.echo(f"requeued {len(ids) - len(missing)} job(s)")
    if missing:
        raise click.ClickException(f"not in the dead-letter store (or no message kept): {', '.join(missing)}")


@dead.command("purge")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Purge every dead job.")
def dead_purge(task_ids, everything):
    """Delete dead jobs from the store."""
    from executor.deadletter import DeadLetters
    from tasks.state import state_client

    if not task_ids and not everything:
        raise click.UsageError("name task ids or pass --all")
    count = DeadLetters(state_client()).purge(None if everything else list(task_ids))
    click.echo(f"purged {count} job(s)")


#: Subcommands this module adds to ``jobyard``.
commands = [dead]
