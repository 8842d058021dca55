"""CLI commands for callers and operators: submit, status, job, logs, flower.

Each command only parses options and prints; the work is in :mod:`jobyard.submit`,
:mod:`jobyard.status`, :mod:`jobyard.facts`, :mod:`jobyard.logs` and :mod:`jobyard.flower`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys

import click

from tasks.config import Settings, redact


def _settings() -> Settings:
    return Settings.from_env()


def _client():
    from tasks.state import state_client

    return state_client(_settings())


@contextlib.contextmanager
def _broker_errors():
    """Turn an unreachable broker into one clear line (with the URL redacted)."""
    import redis

    from autoscaler.errors import MetricError

    try:
        yield
    except (redis.RedisError, MetricError) as exc:
        raise click.ClickException(f"cannot read the broker at {redact(_settings().broker_url)}: {exc}") from None


@click.command()
@click.argument("image")
@click.argument("argv", nargs=-1, required=True)
@click.option("--name", default=None, help="Job name (default: cli.<program>).")
@click.option("--memory", default=None, help="Memory request and limit, e.g. 256Mi.")
@click.option("--cpus", default=None, help="CPU request, e.g. 0.5 or 500m.")
@click.option("--timeout", type=float, default=None, help="Seconds before the container is killed.")
@click.option("--queue", default=None, help="Queue to send to (default: default).")
@click.option("--count", type=click.IntRange(1, 100_000), default=1, show_default=True, help="How many runs.")
@click.option("--wait", is_flag=True, help="Wait for the jobs and report how each ended.")
def submit(image, argv, name, memory, cpus, timeout, queue, count, wait):
    """Run ARGV in IMAGE as a job (options go before the --).

    \b
      jobyard submit --memory 64Mi --wait IMAGE -- ARGV...

    Prints the task ids; with --wait, one job's output, or for many a progress
    count and a summary table. Exits 1 if any job did not succeed.
    """
    from tasks.errors import InvalidJobSpec

    from .submit import submit as send

    try:
        results = send(image, argv, count, name=name, memory=memory, cpus=cpus, timeout=timeout, queue=queue)
    except InvalidJobSpec as exc:
        raise click.ClickException(str(exc)) from None
    if not wait:
        for result in results:
            click.echo(result.id)
        return
    ends = _wait(results)
    if count == 1:
        click.echo(ends[0].output, nl=False)
        if not ends[0].ok:
            click.echo(f"{ends[0].outcome}: {ends[0].detail}", err=True)
    else:
        from .submit import summary

        click.echo(summary(ends))
    sys.exit(0 if all(e.ok for e in ends) else 1)


def _wait(results):
    from .submit import ProgressLines, wait_all

    if len(results) == 1:
        return wait_all(results)
    label = f"waiting for {len(results)} jobs"
    if not sys.stderr.isatty():  # click's bar hides itself off a terminal: print counts instead
        progress = ProgressLines(len(results), lambda line: click.echo(line, err=True))
        click.echo(label, err=True)
        return wait_all(results, on_progress=progress.update)
    with click.progressbar(length=len(results), label=label, show_pos=True, file=sys.stderr) as bar:
        return wait_all(results, on_progress=bar.update)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--queue", "queues", multiple=True, help="Also show this queue (repeatable).")
@click.option("--decisions", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Autoscaler decisions to show.")
def status(as_json, queues, decisions):
    """Queues, hosts, lost hosts, jobs that fit no host, and the autoscaler's decisions."""
    from .status import collect, render

    with _broker_errors():
        settings = _settings()
        fleet = collect(_client(), redact(settings.broker_url), queues, decisions, settings.durability)
    click.echo(json.dumps(fleet.to_json(), indent=2) if as_json else render(fleet))


@click.command("job")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def job_view(task_id, as_json):
    """A job's container facts: container, image, limits, exit code, peak memory, attempt."""
    from tasks.state import job_facts

    from .facts import facts_rows
    from .table import render_table

    with _broker_errors():
        facts = job_facts(task_id, _client())
    if not facts:
        raise click.ClickException(f"no job {task_id}: unknown, expired, or not started yet")
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
        return
    click.echo(f"{facts.get('name', '?')}  {task_id}")
    click.echo(render_table(["fact", "value"], facts_rows(facts)))


@click.command()
@click.argument("task_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.option("--timeout", type=float, default=None, help="With --follow: give up after this many seconds.")
def logs(task_id, follow, timeout):
    """Print a job's output, running or finished."""
    from .logs import follow_logs, read_logs

    def write(text: str) -> None:
        click.echo(text, nl=False)

    with _broker_errors():
        if follow:
            follow_logs(task_id, _client(), write, timeout=timeout)
        else:
            write(read_logs(task_id, _client(), note=lambda text: click.echo(text, err=True)))


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--basic-auth-file", type=click.Path(dir_okay=False), default=None,
              help="File of user:password lines (default: $JOBYARD_FLOWER_USER/$JOBYARD_FLOWER_PASSWORD).")
@click.option("--unauthenticated-api", is_flag=True,
              help="On loopback without credentials, enable Flower's HTTP API anyway.")
def flower(address, port, basic_auth_file, unauthenticated_api):
    """Run Flower for jobyard; basic auth is required off loopback."""
    from .flower import FlowerConfig, load_credentials, run_flower

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = FlowerConfig(address, port, load_credentials(basic_auth_file), unauthenticated_api)
    run_flower(config, _settings())


#: Subcommands this module adds to ``jobyard``.
commands = [submit, status, job_view, logs, flower]
