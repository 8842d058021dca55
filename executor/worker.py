"""Start the Celery worker half of an agent."""

from __future__ import annotations

import logging

from celery.signals import task_internal_error, worker_shutting_down

from tasks.names import node_name

from .agent import Agent
from .messages import delivery_tag
from .steps import AGENT_OPTION, add_steps
from .task import register

log = logging.getLogger(__name__)


def run_worker(agent: Agent, loglevel: str = "INFO") -> int:
    """Register the agent's task and steps on its app, and consume jobs until shut down.

    The pool is Celery's thread pool: each thread only supervises a container.
    SIGTERM is a warm shutdown (running jobs finish); SIGQUIT is cold.
    """
    register(agent.app, agent)
    add_steps(agent.app)
    log.info("agent %s: capacity %s, queues %s", agent.name, agent.config.capacity.describe(),
             ",".join(agent.config.queues))
    worker_shutting_down.connect(lambda **_: agent.placement.stop(), weak=False)
    # Raised outside the body: Celery could not store the outcome (or the retry). The
    # thread pool then often drops the request without acknowledging it at all.
    task_internal_error.connect(lambda task_id=None, request=None, **_: agent.outcome_not_stored(
        task_id, delivery_tag(request)), weak=False)
    worker = agent.app.Worker(
        hostname=node_name(agent.name),
        pool="threads",
        # A thread per held job: up to --max-jobs admitted or waiting, as many pulling.
        concurrency=2 * agent.config.max_jobs,
        queues=list(agent.config.queues),
        loglevel=loglevel,
        send_events=True,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
        consumer_cls="executor.intake:IntakeConsumer",
        **{AGENT_OPTION: agent},
    )
    try:
        worker.start()
    finally:
        agent.stop()
    return worker.exitcode or 0
