"""Start the Celery worker half of an agent."""

from __future__ import annotations

import logging

from celery.signals import task_postrun, worker_shutting_down

from .agent import Agent
from .gate import GateStep

log = logging.getLogger(__name__)


def run_worker(agent: Agent, loglevel: str = "INFO") -> int:
    """Reap leftovers, start heartbeats, and consume jobs until shut down.

    The pool is Celery's thread pool: each thread only supervises a container.
    SIGTERM is a warm shutdown (running jobs finish); SIGQUIT is cold.
    """
    agent.install()
    agent.reap()
    agent.start_heartbeat()
    log.info("agent %s: capacity %s, queues %s", agent.name, agent.config.capacity.describe(),
             ",".join(agent.config.queues))
    agent.app.steps["consumer"].add(GateStep)
    worker_shutting_down.connect(lambda **_: agent.placement.stop(), weak=False)
    task_postrun.connect(lambda task_id=None, **_: agent.settle(task_id), weak=False)
    worker = agent.app.Worker(
        hostname=f"jobyard@{agent.name}",
        pool="threads",
        concurrency=agent.config.max_jobs,
        queues=list(agent.config.queues),
        loglevel=loglevel,
        send_events=True,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
        consumer_cls="executor.intake:IntakeConsumer",
    )
    try:
        worker.start()
    finally:
        agent.stop()
    return worker.exitcode or 0
