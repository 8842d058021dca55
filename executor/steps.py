"""The agent's periodic work as Celery bootsteps, each handed the agent it serves.

The worker is started with ``app.Worker(..., jobyard_agent=agent)`` (see
:func:`executor.worker.run_worker`); Celery hands that keyword to every worker and
consumer step, so no step looks its agent up. A worker started without an agent
includes none of them.

* :class:`Heartbeat` publishes the agent's state, then renews the leases of held
  messages and follows the drain mark (:class:`executor.heartbeat.LeaseRenewal`).
* :class:`Reaper` removes containers an earlier run left, then pings a lost engine
  and sweeps containers no held job owns (:class:`executor.heartbeat.Housekeeping`).
* :class:`Gate` hands the consumer's QoS to the agent's intake gate.
"""

from __future__ import annotations

from celery import Celery, bootsteps

from .heartbeat import Housekeeping, LeaseRenewal

#: The ``app.Worker`` keyword that carries the agent to the steps and the consumer.
AGENT_OPTION = "jobyard_agent"


class AgentStep(bootsteps.StartStopStep):
    """A bootstep handed the worker's agent; included only when there is one."""

    def __init__(self, parent, jobyard_agent=None, **kwargs):
        self.agent = jobyard_agent
        super().__init__(parent, **kwargs)

    def include_if(self, parent):
        return self.agent is not None


class AgentLoopStep(AgentStep):
    """A worker step running one of the agent's loops: started first and stopped last.

    Celery orders steps only by ``requires``; nothing can require to come before
    the pool. A loop must start before it and stop after it, so a warm shutdown
    keeps renewing the leases of the jobs the pool lets finish.
    """

    def include(self, parent):
        included = super().include(parent)
        if included:
            parent.steps.remove(self)
            parent.steps.insert(0, self)
        return included


class Heartbeat(AgentLoopStep):
    """Publish the agent's state, then renew leases and follow the drain mark (Redis only)."""

    def create(self, worker):
        return LeaseRenewal(self.agent, self.agent.beat_seconds)

    def start(self, worker):
        self.agent.publish()
        self.obj.start()


class Reaper(AgentLoopStep):
    """Remove an earlier run's containers, then check the engine and sweep orphans."""

    def create(self, worker):
        return Housekeeping(self.agent, self.agent.beat_seconds)

    def start(self, worker):
        self.agent.reap()
        self.obj.start()


class Gate(AgentStep):
    """Consumer step that hands the consumer's QoS and event loop to the agent's gate."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer):
        self.agent.gate.attach(consumer.qos, getattr(consumer.controller, "hub", None))


def add_steps(app: Celery) -> None:
    """Add the agent's steps to ``app``'s worker and consumer blueprints."""
    app.steps["worker"].update({Reaper, Heartbeat})
    app.steps["consumer"].add(Gate)
