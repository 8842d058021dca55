"""``jobyard rejected``: messages agents refused from their queues, kept for inspection."""

from __future__ import annotations

import click

from .listing import show_records


@click.group()
def rejected():
    """Messages agents refused from their queues (garbage, pickle, unknown tasks, ...)."""


@rejected.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts, raw samples included.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def rejected_list(as_json, limit):
    """List refused messages, newest first: when, queue, agent, size, reason, the start of the raw item."""
    from tasks.state import rejected_messages, state_client

    show_records([r.to_dict() for r in rejected_messages(state_client(), limit)], as_json,
                 ["refused", "queue", "agent", "bytes", "reason", "raw (start)"],
                 lambda r, now: [f"{now - r['at']:.0f}s ago" if isinstance(r.get("at"), (int, float)) else "?",
                                 r.get("queue"), r.get("host"), r.get("size"), str(r.get("reason", ""))[:70],
                                 str(r.get("raw", ""))[:40].encode("unicode_escape").decode()])


@rejected.command("purge")
def rejected_purge():
    """Forget every refused message kept for inspection."""
    from tasks import keys
    from tasks.state import state_client

    client = state_client()
    count = client.llen(keys.rejected())
    client.delete(keys.rejected())
    click.echo(f"purged {count} refused message(s)")


#: Subcommands this module adds to ``jobyard``.
commands = [rejected]
